"""Checks of structures and labels, shared by every reader."""

from __future__ import annotations

import numpy as np

from nnp.errors import NNPError


def closest_pair(positions: np.ndarray) -> tuple[float, int, int]:
    """Smallest interatomic distance of (n, 3) or a stack (c, n, 3) (non-periodic).

    Returns (distance Å, i, j); for a stack, the minimum over conformations.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    n = pos.shape[1]
    if n < 2:
        return float("inf"), 0, 0
    best = (float("inf"), 0, 0)
    for start in range(0, pos.shape[0], 256):  # bounded memory for big groups
        chunk = pos[start : start + 256]
        d = np.linalg.norm(chunk[:, :, None, :] - chunk[:, None, :, :], axis=-1)
        d[:, np.arange(n), np.arange(n)] = np.inf
        k = int(np.argmin(d))
        c, i, j = np.unravel_index(k, d.shape)
        if d[c, i, j] < best[0]:
            best = (float(d[c, i, j]), int(i), int(j))
    return best


def check_min_distance(positions: np.ndarray, min_distance: float, where: str) -> None:
    """Raise NNPError naming ``where`` if two atoms are closer than ``min_distance`` Å."""
    if min_distance <= 0:
        return
    d, i, j = closest_pair(positions)
    if d < min_distance:
        raise NNPError(f"{where}: atoms {i} and {j} are {d:.3f} Å apart (< {min_distance} Å): overlapping atoms")


def check_finite(values: np.ndarray, where: str, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise NNPError(f"{where}: {what} contains NaN or infinite values")

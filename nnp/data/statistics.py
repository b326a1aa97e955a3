"""Statistics the model needs, computed once on the training split.

Atom reference (self) energies are fitted by least squares, E_m ~ sum_s
c_ms e_s, accumulated as normal equations in chunks (bounded memory); the
network then learns the remainder, scaled by its per-atom RMS.
"""

from __future__ import annotations

import numpy as np

from nnp.data.datasets import AtomsDataset


def fit_atomref(
    dataset: AtomsDataset, indices: np.ndarray, species: list[int], chunk: int = 65536
) -> tuple[np.ndarray, float]:
    """Reference energy per species (S,) eV and the per-atom RMS of the residual (eV).

    Species absent from the training split get 0 and a small ridge keeps the
    system solvable.
    """
    energies = dataset.energies()
    s = len(species)
    ata = np.zeros((s, s))
    atb = np.zeros(s)
    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        a = dataset.composition_matrix(idx, species)
        e = energies[idx]
        ata += a.T @ a
        atb += a.T @ e
    ridge = 1e-8 * max(1.0, float(np.trace(ata)) / max(s, 1))
    atomref = np.linalg.solve(ata + ridge * np.eye(s), atb)
    sq, n = 0.0, 0
    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        a = dataset.composition_matrix(idx, species)
        resid = (energies[idx] - a @ atomref) / np.maximum(a.sum(1), 1)
        sq += float((resid**2).sum())
        n += len(idx)
    rms = float(np.sqrt(sq / max(n, 1)))
    return atomref, rms

"""Train/validation/test splits: random or grouped, saved and reusable.

A grouped split keeps every structure of a group (a molecule's SMILES, or a
formula) in one part, so no molecule is in both training and test.

Sizes (``data.split``) count structures, as fractions (floats <= 1) or counts
(integers); ``train`` null or 0 (or fractions summing to 1) takes the rest.
A grouped split fills validation, then test, then train with whole groups in
a seeded random order, so each part holds about the asked number of
structures (within one group's size).

Splits are written as ``split.npz`` (arrays ``train``, ``val``, ``test`` of
dataset indices, the dataset size and a fingerprint of the dataset's labels)
and read back with ``data.split_file``. Memory: a few bytes per structure
(group codes are integers; see :meth:`AtomsDataset.groups`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import NNPError

PARTS = ("train", "val", "test")


def _size(name: str, value: Any, n: int) -> int | None:
    """One part's size in structures; None for 'the rest'."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NNPError(f"data.split.{name}={value!r}: give a fraction (0.1) or a count (1000)")
    if value < 0:
        raise NNPError(f"data.split.{name}={value}: sizes cannot be negative")
    if isinstance(value, (float, np.floating)) and value <= 1.0:
        return int(round(float(value) * n))
    if float(value) != int(value):
        raise NNPError(f"data.split.{name}={value}: a count must be a whole number (or a fraction <= 1)")
    return int(value)


def split_sizes(n: int, spec: Mapping[str, Any]) -> dict[str, int]:
    """Sizes of each part in structures: fractions (floats <= 1) or counts; the rest goes to train."""
    unknown = set(spec) - set(PARTS) - {"by", "seed"}
    if unknown:
        raise NNPError(f"data.split: unknown key(s) {sorted(unknown)}; use train, val, test, by, seed")
    raw = {p: spec.get(p) for p in PARTS}
    fractions = [float(v) for v in raw.values() if isinstance(v, (float, np.floating)) and v <= 1.0]
    if len(fractions) == 3 and sum(fractions) > 1.0 + 1e-9:
        raise NNPError(f"data.split fractions sum to {sum(fractions):.3f} > 1")
    sizes = {p: _size(p, raw[p], n) for p in PARTS}
    val, test = sizes["val"] or 0, sizes["test"] or 0
    train = sizes["train"]
    if train is None or train == 0 or (len(fractions) == 3 and abs(sum(fractions) - 1.0) < 1e-9):
        train = n - val - test
    if train < 0 or train + val + test > n:
        raise NNPError(f"data.split asks for {train + val + test} structures (train {train}, val {val}, test {test}); the dataset has {n}")
    return {"train": train, "val": val, "test": test}


def make_split(
    n: int, spec: Mapping[str, Any], groups: np.ndarray | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Sorted int64 indices of each part.

    ``groups`` (n,) labels (integer codes, as :meth:`AtomsDataset.groups`
    returns, or strings): every group goes whole into one part. The same
    ``seed`` and labels give the same split.
    """
    sizes = split_sizes(n, spec)
    rng = np.random.default_rng(seed)
    targets = np.cumsum([sizes["val"], sizes["test"], sizes["train"]])
    if groups is None:
        perm = rng.permutation(n)
        part = np.full(n, -1, dtype=np.int8)
        part[perm[: targets[0]]] = 1
        part[perm[targets[0] : targets[1]]] = 2
        part[perm[targets[1] : targets[2]]] = 0
    else:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != n:
            raise NNPError(f"data.split: {len(groups)} group labels for {n} structures")
        if groups.dtype.kind not in "iu":
            groups = np.asarray(groups, dtype=str)
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        perm = rng.permutation(len(counts))
        start = np.cumsum(counts[perm]) - counts[perm]  # first structure of each group, in shuffled order
        # a group goes to the part whose [begin, end) range holds the group's start
        part_sorted = np.searchsorted(targets, start, side="right").astype(np.int8)  # 0 val, 1 test, 2 train, 3 unused
        code = np.array([1, 2, 0, -1], dtype=np.int8)[part_sorted]
        group_part = np.empty(len(counts), dtype=np.int8)
        group_part[perm] = code
        part = group_part[inverse]
    out = {p: np.flatnonzero(part == k).astype(np.int64) for k, p in enumerate(PARTS)}
    if len(out["train"]) == 0:
        raise NNPError(f"data.split leaves the training set empty ({n} structures)")
    return out


def check_disjoint(split: Mapping[str, np.ndarray], n_total: int, where: str = "split") -> None:
    """Raise NNPError unless the parts are disjoint indices in [0, n_total)."""
    seen = np.zeros(n_total, dtype=bool)
    for p in PARTS:
        idx = np.asarray(split[p])
        if len(idx) and (idx.min() < 0 or idx.max() >= n_total):
            raise NNPError(f"{where}: '{p}' has indices outside 0..{n_total - 1}")
        if seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise NNPError(f"{where}: '{p}' overlaps another part or repeats indices")
        seen[idx] = True


def fingerprint(groups: np.ndarray, energies: np.ndarray | None = None) -> str:
    """Short hash of a dataset's group codes (and energies) to recognise it when a split is reused."""
    h = hashlib.sha1(np.ascontiguousarray(np.asarray(groups, dtype=np.int64)).tobytes())
    if energies is not None:
        h.update(np.ascontiguousarray(np.round(np.asarray(energies, dtype=np.float64), 6)).tobytes())
    return h.hexdigest()[:16]


def save_split(
    path: str | Path,
    split: Mapping[str, np.ndarray],
    n_total: int,
    meta: Mapping[str, Any],
    fingerprint: str | None = None,
) -> None:
    from nnp.outputs import atomic_path

    check_disjoint(split, n_total, str(path))
    # atomically: a killed run never leaves a half-written split that a resume would trust
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            n_total=np.int64(n_total),
            meta=np.array(repr(dict(meta))),
            fingerprint=np.array(fingerprint or ""),
            **{p: np.asarray(split[p], dtype=np.int64) for p in PARTS},
        )


def load_split(path: str | Path, n_total: int, fingerprint: str | None = None) -> dict[str, np.ndarray]:
    """Read a split saved by :func:`save_split`; checks it was made for this dataset."""
    path = Path(path)
    if not path.is_file():
        raise NNPError(f"{path}: split file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            split = {p: f[p].astype(np.int64) for p in PARTS}
            saved_n = int(f["n_total"])
            saved_fp = str(f["fingerprint"]) if "fingerprint" in f.files else ""
    except (KeyError, ValueError, OSError) as err:
        raise NNPError(f"{path}: not a split file ({err})") from None
    if saved_n != n_total:
        raise NNPError(f"{path}: split was made for {saved_n} structures, the dataset has {n_total}")
    if fingerprint and saved_fp and fingerprint != saved_fp:
        raise NNPError(f"{path}: split was made for a different dataset of the same size (fingerprint {saved_fp} != {fingerprint})")
    check_disjoint(split, n_total, str(path))
    return split

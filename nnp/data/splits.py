"""Train/validation/test splits: random or grouped, saved and reusable.

A grouped split keeps every structure of a group (a molecule's SMILES, or a
formula) in one part, so no molecule is in both training and test.
Splits are written as ``split.npz`` (arrays ``train``, ``val``, ``test`` of
dataset indices, plus the dataset size) and read back with ``data.split_file``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import NNPError

PARTS = ("train", "val", "test")


def _sizes(n: int, spec: Mapping[str, Any]) -> dict[str, int]:
    """Fractions (sum <= 1) or counts -> counts; the remainder goes to train."""
    vals = {p: float(spec.get(p, 0) or 0) for p in PARTS}
    if any(v < 0 for v in vals.values()):
        raise NNPError(f"data.split: negative size in {vals}")
    if all(v <= 1.0 for v in vals.values()):
        if sum(vals.values()) > 1.0 + 1e-9:
            raise NNPError(f"data.split fractions sum to {sum(vals.values()):.3f} > 1")
        val = int(round(vals["val"] * n))
        test = int(round(vals["test"] * n))
        train = n - val - test if vals["train"] == 0 or abs(sum(vals.values()) - 1) < 1e-9 else int(round(vals["train"] * n))
    else:
        train, val, test = (int(vals[p]) for p in PARTS)
        if train + val + test > n:
            raise NNPError(f"data.split asks for {train + val + test} items, dataset has {n}")
    return {"train": train, "val": val, "test": test}


def make_split(
    n: int, spec: Mapping[str, Any], groups: np.ndarray | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Indices of each part. With ``groups`` (n,), sizes count groups, not items."""
    rng = np.random.default_rng(seed)
    if groups is None:
        sizes = _sizes(n, spec)
        perm = rng.permutation(n)
        a, b = sizes["train"], sizes["train"] + sizes["val"]
        out = {"train": perm[:a], "val": perm[a:b], "test": perm[b : b + sizes["test"]]}
    else:
        uniq, inverse = np.unique(groups.astype(str), return_inverse=True)
        sizes = _sizes(len(uniq), spec)
        perm = rng.permutation(len(uniq))
        a, b = sizes["train"], sizes["train"] + sizes["val"]
        part_of_group = np.full(len(uniq), -1)
        part_of_group[perm[:a]] = 0
        part_of_group[perm[a:b]] = 1
        part_of_group[perm[b : b + sizes["test"]]] = 2
        part = part_of_group[inverse]
        out = {p: np.flatnonzero(part == k) for k, p in enumerate(PARTS)}
    if len(out["train"]) == 0:
        raise NNPError(f"data.split leaves the training set empty ({n} structures)")
    return {p: np.sort(v).astype(np.int64) for p, v in out.items()}


def save_split(path: str | Path, split: Mapping[str, np.ndarray], n_total: int, meta: Mapping[str, Any]) -> None:
    np.savez(path, n_total=np.int64(n_total), meta=np.array(repr(dict(meta))), **{p: split[p] for p in PARTS})


def load_split(path: str | Path, n_total: int) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise NNPError(f"{path}: split file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            split = {p: f[p].astype(np.int64) for p in PARTS}
            saved_n = int(f["n_total"])
    except (KeyError, ValueError, OSError) as err:
        raise NNPError(f"{path}: not a split file ({err})") from None
    if saved_n != n_total:
        raise NNPError(f"{path}: split was made for {saved_n} structures, the dataset has {n_total}")
    return split

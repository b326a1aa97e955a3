"""Concatenate structures into one flat batch (see :mod:`nnp.keys`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nnp import keys

Sample = dict[str, Any]


def collate(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """List of per-structure samples -> batch dict of tensors.

    Each sample holds numpy arrays: ``Z`` (n,), ``R`` (n, 3) Å, ``cell``
    (3, 3) Å, ``pbc`` (3,), ``id`` (int) and optionally ``energy`` (eV) and
    ``forces`` (n, 3) eV/Å. Positions, energies and forces are float64 here;
    the training module casts them to the model's dtype.
    """
    n_atoms = np.array([len(s[keys.Z]) for s in samples], dtype=np.int64)
    batch: dict[str, torch.Tensor] = {
        keys.Z: torch.from_numpy(np.concatenate([s[keys.Z] for s in samples]).astype(np.int64)),
        keys.R: torch.from_numpy(np.concatenate([s[keys.R] for s in samples]).astype(np.float64)),
        keys.N_ATOMS: torch.from_numpy(n_atoms),
        keys.IDX_M: torch.repeat_interleave(torch.arange(len(samples)), torch.from_numpy(n_atoms)),
        keys.CELL: torch.from_numpy(np.stack([s[keys.CELL] for s in samples]).astype(np.float64)),
        keys.PBC: torch.from_numpy(np.stack([s[keys.PBC] for s in samples]).astype(bool)),
        keys.STRUCTURE_ID: torch.tensor([int(s[keys.STRUCTURE_ID]) for s in samples], dtype=torch.long),
    }
    if all(keys.ENERGY in s for s in samples):
        batch[keys.ENERGY] = torch.tensor([float(s[keys.ENERGY]) for s in samples], dtype=torch.float64)
    if all(keys.FORCES in s for s in samples):
        batch[keys.FORCES] = torch.from_numpy(
            np.concatenate([s[keys.FORCES] for s in samples]).astype(np.float64)
        )
    if any(keys.STRESS in s for s in samples):
        # (M, 3, 3) eV/Å^3; NaN for structures without a stress label (the loss leaves them out)
        nan = np.full((3, 3), np.nan)
        batch[keys.STRESS] = torch.from_numpy(np.stack([np.asarray(s.get(keys.STRESS, nan), dtype=np.float64) for s in samples]))
    return batch


def atoms_to_sample(atoms, index: int = 0) -> Sample:
    """An ``ase.Atoms`` (no labels) -> sample for :func:`collate`."""
    return {
        keys.Z: atoms.numbers.astype(np.int64),
        keys.R: atoms.positions.astype(np.float64),
        keys.CELL: np.asarray(atoms.cell.array, dtype=np.float64),
        keys.PBC: np.asarray(atoms.pbc, dtype=bool),
        keys.STRUCTURE_ID: index,
    }

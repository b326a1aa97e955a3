"""Concatenate structures into one flat batch (see :mod:`nnp.keys`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nnp import keys
from nnp.data.pair_cache import collate_pairs

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
    if any(keys.TOTAL_CHARGE in s for s in samples):  # total charge (e): missing = neutral
        batch[keys.TOTAL_CHARGE] = torch.tensor([float(s.get(keys.TOTAL_CHARGE, 0.0)) for s in samples], dtype=torch.float64)
    if all(keys.DIPOLE in s for s in samples):  # dipole labels (e Å)
        batch[keys.DIPOLE] = torch.from_numpy(np.stack([s[keys.DIPOLE] for s in samples]).astype(np.float64))
    if any(keys.STRESS in s for s in samples):
        # (M, 3, 3) eV/Å^3; NaN for structures without a stress label (the loss leaves them out)
        nan = np.full((3, 3), np.nan)
        batch[keys.STRESS] = torch.from_numpy(np.stack([np.asarray(s.get(keys.STRESS, nan), dtype=np.float64) for s in samples]))
    # neighbor pairs cached with the data (nnp.data.pair_cache): the potential uses them instead of searching
    batch.update(collate_pairs(samples, n_atoms))
    return batch


def atoms_to_sample(atoms, index: int = 0) -> Sample:
    """An ``ase.Atoms`` (no labels) -> sample for :func:`collate`; with the total charge
    ``atoms.info['charge']`` (ASE's convention, e) when it has one."""
    sample = {
        keys.Z: atoms.numbers.astype(np.int64),
        keys.R: atoms.positions.astype(np.float64),
        keys.CELL: np.asarray(atoms.cell.array, dtype=np.float64),
        keys.PBC: np.asarray(atoms.pbc, dtype=bool),
        keys.STRUCTURE_ID: index,
    }
    if "charge" in atoms.info:
        sample[keys.TOTAL_CHARGE] = total_charge(atoms.info["charge"], f"structure {index}: atoms.info['charge']")
    return sample


def total_charge(value, where: str) -> float:
    """A structure's total charge (e) as a float; NNPError naming ``where`` unless it is a whole number."""
    from nnp.errors import NNPError

    try:
        q = float(value)
    except (TypeError, ValueError):
        raise NNPError(f"{where} = {value!r}: the total charge must be a whole number of e") from None
    if not np.isfinite(q) or abs(q - round(q)) > 1e-6:
        raise NNPError(f"{where} = {q:g}: the total charge must be a whole number of e")
    return float(round(q))

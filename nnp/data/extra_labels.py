"""Per-structure labels beyond energy and forces, read once: total charge (e) and dipole (e Å).

``data.charge_key`` / ``data.dipole_key`` name them; the coulomb term
(:mod:`nnp.terms.coulomb`) reads the total charge, ``loss.dipole_weight`` the
dipole. Readers that keep structures in memory (ASE files) store them in
their samples; HDF5 files are read here, one column per key, and added to the
samples of the wrapped dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnp import keys
from nnp.data.collate import total_charge
from nnp.data.datasets import AtomsDataset
from nnp.errors import NNPError


class ExtraLabels(AtomsDataset):
    """A dataset with per-structure ``keys.TOTAL_CHARGE`` (n,) and/or ``keys.DIPOLE`` (n, 3) added to its samples."""

    def __init__(self, base: AtomsDataset, charges: np.ndarray | None, dipoles: np.ndarray | None):
        self.base = base
        self.charges = charges
        self.dipoles = dipoles

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("base", "charges", "dipoles"):
            raise AttributeError(name)
        return getattr(self.base, name)  # the base dataset's whole API (energies, groups, ...)

    def __len__(self) -> int:
        return len(self.base)

    def _add(self, sample: dict, index: int) -> dict:
        if self.charges is not None:
            sample[keys.TOTAL_CHARGE] = float(self.charges[index])
        if self.dipoles is not None:
            sample[keys.DIPOLE] = self.dipoles[index]
        return sample

    def __getitem__(self, index: int) -> dict:
        index = int(index) % len(self)
        return self._add(self.base[index], index)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        many = getattr(self.base, "__getitems__", None)
        samples = many(indices) if many is not None else [self.base[int(i)] for i in indices]
        return [self._add(s, int(i) % len(self)) for s, i in zip(samples, indices)]


def with_extra_labels(ds, charge_key: str | None, dipole_key: str | None) -> ExtraLabels:
    """``ds`` (with a ``column(key)`` method) plus its total charges and dipoles; NNPError for a
    non-integer charge or a dipole that is not 3 numbers per structure."""
    charges = dipoles = None
    if charge_key:
        charges = ds.column(charge_key).reshape(len(ds), -1)
        if charges.shape[1] != 1:
            raise NNPError(f"{ds.path}: '{charge_key}' (data.charge_key) holds {charges.shape[1]} numbers per structure, expected 1")
        charges = charges[:, 0]
        bad = np.flatnonzero(~np.isfinite(charges) | (np.abs(charges - np.round(charges)) > 1e-6))
        if len(bad):
            total_charge(charges[bad[0]], f"{ds.path}: structure {int(bad[0])}: total charge '{charge_key}'")
    if dipole_key:
        dipoles = ds.column(dipole_key).reshape(len(ds), -1)
        if dipoles.shape[1] != 3:
            raise NNPError(f"{ds.path}: '{dipole_key}' (data.dipole_key) holds {dipoles.shape[1]} numbers per structure, expected 3 (e Å)")
    return ExtraLabels(ds, charges, dipoles)

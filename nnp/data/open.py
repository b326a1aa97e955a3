"""Opening a dataset from its data config: the one place a ``format`` becomes a reader.

Kept apart from :mod:`nnp.data.datasets` (the interface every reader implements)
so that imports run one way: readers import the interface, this module imports
the readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nnp.data.ase_files import AseDataset
from nnp.data.datasets import AtomsDataset
from nnp.data.hdf5 import HDF5Dataset
from nnp.errors import NNPError
from nnp.units import energy_factor, length_factor


def open_dataset(cfg: Mapping[str, Any]) -> AtomsDataset:
    """Open the dataset a data config describes (``format``: hdf5 or ase)."""
    fmt = cfg.get("format")
    path = cfg.get("path")
    if path in (None, "", "???"):
        raise NNPError("data.path is not set: give the data file, e.g. data.path=my_data.h5")
    units = cfg.get("units") or {}
    # None: the file's own declaration (HDF5 attributes written by `nnp data prepare`), else eV / Å
    e_fac = energy_factor(units["energy"]) if units.get("energy") else None
    l_fac = length_factor(units["length"]) if units.get("length") else None
    common = dict(
        path=str(path),
        skip_nan=bool(cfg.get("skip_nan", True)),
        min_distance=float(cfg.get("min_distance", 0.5)),
    )
    if fmt == "hdf5":
        ds: AtomsDataset = HDF5Dataset(
            energy_key=cfg.get("energy_key", "wb97x_dz.energy"),
            forces_key=cfg.get("forces_key", "wb97x_dz.forces"),
            group_key=cfg.get("group_key", "smiles"),
            energy_factor=e_fac,
            length_factor=l_fac,
            **common,
        )
    elif fmt == "ase":
        ds = AseDataset(
            energy_key=cfg.get("energy_key", "energy"),
            forces_key=cfg.get("forces_key", "forces"),
            group_key=cfg.get("group_key", None),
            stress_key=cfg.get("stress_key", "stress"),
            energy_factor=1.0 if e_fac is None else e_fac,
            length_factor=1.0 if l_fac is None else l_fac,
            charge_key=cfg.get("charge_key") or None,
            dipole_key=cfg.get("dipole_key") or None,
            **common,
        )
    else:
        raise NNPError(f"unknown data.format {fmt!r}; choose 'hdf5' (ANI-1x layout) or 'ase' (any ASE-readable file)")
    if len(ds) == 0:
        raise NNPError(f"{path}: dataset is empty (no usable structures; {ds.n_skipped} skipped)")
    if fmt == "hdf5" and (cfg.get("charge_key") or cfg.get("dipole_key")):
        from nnp.data.extra_labels import with_extra_labels

        ds = with_extra_labels(ds, cfg.get("charge_key") or None, cfg.get("dipole_key") or None)
    return ds

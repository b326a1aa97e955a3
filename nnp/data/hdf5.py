"""Reader for the ANI-1x release HDF5 layout.

One group per formula, each holding ``atomic_numbers`` (n_atoms,),
``coordinates`` (n_conf, n_atoms, 3), ``<method>.energy`` (n_conf,) and
``<method>.forces`` (n_conf, n_atoms, 3); optionally ``smiles`` (n_conf,).
Groups may be nested (the ANI-1x file is flat; some releases nest by size).

The index is (group, row) pairs; conformations are read on demand, and the
file handle is opened lazily in each process, so DataLoader workers are safe.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from nnp import keys
from nnp.data.checks import check_min_distance
from nnp.data.datasets import AtomsDataset
from nnp.errors import NNPError

_COORD_KEYS = ("coordinates", "positions")
_NUMBER_KEYS = ("atomic_numbers", "species")


def _first_key(group: h5py.Group, names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in group:
            return name
    return None


class HDF5Dataset(AtomsDataset):
    def __init__(
        self,
        path: str,
        energy_key: str = "wb97x_dz.energy",
        forces_key: str | None = "wb97x_dz.forces",
        group_key: str | None = "smiles",
        energy_factor: float = 1.0,
        length_factor: float = 1.0,
        skip_nan: bool = True,
        min_distance: float = 0.5,
    ):
        self.path = str(path)
        self.energy_key = energy_key
        self.forces_key = forces_key or None
        self.group_key = group_key
        self.energy_factor = float(energy_factor)
        self.length_factor = float(length_factor)
        self._file: h5py.File | None = None
        self._pid = -1
        if not os.path.isfile(self.path):
            raise NNPError(f"{self.path}: file not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise NNPError(f"{self.path}: not a readable HDF5 file ({err})") from None
        with f:
            self._scan(f, skip_nan, min_distance)

    # ---------------------------------------------------------------- index
    def _scan(self, f: h5py.File, skip_nan: bool, min_distance: float) -> None:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Group) and _first_key(obj, _COORD_KEYS) else None)
        if not names:
            raise NNPError(f"{self.path}: no group holds 'coordinates' (is this the ANI-1x layout?)")
        self.group_names: list[str] = []
        self._group_numbers: list[np.ndarray] = []
        self._group_coord_key: list[str] = []
        group_ids, rows, energies, labels = [], [], [], []
        self.n_skipped = 0
        has_forces = self.forces_key is not None
        for name in sorted(names):
            g = f[name]
            where = f"{self.path}:/{name}"
            zkey = _first_key(g, _NUMBER_KEYS)
            if zkey is None:
                raise NNPError(f"{where}: missing 'atomic_numbers'")
            if self.energy_key not in g:
                raise NNPError(f"{where}: missing energy key '{self.energy_key}' (set data.energy_key)")
            ckey = _first_key(g, _COORD_KEYS)
            numbers = np.asarray(g[zkey][()], dtype=np.int64).reshape(-1)
            coords = g[ckey]
            if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
                raise NNPError(f"{where}: '{ckey}' has shape {coords.shape}, expected (n_conf, {len(numbers)}, 3)")
            energy = np.asarray(g[self.energy_key][()], dtype=np.float64).reshape(-1)
            if energy.shape[0] != coords.shape[0]:
                raise NNPError(f"{where}: '{self.energy_key}' has {energy.shape[0]} rows, coordinates {coords.shape[0]}")
            ok = np.isfinite(energy)
            if has_forces:
                if self.forces_key not in g:
                    raise NNPError(f"{where}: missing forces key '{self.forces_key}' (set data.forces_key, or data.forces_key=null for energy-only)")
                forces = g[self.forces_key]
                if forces.shape != coords.shape:
                    raise NNPError(f"{where}: '{self.forces_key}' has shape {forces.shape}, coordinates {coords.shape}")
                for start in range(0, forces.shape[0], 4096):
                    chunk = np.asarray(forces[start : start + 4096])
                    ok[start : start + len(chunk)] &= np.isfinite(chunk).all(axis=(1, 2))
            if not ok.all():
                if not skip_nan:
                    row = int(np.flatnonzero(~ok)[0])
                    raise NNPError(f"{where}: row {row} has NaN or infinite labels (set data.skip_nan=true to skip such rows)")
                self.n_skipped += int((~ok).sum())
            xyz = np.asarray(coords[()], dtype=np.float64)
            if not np.isfinite(xyz).all():
                row = int(np.flatnonzero(~np.isfinite(xyz).all(axis=(1, 2)))[0])
                raise NNPError(f"{where}: row {row} has NaN or infinite coordinates")
            check_min_distance(xyz * self.length_factor, min_distance, where)
            gid = len(self.group_names)
            self.group_names.append(name)
            self._group_numbers.append(numbers)
            self._group_coord_key.append(ckey)
            keep = np.flatnonzero(ok)
            group_ids.append(np.full(len(keep), gid, dtype=np.int32))
            rows.append(keep.astype(np.int32))
            energies.append(energy[keep] * self.energy_factor)
            if self.group_key and self.group_key in g:
                lab = np.asarray(g[self.group_key][()]).reshape(-1)
                labels.append(np.array([v.decode() if isinstance(v, bytes) else str(v) for v in lab[keep]], dtype=object))
            else:
                labels.append(np.full(len(keep), name, dtype=object))
        self._gid = np.concatenate(group_ids)
        self._row = np.concatenate(rows)
        self._energies = np.concatenate(energies)
        self._labels = np.concatenate(labels)
        self.has_forces = has_forces
        self.has_energy = True

    # ---------------------------------------------------------- dataset API
    def __len__(self) -> int:
        return int(self._gid.shape[0])

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles cannot cross process boundaries
        return state

    def __getitem__(self, index: int) -> dict:
        gid = int(self._gid[index])
        row = int(self._row[index])
        g = self._handle()[self.group_names[gid]]
        numbers = self._group_numbers[gid]
        sample = {
            keys.Z: numbers,
            keys.R: np.asarray(g[self._group_coord_key[gid]][row], dtype=np.float64) * self.length_factor,
            keys.CELL: np.zeros((3, 3)),
            keys.PBC: np.zeros(3, dtype=bool),
            keys.STRUCTURE_ID: int(index),
            keys.ENERGY: float(self._energies[index]),
        }
        if self.has_forces:
            sample[keys.FORCES] = (
                np.asarray(g[self.forces_key][row], dtype=np.float64) * (self.energy_factor / self.length_factor)
            )
        return sample

    def energies(self) -> np.ndarray:
        return self._energies

    def numbers_of(self, index: int) -> np.ndarray:
        return self._group_numbers[int(self._gid[index])]

    def groups(self) -> np.ndarray:
        return self._labels

    def n_atoms(self) -> np.ndarray:
        sizes = np.array([len(z) for z in self._group_numbers], dtype=np.int64)
        return sizes[self._gid]

    def elements(self) -> list[int]:
        return sorted({int(z) for zs in self._group_numbers for z in zs})

    def composition_matrix(self, indices: np.ndarray, species: list[int]) -> np.ndarray:
        """(len(indices), S) element counts, computed per group, not per row."""
        col = {z: k for k, z in enumerate(species)}
        per_group = np.zeros((len(self._group_numbers), len(species)))
        for g, zs in enumerate(self._group_numbers):
            for z in zs:
                if int(z) in col:
                    per_group[g, col[int(z)]] += 1
        return per_group[self._gid[indices]]

"""Reader for any file ASE reads (extxyz, ASE db, ...): users' own data.

Energies and forces are taken as ASE stores them (eV, eV/Å unless
``data.units`` says otherwise); periodic cells are kept. The file is read
once into memory: these files are the size people write by hand or from MD.
"""

from __future__ import annotations

import os

import numpy as np

from nnp import keys
from nnp.data.checks import check_min_distance
from nnp.data.datasets import AtomsDataset, encode_labels
from nnp.errors import NNPError


def read_structures(path: str):
    """All structures of an ASE-readable file, with one clear error if it cannot be read."""
    import ase.io

    if not os.path.isfile(path):
        raise NNPError(f"{path}: file not found")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for malformed files
        raise NNPError(f"{path}: ASE cannot read this file ({type(err).__name__}: {err})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise NNPError(f"{path}: file holds no structures")
    return frames


def _label(atoms, key: str, row_data: dict | None):
    """Look a label up where ASE may have put it: calculator, info, arrays, db data."""
    calc = getattr(atoms, "calc", None)
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    if row_data and key in row_data:
        return row_data[key]
    return None


class AseDataset(AtomsDataset):
    def __init__(
        self,
        path: str,
        energy_key: str = "energy",
        forces_key: str | None = "forces",
        group_key: str | None = None,
        energy_factor: float = 1.0,
        length_factor: float = 1.0,
        skip_nan: bool = True,
        min_distance: float = 0.5,
    ):
        self.path = str(path)
        frames, extra = self._read(self.path)
        self.samples: list[dict] = []
        labels: list[str] = []
        self.n_skipped = 0
        has_forces = forces_key is not None
        for k, atoms in enumerate(frames):
            where = f"{self.path}: structure {k}"
            data = extra[k] if extra else None
            e = _label(atoms, energy_key, data)
            if e is None:
                raise NNPError(f"{where}: no energy under key '{energy_key}' (set data.energy_key)")
            f = _label(atoms, forces_key, data) if has_forces else None
            if has_forces and f is None:
                if k == 0:
                    raise NNPError(f"{where}: no forces under key '{forces_key}' (set data.forces_key, or data.forces_key=null for energy-only data)")
                raise NNPError(f"{where}: no forces under key '{forces_key}'")
            e = float(np.asarray(e).reshape(-1)[0])
            if f is not None:
                f = np.asarray(f, dtype=np.float64)
                if f.shape != (len(atoms), 3):
                    raise NNPError(f"{where}: forces have shape {f.shape}, expected ({len(atoms)}, 3)")
            if not np.isfinite(e) or (f is not None and not np.isfinite(f).all()):
                if not skip_nan:
                    raise NNPError(f"{where}: NaN or infinite labels (set data.skip_nan=true to skip)")
                self.n_skipped += 1
                continue
            pos = atoms.positions * length_factor
            if not np.isfinite(pos).all():
                raise NNPError(f"{where}: NaN or infinite coordinates")
            check_min_distance(pos, min_distance, where)
            sample = {
                keys.Z: atoms.numbers.astype(np.int64),
                keys.R: pos.astype(np.float64),
                keys.CELL: np.asarray(atoms.cell.array, dtype=np.float64) * length_factor,
                keys.PBC: np.asarray(atoms.pbc, dtype=bool),
                keys.ENERGY: e * energy_factor,
            }
            if f is not None:
                sample[keys.FORCES] = f * (energy_factor / length_factor)
            self.samples.append(sample)
            g = _label(atoms, group_key, data) if group_key else None
            labels.append(str(g) if g is not None else atoms.get_chemical_formula())
        self._codes, self._names = encode_labels(labels)
        self._energies = np.array([s[keys.ENERGY] for s in self.samples], dtype=np.float64)
        self.has_forces = has_forces
        self.has_energy = True

    @staticmethod
    def _read(path: str):
        """Frames, plus each row's ``data`` dict for ASE databases (QM9 keeps labels there)."""
        if path.endswith(".db") and os.path.isfile(path):
            import ase.db

            try:
                with ase.db.connect(path) as db:
                    rows = list(db.select())
            except Exception as err:
                raise NNPError(f"{path}: ASE cannot read this database ({type(err).__name__}: {err})") from None
            frames = [r.toatoms() for r in rows]
            extra = [dict(r.data) | dict(r.key_value_pairs) for r in rows]
            if not frames:
                raise NNPError(f"{path}: database holds no structures")
            return frames, extra
        return read_structures(path), None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.samples[index])
        sample[keys.STRUCTURE_ID] = int(index)
        return sample

    def energies(self) -> np.ndarray:
        return self._energies

    def numbers_of(self, index: int) -> np.ndarray:
        return self.samples[index][keys.Z]

    def groups(self) -> np.ndarray:
        return self._codes

    def group_names(self) -> list[str]:
        return self._names

"""Reader for any file ASE reads (extxyz, ASE db, ...): users' own data.

Energies and forces are taken as ASE stores them (eV, eV/Å unless
``data.units`` says otherwise); periodic cells are kept. The file is read
once into memory: these files are the size people write by hand or from MD.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from nnp import keys
from nnp.data.checks import check_atomic_numbers, check_cell, check_min_distance
from nnp.data.datasets import AtomsDataset, encode_labels
from nnp.errors import NNPError


def read_structures(path: str):
    """All structures of an ASE-readable file, with one clear error if it cannot be read or a periodic cell cannot be inverted."""
    import ase.io

    if not os.path.isfile(path):
        raise NNPError(f"{path}: file not found")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for malformed files
        raise NNPError(f"{path}: ASE cannot read this file ({_reason(err)})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise NNPError(f"{path}: file holds no structures")
    if path.lower().endswith((".xyz", ".extxyz")):
        _check_xyz_end(path, len(frames))
    for k, atoms in enumerate(frames):  # every command's input (train, predict, md): the neighbor list inverts the cell
        check_cell(atoms.cell.array, atoms.pbc, f"{path}: structure {k}")
    return frames


def _check_xyz_end(path: str, n_read: int) -> None:
    """NNPError if text follows where ASE stopped: its (ext)xyz reader takes a blank line for the end of the file."""
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError as err:
        raise NNPError(f"{path}: cannot read ({err.strerror})") from None
    k, frames = 0, 0
    while k < len(lines) and frames < n_read:  # walk the frames ASE read: count line, comment, atoms
        try:
            k += int(lines[k].split()[0]) + 2
        except (ValueError, IndexError):
            return  # not the plain layout (ASE read it anyway): nothing to compare
        frames += 1
    rest = next((i for i in range(k, len(lines)) if lines[i].strip()), None)
    if frames == n_read and rest is not None:
        raise NNPError(
            f"{path}: line {rest + 1}: more text after a blank line (ASE stops reading at a blank line: "
            f"{n_read} structure{'s' if n_read != 1 else ''} read); remove the blank line(s) between structures"
        )


def _row_id(path: str, k: int) -> str:
    """' (row id N)' for the k-th row of an ASE database (in the order ASE selects), for messages."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            found = con.execute("SELECT id FROM systems ORDER BY id LIMIT 1 OFFSET ?", (k,)).fetchone()
    except Exception:  # a corrupt file: the message goes without the id
        return ""
    return f" (row id {found[0]})" if found else ""


def _reason(err: BaseException) -> str:
    """An exception as one short line, for messages."""
    text = " ".join(str(err).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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


def extra_labels(sample: dict, atoms, data: dict | None, where: str, charge_key: str | None, dipole_key: str | None) -> None:
    """Add the total charge (e) and dipole (3,) e Å under ``charge_key``/``dipole_key`` to ``sample``."""
    from nnp.data.collate import total_charge

    for key, name in ((charge_key, keys.TOTAL_CHARGE), (dipole_key, keys.DIPOLE)):
        if key is None:
            continue
        value = _label(atoms, key, data)
        if value is None:
            setting = "data.charge_key" if name == keys.TOTAL_CHARGE else "data.dipole_key"
            raise NNPError(f"{where}: no '{key}' ({setting})")
        if name == keys.TOTAL_CHARGE:
            sample[name] = total_charge(value, f"{where}: total charge '{key}'")
        else:
            dipole = _floats(value, where, f"dipole '{key}'").reshape(-1)
            if dipole.shape != (3,):
                raise NNPError(f"{where}: dipole '{key}' has shape {dipole.shape}, expected (3,)")
            sample[name] = dipole


def _number(value, where: str, what: str) -> float:
    """A label that must be one number (an energy), else NNPError naming it."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype.kind == "b"):
        raise NNPError(f"{where}: {what} is not a number (got {_show(value)})")
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise NNPError(f"{where}: {what} is not a number (got {_show(value)})") from None
    if arr.size != 1:
        raise NNPError(f"{where}: {what} has {arr.size} values, expected one number")
    return float(arr[0])


def _floats(value, where: str, what: str) -> np.ndarray:
    """A label that must be an array of numbers (forces), else NNPError naming it."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise NNPError(f"{where}: {what} are not numbers (got {_show(value)})") from None


def _show(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _structure_arrays(atoms, where: str) -> np.ndarray:
    """Atomic numbers (n,) int64 of a structure ASE read, with its arrays checked for consistency."""
    numbers = np.asarray(atoms.numbers)
    if numbers.dtype.kind not in "iu":
        raise NNPError(f"{where}: atomic numbers have dtype {numbers.dtype}, expected integers")
    numbers = numbers.astype(np.int64)
    check_atomic_numbers(numbers, where)
    if np.shape(atoms.positions) != (len(numbers), 3):
        raise NNPError(f"{where}: positions have shape {np.shape(atoms.positions)}, expected ({len(numbers)}, 3)")
    return numbers


def _stress_label(atoms, key: str, row_data: dict | None, where: str) -> np.ndarray | None:
    """A periodic structure's stress label (3, 3) eV/Å^3 (ASE's sign), from Voigt 6 or a full 3x3; None if absent."""
    value = _label(atoms, key, row_data)
    if value is None:
        return None
    arr = _floats(value, where, f"stress '{key}'").reshape(-1)
    if arr.size == 6:
        from ase.stress import voigt_6_to_full_3x3_stress

        return voigt_6_to_full_3x3_stress(arr)
    if arr.size == 9:
        return arr.reshape(3, 3)
    raise NNPError(f"{where}: stress '{key}' has {arr.size} numbers, expected 6 (Voigt) or 9 (3x3)")


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
        charge_key: str | None = None,
        dipole_key: str | None = None,
        stress_key: str | None = "stress",
    ):
        """``charge_key``: each structure's total charge (e); ``dipole_key``: its dipole (3,) e Å."""
        self.path = str(path)
        frames, extra = self._read(self.path)
        self.samples: list[dict] = []
        labels: list[str] = []
        self.n_skipped = 0
        has_forces = forces_key is not None
        for k, atoms in enumerate(frames):
            where = f"{self.path}: structure {k}"
            numbers = _structure_arrays(atoms, where)
            data = extra[k] if extra else None
            e = _label(atoms, energy_key, data)
            if e is None:
                raise NNPError(f"{where}: no energy under key '{energy_key}' (set data.energy_key)")
            f = _label(atoms, forces_key, data) if has_forces else None
            if has_forces and f is None:
                if k == 0:
                    raise NNPError(f"{where}: no forces under key '{forces_key}' (set data.forces_key, or data.forces_key=null for energy-only data)")
                raise NNPError(f"{where}: no forces under key '{forces_key}'")
            e = _number(e, where, f"energy '{energy_key}'")
            if f is not None:
                f = _floats(f, where, f"forces '{forces_key}'")
                if f.shape != (len(atoms), 3):
                    raise NNPError(f"{where}: forces '{forces_key}' have shape {f.shape}, expected ({len(atoms)}, 3)")
            if not np.isfinite(e) or (f is not None and not np.isfinite(f).all()):
                if not skip_nan:
                    raise NNPError(f"{where}: NaN or infinite labels (set data.skip_nan=true to skip)")
                self.n_skipped += 1
                continue
            pos = atoms.positions * length_factor
            if not np.isfinite(pos).all():
                raise NNPError(f"{where}: NaN or infinite coordinates")
            cell = np.asarray(atoms.cell.array, dtype=np.float64) * length_factor
            pbc = np.asarray(atoms.pbc, dtype=bool)
            check_cell(cell, pbc, where)
            check_min_distance(pos, min_distance, where)
            sample = {
                keys.Z: numbers,
                keys.R: pos.astype(np.float64),
                keys.CELL: cell,
                keys.PBC: pbc,
                keys.ENERGY: e * energy_factor,
            }
            if f is not None:
                sample[keys.FORCES] = f * (energy_factor / length_factor)
            extra_labels(sample, atoms, data, where, charge_key, dipole_key)
            stress = _stress_label(atoms, stress_key, data, where) if stress_key and pbc.all() else None
            if stress is not None:
                sample[keys.STRESS] = stress * (energy_factor / length_factor**3)
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
            import sqlite3

            import ase.db

            rows: list = []
            try:
                with ase.db.connect(path) as db:
                    for row in db.select():
                        rows.append(row)
            except Exception as err:
                if rows or not isinstance(err, sqlite3.Error):  # a row's blobs or JSON, decoded in select()
                    raise NNPError(f"{path}: structure {len(rows)}{_row_id(path, len(rows))}: ASE cannot read this row ({_reason(err)})") from None
                raise NNPError(f"{path}: ASE cannot read this database ({_reason(err)})") from None
            frames, extra = [], []
            for k, row in enumerate(rows):
                try:  # rows are decoded lazily: corrupt blobs and JSON fail here
                    frames.append(row.toatoms())
                    extra.append(dict(row.data) | dict(row.key_value_pairs))
                except Exception as err:
                    raise NNPError(f"{path}: structure {k} (row id {row.get('id')}): ASE cannot read this row ({_reason(err)})") from None
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

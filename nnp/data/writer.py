"""Append-only writer for the ANI-1x HDF5 layout (the files :mod:`nnp.data.hdf5` reads).

One group per formula (``C2H6O1``: elements in alphabetical order, every count
written), each holding ``atomic_numbers`` (n_atoms,) uint8, ``coordinates``
(n_conf, n_atoms, 3) Å, ``<energy_key>`` (n_conf,) eV, ``<forces_key>``
(n_conf, n_atoms, 3) eV/Å and ``origin`` (n_conf,) bytes, a free-text note of
where each row came from. The file declares its units (attributes
``energy_unit`` / ``length_unit``), so the reader needs no ``data.units``.

Append-only and atomic: :func:`append_rows` copies the file to a temporary
name beside it, grows the datasets of the touched groups (chunked, resizable)
and writes the new rows after the last one, then renames the copy onto the
file (:func:`nnp.outputs.atomic_path`). Earlier rows are never rewritten; a
kill at any moment leaves the file as it was before the call or as it is after
it, never half-appended. The copy costs one read and write of the file per
call, which is small next to labeling at the sizes active learning reaches
(tens of MB). Each call names its ``batch``; a batch already in the file
(attribute ``batches``) is not appended twice, so a rerun after a kill between
the rename and the caller's own bookkeeping cannot duplicate rows.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnp.errors import NNPError

#: Rows per HDF5 chunk of the resizable datasets.
_CHUNK_ROWS = 64


@dataclass
class Row:
    """One labeled structure: atomic numbers (n,), positions (n, 3) Å, energy eV, forces (n, 3) eV/Å."""

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray | None = None
    origin: str = ""
    extra: dict = field(default_factory=dict)


def formula_key(numbers: Sequence[int]) -> str:
    """The ANI-1x group name of a composition: elements alphabetically, each with its count (``C2H6O1``)."""
    from ase.data import chemical_symbols

    counts = Counter(chemical_symbols[int(z)] for z in numbers)
    return "".join(f"{s}{counts[s]}" for s in sorted(counts))


def _to_group_order(group_numbers: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Permutation ``p`` with ``numbers[p] == group_numbers`` (same composition, other atom order)."""
    p = np.empty(len(numbers), dtype=np.int64)
    p[np.argsort(group_numbers, kind="stable")] = np.argsort(numbers, kind="stable")
    return p


def batches_in(path: str | os.PathLike) -> list[str]:
    """The batch names already appended to ``path`` (empty for a missing file)."""
    import h5py

    if not Path(path).exists():
        return []
    with h5py.File(path, "r") as f:
        return [str(b) for b in _batches(f)]


def _batches(f) -> list[str]:
    raw = f.attrs.get("batches")
    if raw is None:
        return []
    return [b.decode() if isinstance(b, bytes) else str(b) for b in np.atleast_1d(raw)]


def count_rows(path: str | os.PathLike) -> int:
    """Structures in an ANI-1x layout file written here (0 for a missing file)."""
    import h5py

    if not Path(path).exists():
        return 0
    with h5py.File(path, "r") as f:
        return sum(int(f[name]["coordinates"].shape[0]) for name in f.keys())


def append_rows(
    path: str | os.PathLike,
    rows: Sequence[Row],
    batch: str,
    energy_key: str = "energy",
    forces_key: str = "forces",
) -> int:
    """Append ``rows`` to the file at ``path`` (created if missing) as batch ``batch``; returns rows added.

    Returns 0 without touching the file when ``batch`` is already in it.
    """
    import h5py

    from nnp.outputs import atomic_path

    path = Path(path)
    if batch in batches_in(path):
        return 0
    with atomic_path(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if "energy_unit" not in f.attrs:
                f.attrs["energy_unit"] = "eV"
                f.attrs["length_unit"] = "angstrom"
            elif f.attrs["energy_unit"] != "eV" or f.attrs["length_unit"] != "angstrom":
                raise NNPError(f"{path}: file units are {f.attrs['energy_unit']}/{f.attrs['length_unit']}; this writer appends eV/angstrom rows only")
            by_group: dict[str, list[Row]] = {}
            for row in rows:
                by_group.setdefault(formula_key(row.numbers), []).append(row)
            for name, group_rows in sorted(by_group.items()):
                _append_group(f, str(path), name, group_rows, energy_key, forces_key)
            f.attrs["batches"] = np.array([*_batches(f), batch], dtype=h5py.string_dtype())
    return len(rows)


def _append_group(f, path: str, name: str, rows: list[Row], energy_key: str, forces_key: str) -> None:
    import h5py

    first = np.asarray(rows[0].numbers, dtype=np.int64)
    n = len(first)
    if name not in f:
        g = f.create_group(name)
        g.create_dataset("atomic_numbers", data=first.astype(np.uint8))
        chunk = (_CHUNK_ROWS, n, 3)
        g.create_dataset("coordinates", shape=(0, n, 3), maxshape=(None, n, 3), chunks=chunk, dtype=np.float64)
        g.create_dataset(energy_key, shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS,), dtype=np.float64)
        g.create_dataset(forces_key, shape=(0, n, 3), maxshape=(None, n, 3), chunks=chunk, dtype=np.float64)
        g.create_dataset("origin", shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS,), dtype=h5py.string_dtype())
    g = f[name]
    order = np.asarray(g["atomic_numbers"][()], dtype=np.int64)
    for key in ("coordinates", energy_key, forces_key, "origin"):
        if key not in g or g[key].maxshape[0] is not None:
            raise NNPError(f"{path}:/{name}: '{key}' is missing or not resizable; append to files this writer created")
    xyz = np.empty((len(rows), len(order), 3))
    frc = np.full((len(rows), len(order), 3), np.nan)
    energy = np.empty(len(rows))
    for k, row in enumerate(rows):
        p = _to_group_order(order, np.asarray(row.numbers, dtype=np.int64))
        xyz[k] = np.asarray(row.positions, dtype=np.float64)[p]
        if row.forces is not None:
            frc[k] = np.asarray(row.forces, dtype=np.float64)[p]
        energy[k] = float(row.energy)
    start = g["coordinates"].shape[0]
    stop = start + len(rows)
    for key, values in (("coordinates", xyz), (energy_key, energy), (forces_key, frc),
                        ("origin", np.array([r.origin for r in rows], dtype=object))):
        g[key].resize(stop, axis=0)
        g[key][start:stop] = values


__all__ = ["Row", "append_rows", "batches_in", "count_rows", "formula_key"]

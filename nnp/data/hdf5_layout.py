"""The ANI-1x HDF5 layout: finding data groups, describing them, raw reads.

Shared by the dataset reader (:mod:`nnp.data.hdf5`), ``nnp data info`` and
the converters in :mod:`nnp.data.prepare`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from nnp.errors import NNPError

_COORD_KEYS = ("coordinates", "positions")
_NUMBER_KEYS = ("atomic_numbers", "species")
#: Elements read per chunk while scanning (coordinates or forces), ~8 MB in float64.
_CHUNK_ELEMENTS = 1 << 20


def open_h5(path: str) -> h5py.File:
    """Open an HDF5 file read-only with one clear error when it is missing, truncated or not HDF5."""
    if not os.path.isfile(path):
        raise NNPError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        reason = str(err).split("(", 1)[-1].rstrip(")") if "(" in str(err) else str(err)
        raise NNPError(f"{path}: not a readable HDF5 file ({reason}); is it truncated or corrupt?") from None


def _dataset_key(group: h5py.Group, names: Sequence[str]) -> str | None:
    for name in names:
        if name and group.get(name, getclass=True) is h5py.Dataset:
            return name
    return None


def find_data_groups(f: h5py.File, markers: Sequence[str]) -> list[str]:
    """Names of groups that directly hold one of the ``markers`` datasets, sorted ("" is the root)."""
    names: list[str] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and _dataset_key(obj, markers):
            names.append(name)

    if _dataset_key(f, markers):
        names.append("")
    try:
        f.visititems(visit)
    except (OSError, RuntimeError, KeyError) as err:
        raise NNPError(f"{f.filename}: cannot walk the file's groups ({err}); is it truncated or corrupt?") from None
    return sorted(names)


def _to_atomic_numbers(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.dtype.kind in "SUO":  # element symbols (ANI-1 'species')
        from ase.data import atomic_numbers as table

        symbols = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.reshape(-1)]
        try:
            return np.array([table[s.strip()] for s in symbols], dtype=np.int64).reshape(raw.shape)
        except KeyError as err:
            raise NNPError(f"{where}: unknown element symbol {err.args[0]!r} in atomic numbers") from None
    if raw.dtype.kind not in "iu":
        raise NNPError(f"{where}: atomic numbers have dtype {raw.dtype}, expected integers")
    return raw.astype(np.int64)


@dataclass
class GroupLayout:
    """What one data group holds, validated (no coordinates read)."""

    name: str  # path inside the file, "" for the root
    where: str  # "file:/group" for messages
    numbers: np.ndarray  # (n_atoms,) int64
    coord_key: str
    n_conf: int
    energy_key: str | None
    forces_key: str | None
    label_key: str | None

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def row_chunks(self) -> Iterator[tuple[int, int]]:
        """(start, stop) row ranges of about ``_CHUNK_ELEMENTS`` coordinates each."""
        step = max(1, _CHUNK_ELEMENTS // max(1, 3 * self.n_atoms))
        for start in range(0, self.n_conf, step):
            yield start, min(start + step, self.n_conf)


def describe_group(
    f: h5py.File, name: str, energy_key: str | None, forces_key: str | None, label_key: str | None
) -> GroupLayout:
    """Check one group's datasets and shapes; raise NNPError naming file and group."""
    g = f[name] if name else f
    where = f"{f.filename}:/{name}"
    zkey = _dataset_key(g, _NUMBER_KEYS)
    ckey = _dataset_key(g, _COORD_KEYS)
    if ckey is None:
        raise NNPError(f"{where}: group has no 'coordinates' dataset (found: {', '.join(sorted(g.keys()))})")
    if zkey is None:
        raise NNPError(f"{where}: group has no 'atomic_numbers' dataset")
    coords = g[ckey]
    numbers = _to_atomic_numbers(np.asarray(g[zkey][()]), where)
    if numbers.ndim == 2:  # per-conformation species: must not change within a group
        if numbers.shape[0] and not (numbers == numbers[:1]).all():
            row = int(np.flatnonzero((numbers != numbers[:1]).any(axis=1))[0])
            raise NNPError(f"{where} row {row}: atomic numbers differ from row 0 (one group, one atom order)")
        numbers = numbers[0] if numbers.shape[0] else numbers.reshape(-1)
    numbers = numbers.reshape(-1)
    if len(numbers) and (numbers.min() < 1 or numbers.max() > 118):
        bad = int(numbers[(numbers < 1) | (numbers > 118)][0])
        raise NNPError(f"{where}: atomic number {bad} out of range 1..118 (padding atoms are not supported)")
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise NNPError(f"{where}: '{ckey}' has shape {coords.shape}, expected (n_conf, {len(numbers)}, 3) for {len(numbers)} atoms")
    if coords.dtype.kind not in "fiu":
        raise NNPError(f"{where}: '{ckey}' has dtype {coords.dtype}, expected floats")
    n_conf = int(coords.shape[0])
    if energy_key is not None:
        if _dataset_key(g, (energy_key,)) is None:
            raise NNPError(f"{where}: no energy dataset '{energy_key}' (set data.energy_key; found: {', '.join(sorted(g.keys()))})")
        shape = g[energy_key].shape
        if shape not in ((n_conf,), (n_conf, 1)):
            raise NNPError(f"{where}: '{energy_key}' has shape {shape}, expected ({n_conf},) like '{ckey}' {coords.shape}")
    if forces_key is not None:
        if _dataset_key(g, (forces_key,)) is None:
            raise NNPError(f"{where}: no forces dataset '{forces_key}' (set data.forces_key, or data.forces_key=null for energy-only data)")
        shape = g[forces_key].shape
        if shape != coords.shape:
            raise NNPError(f"{where}: '{forces_key}' has shape {shape} but '{ckey}' has {coords.shape}")
    label = _dataset_key(g, (label_key,)) if label_key else None
    if label is not None and g[label].shape[:1] != (n_conf,):
        raise NNPError(f"{where}: '{label}' has shape {g[label].shape}, expected ({n_conf},)")
    return GroupLayout(name, where, numbers, ckey, n_conf, energy_key, forces_key, label)


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw_offset(ds: h5py.Dataset) -> int | None:
    """Byte offset of a contiguous, unfiltered float dataset in its file, else None."""
    try:
        dcpl = ds.id.get_create_plist()
        if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_external_count() > 0:
            return None
        if ds.dtype.kind != "f" or ds.dtype.fields is not None or ds.dtype.subdtype is not None:
            return None
        return ds.id.get_offset()
    except Exception:  # any doubt: use h5py
        return None


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Read ``len(buffer)`` bytes at ``offset`` into ``buffer``; returns the bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    data = os.pread(fd, len(buffer), offset)
    buffer[: len(data)] = data
    return len(data)


def _pread_matches(fd: int, offset: int, reference: np.ndarray) -> bool:
    """Whether the bytes at ``offset`` are ``reference`` (row 0 as h5py read it)."""
    ref = np.ascontiguousarray(reference)
    try:
        buf = os.pread(fd, ref.nbytes, offset)
    except OSError:
        return False
    return len(buf) == ref.nbytes and np.array_equal(np.frombuffer(buf, dtype=ref.dtype).reshape(ref.shape), ref, equal_nan=True)


def _small_attrs(f: h5py.File) -> dict:
    """File attributes that are scalars, strings or short arrays (metadata written by converters)."""
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.ndarray):
            if v.size > 1024:
                continue
            v = [_decode(x) for x in v.tolist()] if v.dtype.kind in "SO" else v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v
    return out


def _unit_factor(attrs: dict, what: str, factor: float | None, path: str) -> float:
    """Conversion factor to eV (energy) or Å (length); checks it against the unit the file declares."""
    from nnp.units import energy_factor, length_factor

    convert = energy_factor if what == "energy" else length_factor
    declared = attrs.get(f"{what}_unit")
    if declared is None:
        return 1.0 if factor is None else float(factor)
    file_factor = convert(str(declared))
    if factor is not None and not np.isclose(float(factor), file_factor, rtol=1e-9):
        raise NNPError(
            f"{path}: the file stores {what} in {declared} (attribute {what}_unit), "
            f"but data.units.{what} says otherwise; set data.units.{what}={declared} or remove it"
        )
    return file_factor

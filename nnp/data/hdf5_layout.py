"""The ANI-1x HDF5 layout: finding data groups, describing them, raw reads.

Shared by the dataset reader (:mod:`nnp.data.hdf5`), ``nnp data info`` and
the converters in :mod:`nnp.data.prepare`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

from nnp.errors import NNPError

_COORD_KEYS = ("coordinates", "positions")
_NUMBER_KEYS = ("atomic_numbers", "species")
#: Elements read per chunk while scanning (coordinates or forces), ~8 MB in float64.
_CHUNK_ELEMENTS = 1 << 20


#: What h5py raises for corrupt files (a damaged heap, B-tree, name or attribute).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def _reason(err: BaseException) -> str:
    """h5py's message, one short line: the part in parentheses (HDF5's own reason) when there is one."""
    text = " ".join(str(err).split())
    if "(" in text and text.endswith(")"):
        text = text.split("(", 1)[1][:-1]
    if isinstance(err, UnicodeError):
        text = f"a name or string is not valid UTF-8: {text}"
    return text[:197] + "..." if len(text) > 200 else text or type(err).__name__


@contextmanager
def reading(where: str, item: str | None = None):
    """Turn h5py's errors inside the block into one NNPError naming ``where`` (file:/group) and the item."""
    try:
        yield
    except H5_ERRORS as err:
        what = f" '{item}'" if item else ""
        raise NNPError(f"{where}: cannot read{what} ({_reason(err)}); is the file truncated or corrupt?") from None


def open_h5(path: str) -> h5py.File:
    """Open an HDF5 file read-only with one clear error when it is missing, truncated or not HDF5."""
    if not os.path.isfile(path):
        raise NNPError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except H5_ERRORS as err:
        raise NNPError(f"{path}: not a readable HDF5 file ({_reason(err)}); is it truncated or corrupt?") from None


def _dataset_key(group: h5py.Group, names: Sequence[str], where: str) -> str | None:
    """The first of ``names`` that is a dataset in ``group`` (``where``: file:/group, for messages)."""
    for name in names:
        if not name:
            continue
        try:
            kind = group.get(name, getclass=True)
        except H5_ERRORS as err:
            raise _broken_link(group, name, where, err) from None
        if kind is h5py.Dataset:
            return name
    return None


def _broken_link(group: h5py.Group, name: str, where: str, err: BaseException) -> NNPError:
    """The error for ``name`` in ``group`` that cannot be opened: a dangling link, or a corrupt file."""
    try:
        link = group.get(name, getlink=True)
    except H5_ERRORS:
        link = None
    if isinstance(link, h5py.SoftLink):
        return NNPError(f"{where}: '{name}' is a soft link to '{_decode(link.path)}', which does not exist")
    if isinstance(link, h5py.ExternalLink):
        return NNPError(f"{where}: '{name}' is an external link to '{_decode(link.filename)}:{_decode(link.path)}', which cannot be opened")
    return NNPError(f"{where}: cannot read '{name}' ({_reason(err)}); is the file truncated or corrupt?")


def _member_names(group: h5py.Group, where: str) -> list[str]:
    """The names in a group, sorted, for messages; subgroups end in '/'."""
    with reading(where, "the group's member names"):
        names = sorted(_decode(k) for k in group.keys())
    out = []
    for name in names:
        try:
            is_group = group.get(name, getclass=True) is h5py.Group
        except H5_ERRORS:
            is_group = False
        out.append(name + "/" if is_group else name)
    return out


def find_data_groups(f: h5py.File, markers: Sequence[str]) -> list[str]:
    """Names of groups that directly hold one of the ``markers`` datasets, sorted ("" is the root)."""
    names: list[str] = []
    last = [""]

    def visit(name, obj) -> None:
        if isinstance(name, bytes):  # h5py passes names that are not UTF-8 undecoded
            if isinstance(obj, h5py.Group) and _dataset_key(obj, markers, f"{f.filename}:/{_decode(name)}"):
                raise NNPError(f"{f.filename}:/{_decode(name)}: the group's name is not valid UTF-8; rename the group")
            return
        last[0] = name
        if isinstance(obj, h5py.Group) and _dataset_key(obj, markers, f"{f.filename}:/{name}"):
            names.append(name)

    if _dataset_key(f, markers, f"{f.filename}:/"):
        names.append("")
    try:
        f.visititems(visit)
    except H5_ERRORS as err:
        after = f" after '/{last[0]}'" if last[0] else ""
        raise NNPError(f"{f.filename}: cannot walk the file's groups{after} ({_reason(err)}); is it truncated or corrupt?") from None
    return sorted(names)


def _to_atomic_numbers(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.dtype.kind in "SUO":  # element symbols (ANI-1 'species')
        from ase.data import atomic_numbers as table

        symbols = [_decode(v) for v in raw.reshape(-1)]
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
    where = f"{f.filename}:/{name}"
    with reading(where):
        g = f[name] if name else f
    zkey = _dataset_key(g, _NUMBER_KEYS, where)
    ckey = _dataset_key(g, _COORD_KEYS, where)
    if ckey is None:
        raise NNPError(f"{where}: group has no 'coordinates' dataset (found: {', '.join(_member_names(g, where))})")
    if zkey is None:
        raise NNPError(f"{where}: group has no 'atomic_numbers' dataset")
    with reading(where, ckey):
        coords = g[ckey]
        coord_shape, coord_dtype = coords.shape, coords.dtype
    with reading(where, zkey):
        raw_numbers = np.asarray(g[zkey][()])
    numbers = _to_atomic_numbers(raw_numbers, where)
    if numbers.ndim == 2:  # per-conformation species: must not change within a group
        if numbers.shape[0] and not (numbers == numbers[:1]).all():
            row = int(np.flatnonzero((numbers != numbers[:1]).any(axis=1))[0])
            raise NNPError(f"{where} row {row}: atomic numbers differ from row 0 (one group, one atom order)")
        numbers = numbers[0] if numbers.shape[0] else numbers.reshape(-1)
    numbers = numbers.reshape(-1)
    if len(numbers) == 0:
        raise NNPError(f"{where}: '{zkey}' is empty: a structure needs at least one atom")
    if numbers.min() < 1 or numbers.max() > 118:
        bad = int(numbers[(numbers < 1) | (numbers > 118)][0])
        raise NNPError(f"{where}: atomic number {bad} out of range 1..118 (padding atoms are not supported)")
    if len(coord_shape) != 3 or coord_shape[1:] != (len(numbers), 3):
        raise NNPError(f"{where}: '{ckey}' has shape {coord_shape}, expected (n_conf, {len(numbers)}, 3) for {len(numbers)} atoms")
    _check_float_dtype(coord_dtype, where, ckey)
    n_conf = int(coord_shape[0])
    if energy_key is not None:
        if _dataset_key(g, (energy_key,), where) is None:
            raise NNPError(f"{where}: no energy dataset '{energy_key}' (set data.energy_key; found: {', '.join(_member_names(g, where))})")
        with reading(where, energy_key):
            shape, dtype = g[energy_key].shape, g[energy_key].dtype
        if shape not in ((n_conf,), (n_conf, 1)):
            raise NNPError(f"{where}: '{energy_key}' has shape {shape}, expected ({n_conf},) like '{ckey}' {coord_shape}")
        _check_float_dtype(dtype, where, energy_key)
    if forces_key is not None:
        if _dataset_key(g, (forces_key,), where) is None:
            raise NNPError(f"{where}: no forces dataset '{forces_key}' (set data.forces_key, or data.forces_key=null for energy-only data)")
        with reading(where, forces_key):
            shape, dtype = g[forces_key].shape, g[forces_key].dtype
        if shape != coord_shape:
            raise NNPError(f"{where}: '{forces_key}' has shape {shape} but '{ckey}' has {coord_shape}")
        _check_float_dtype(dtype, where, forces_key)
    label = _dataset_key(g, (label_key,), where) if label_key else None
    if label is not None:
        with reading(where, label):
            shape, dtype = g[label].shape, g[label].dtype
        if shape[:1] != (n_conf,) or (n_conf and int(np.prod(shape[1:])) == 0):
            raise NNPError(f"{where}: '{label}' has shape {shape}, expected ({n_conf},)")
        if dtype.kind not in "SUOiuf":
            raise NNPError(f"{where}: '{label}' has dtype {dtype}, expected strings (molecule labels) or numbers")
    return GroupLayout(name, where, numbers, ckey, n_conf, energy_key, forces_key, label)


def _check_float_dtype(dtype: np.dtype, where: str, key: str) -> None:
    """Coordinates, energies and forces are real numbers: floats (or integers), nothing else."""
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise NNPError(f"{where}: '{key}' has dtype {dtype}, expected floats")


def _decode(value) -> str:
    """A label as text; bytes that are not UTF-8 keep their escapes (distinct labels stay distinct)."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


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
    with reading(f"{f.filename}:/", "file attributes"):
        items = list(f.attrs.items())
    for k, v in items:
        if isinstance(v, bytes):
            v = _decode(v)
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
    try:
        file_factor = convert(str(declared))
    except NNPError as err:
        raise NNPError(f"{path}: file attribute {what}_unit: {err}") from None
    if factor is not None and not np.isclose(float(factor), file_factor, rtol=1e-9):
        raise NNPError(
            f"{path}: the file stores {what} in {declared} (attribute {what}_unit), "
            f"but data.units.{what} says otherwise; set data.units.{what}={declared} or remove it"
        )
    return file_factor

"""Reader for the ANI-1x release HDF5 layout, at any size.

One group per formula, each holding ``atomic_numbers`` (n_atoms,),
``coordinates`` (n_conf, n_atoms, 3), ``<method>.energy`` (n_conf,) and
``<method>.forces`` (n_conf, n_atoms, 3); optionally a per-conformation label
such as ``smiles`` (n_conf,). Groups may be nested (the ANI-1x file is flat;
some releases nest by size). Files written by ``nnp data prepare`` also carry
file attributes ``energy_unit`` / ``length_unit``, honoured at load time.

Built for ANI-1x (5M conformations, 5.6 GB) in bounded memory:

- Opening scans the file group by group in row chunks (a few MB at a time):
  shapes, NaN/infinite labels, overlapping atoms. What stays in memory is the
  index, 20 bytes per structure: group id and row (int32), energy (float64)
  and an int32 code of the molecule label (the labels themselves are kept
  once each).
- Contiguous datasets (the ANI-1x release, files nnp writes) are read with
  ``os.pread`` at the byte offset HDF5 reports, checked against h5py once per
  group; chunked or compressed datasets go through h5py.
- :meth:`HDF5Dataset.__getitems__` (which ``DataLoader`` calls with a whole
  batch) reads a batch group by group, consecutive rows in one call.
- File handles are opened lazily in each process and dropped on pickling, so
  DataLoader workers are safe.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from nnp import keys
from nnp.data.checks import closest_pair, finite_rows, min_distances
from nnp.data.datasets import AtomsDataset
from nnp.errors import NNPError

_COORD_KEYS = ("coordinates", "positions")
_NUMBER_KEYS = ("atomic_numbers", "species")
#: Elements read per chunk while scanning (coordinates or forces), ~8 MB in float64.
_CHUNK_ELEMENTS = 1 << 20
#: h5py datasets kept open per process for chunked files (each may hold a chunk cache).
_MAX_OPEN_DATASETS = 256
_ZERO_CELL = np.zeros((3, 3))
_ZERO_CELL.flags.writeable = False
_NO_PBC = np.zeros(3, dtype=bool)
_NO_PBC.flags.writeable = False


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


class HDF5Dataset(AtomsDataset):
    """Structures of an ANI-1x-layout file; energies in eV, positions in Å, forces in eV/Å.

    ``energy_factor`` / ``length_factor`` convert the file's units to eV / Å;
    None takes the unit the file declares (attributes ``energy_unit`` /
    ``length_unit``, written by ``nnp data prepare``), or eV / Å.
    """

    def __init__(
        self,
        path: str,
        energy_key: str = "wb97x_dz.energy",
        forces_key: str | None = "wb97x_dz.forces",
        group_key: str | None = "smiles",
        energy_factor: float | None = None,
        length_factor: float | None = None,
        skip_nan: bool = True,
        min_distance: float = 0.5,
    ):
        self.path = str(path)
        self.energy_key = energy_key
        self.forces_key = forces_key or None
        self.group_key = group_key or None
        self._file: h5py.File | None = None
        self._pid = -1
        self._fd = -1
        self._fd_pid = -1
        self._open_datasets: OrderedDict = OrderedDict()
        with open_h5(self.path) as f:
            self.file_attrs = _small_attrs(f)
            self.energy_factor = _unit_factor(self.file_attrs, "energy", energy_factor, self.path)
            self.length_factor = _unit_factor(self.file_attrs, "length", length_factor, self.path)
            self._scan(f, bool(skip_nan), float(min_distance))

    # ---------------------------------------------------------------- index
    def _scan(self, f: h5py.File, skip_nan: bool, min_distance: float) -> None:
        names = find_data_groups(f, (*_COORD_KEYS, *_NUMBER_KEYS, self.energy_key))
        if not names:
            raise NNPError(f"{self.path}: no group holds 'coordinates' (is this the ANI-1x layout?)")
        self.h5_groups: list[str] = []
        self._group_numbers: list[np.ndarray] = []
        self._group_coord_key: list[str] = []
        self._offsets: dict[str, list[int]] = {"coords": [], "forces": []}
        self._dtypes: dict[str, list[str]] = {"coords": [], "forces": []}
        self.skipped = {"energy": 0, "forces": 0, "coordinates": 0}
        self.has_forces = self.forces_key is not None
        self.has_energy = True
        label_ids: dict[str, int] = {}
        layouts = [describe_group(f, name, self.energy_key, self.forces_key, self.group_key) for name in names]
        # the index, filled group by group in place (no per-group lists to concatenate)
        total = sum(layout.n_conf for layout in layouts)
        self._gid = np.empty(total, dtype=np.int32)
        self._row = np.empty(total, dtype=np.int32)
        self._energies = np.empty(total, dtype=np.float64)
        codes = np.empty(total, dtype=np.int32)
        pos = 0
        fd = os.open(self.path, os.O_RDONLY) if f.driver == "sec2" and hasattr(os, "pread") else -1
        try:
            for layout in layouts:
                try:
                    keep, energy, tmp_labels = self._scan_group(f, layout, skip_nan, min_distance, label_ids, fd)
                except (OSError, RuntimeError, ValueError, TypeError) as err:
                    raise NNPError(f"{layout.where}: cannot read ({err}); is the file truncated or corrupt?") from None
                gid = len(self.h5_groups)
                self.h5_groups.append(layout.name)
                self._group_numbers.append(layout.numbers)
                self._group_coord_key.append(layout.coord_key)
                end = pos + len(keep)
                self._gid[pos:end] = gid
                self._row[pos:end] = keep
                self._energies[pos:end] = energy[keep] * self.energy_factor
                codes[pos:end] = tmp_labels[keep]
                pos = end
        finally:
            if fd >= 0:
                os.close(fd)
        if pos < total:  # rows were skipped
            self._gid, self._row, self._energies, codes = (a[:pos].copy() for a in (self._gid, self._row, self._energies, codes))
        self.n_skipped = int(sum(self.skipped.values()))
        table = list(label_ids)
        order = np.argsort(np.array(table, dtype=str), kind="stable")
        rank = np.empty(len(table), dtype=np.int32)
        rank[order] = np.arange(len(table), dtype=np.int32)
        self._codes = rank[codes] if len(table) else np.zeros(0, np.int32)
        self._label_names = [table[k] for k in order]

    def _scan_group(self, f, layout: GroupLayout, skip_nan: bool, min_distance: float, label_ids: dict, fd: int):
        """Rows to keep (sorted), energies (n_conf,) in file units, temporary label ids (n_conf,)."""
        g = f[layout.name] if layout.name else f
        where = layout.where
        energy = np.asarray(g[self.energy_key][()], dtype=np.float64).reshape(-1)
        ok = np.isfinite(energy)
        if not ok.all():
            if not skip_nan:
                raise NNPError(f"{where} row {int(np.flatnonzero(~ok)[0])}: NaN or infinite energy '{self.energy_key}' (set data.skip_nan=true to skip such rows)")
            self.skipped["energy"] += int((~ok).sum())
        coords = g[layout.coord_key]
        forces = g[self.forces_key] if self.has_forces else None
        offsets = {"coords": _raw_offset(coords) if fd >= 0 else None}
        offsets["forces"] = _raw_offset(forces) if forces is not None and fd >= 0 else None
        labels = np.zeros(layout.n_conf, dtype=np.int32)
        if layout.label_key is None:
            labels[:] = label_ids.setdefault(layout.name or "/", len(label_ids))
        for start, stop in layout.row_chunks():
            part = ok[start:stop]
            if forces is not None:
                fin = finite_rows(forces[start:stop])
                bad = part & ~fin
                if bad.any():
                    if not skip_nan:
                        raise NNPError(f"{where} row {start + int(np.flatnonzero(bad)[0])}: NaN or infinite forces '{self.forces_key}' (set data.skip_nan=true to skip such rows)")
                    self.skipped["forces"] += int(bad.sum())
                    part &= fin
            xyz = coords[start:stop]
            if start == 0 and len(xyz):
                for which, ds, first in (("coords", coords, xyz[0]), ("forces", forces, None)):
                    if offsets[which] is not None:
                        ref = first if first is not None else ds[0]
                        if not _pread_matches(fd, offsets[which], ref):
                            offsets[which] = None
            fin = finite_rows(xyz)
            bad = part & ~fin
            if bad.any():
                if not skip_nan:
                    raise NNPError(f"{where} row {start + int(np.flatnonzero(bad)[0])}: NaN or infinite coordinates (set data.skip_nan=true to skip such rows)")
                self.skipped["coordinates"] += int(bad.sum())
                part &= fin
            if min_distance > 0 and layout.n_atoms > 1 and part.any():
                sel = np.flatnonzero(part)
                good = xyz[sel] if self.length_factor == 1.0 else np.asarray(xyz[sel], dtype=np.float64) * self.length_factor
                close = np.flatnonzero(min_distances(good) < min_distance)
                if len(close):
                    k = int(close[0])
                    d, i, j = closest_pair(good[k])
                    raise NNPError(
                        f"{where} row {start + int(sel[k])}: atoms {i} and {j} are {d:.3f} Å apart "
                        f"(< data.min_distance={min_distance} Å): overlapping atoms"
                    )
            if layout.label_key is not None:
                chunk = np.asarray(g[layout.label_key][start:stop]).reshape(stop - start, -1)[:, 0]
                uniq, inverse = np.unique(chunk, return_inverse=True)
                ids = np.array([label_ids.setdefault(_decode(u), len(label_ids)) for u in uniq], dtype=np.int32)
                labels[start:stop] = ids[inverse.reshape(-1)]
        for which, ds in (("coords", coords), ("forces", forces)):
            self._offsets[which].append(-1 if offsets[which] is None else int(offsets[which]))
            self._dtypes[which].append(ds.dtype.str if ds is not None else "")
        return np.flatnonzero(ok), energy, labels

    # ------------------------------------------------------------ handles
    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._open_datasets = OrderedDict()
        return self._file

    def _descriptor(self) -> int:
        if self._fd < 0 or self._fd_pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as err:
                raise NNPError(f"{self.path}: cannot open ({err.strerror})") from None
            self._fd_pid = os.getpid()
        return self._fd

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _pid=-1, _fd=-1, _fd_pid=-1, _open_datasets=OrderedDict())
        return state  # h5py handles and descriptors do not cross process boundaries

    def __del__(self):
        try:
            if self._fd >= 0 and self._fd_pid == os.getpid():
                os.close(self._fd)
        except (AttributeError, OSError):
            pass

    def _h5_dataset(self, gid: int, which: str) -> h5py.Dataset:
        key = (gid, which)
        ds = self._open_datasets.get(key)
        if ds is None or self._pid != os.getpid():
            f = self._handle()
            g = f[self.h5_groups[gid]] if self.h5_groups[gid] else f
            ds = g[self._group_coord_key[gid] if which == "coords" else self.forces_key]
            self._open_datasets[key] = ds
            if len(self._open_datasets) > _MAX_OPEN_DATASETS:
                self._open_datasets.popitem(last=False)
        else:
            self._open_datasets.move_to_end(key)
        return ds

    # ------------------------------------------------------------- reading
    def _read(self, gid: int, which: str, rows: list[int]) -> np.ndarray:
        """Rows (sorted, unique) of one group's coordinates or forces: (k, n_atoms, 3) in file units."""
        n = len(self._group_numbers[gid])
        offset = self._offsets[which][gid]
        if offset >= 0:
            dt = np.dtype(self._dtypes[which][gid])
            row_bytes = n * 3 * dt.itemsize
            out = np.empty((len(rows), n, 3), dtype=dt)
            view = memoryview(out).cast("B")
            fd = self._descriptor()
            a = 0
            for b in range(1, len(rows) + 1):
                if b == len(rows) or rows[b] != rows[b - 1] + 1:  # one read per run of consecutive rows
                    size = (b - a) * row_bytes
                    got = _pread_into(fd, view[a * row_bytes : b * row_bytes], offset + rows[a] * row_bytes)
                    if got != size:
                        raise NNPError(f"{self.path}:/{self.h5_groups[gid]} row {rows[a]}: file ends early (truncated?)")
                    a = b
            return out
        ds = self._h5_dataset(gid, which)
        lo, hi = rows[0], rows[-1] + 1
        if hi - lo <= 4 * len(rows):
            return np.asarray(ds[lo:hi])[np.asarray(rows) - lo]
        return np.asarray(ds[rows])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Samples of a batch (in the order asked), read group by group, each row once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} structures")
        idx = np.where(idx < 0, idx + n, idx)
        gids, rows = self._gid[idx], self._row[idx]
        order = np.lexsort((rows, gids))
        sg, sr = gids[order], rows[order]
        new = np.ones(len(idx), dtype=bool)
        new[1:] = (sg[1:] != sg[:-1]) | (sr[1:] != sr[:-1])
        slot = np.empty(len(idx), dtype=np.int64)
        slot[order] = np.cumsum(new) - 1  # each request -> its distinct (group, row)
        ug, ur = sg[new].tolist(), sr[new].tolist()
        l_fac, f_fac = self.length_factor, self.energy_factor / self.length_factor
        coords, forces, numbers = [], [], []  # per distinct (group, row)
        a = 0
        for b in range(1, len(ug) + 1):
            if b < len(ug) and ug[b] == ug[a]:
                continue
            gid, these = ug[a], ur[a:b]
            try:
                block = self._read(gid, "coords", these).astype(np.float64)
                fblock = self._read(gid, "forces", these).astype(np.float64) if self.has_forces else None
            except (OSError, RuntimeError, ValueError) as err:
                raise NNPError(f"{self.path}:/{self.h5_groups[gid]} rows {these[:3]}: cannot read ({err})") from None
            if l_fac != 1.0:
                block *= l_fac
            coords.extend(block)
            numbers.extend([self._group_numbers[gid]] * (b - a))
            if fblock is not None:
                if f_fac != 1.0:
                    fblock *= f_fac
                forces.extend(fblock)
            a = b
        energies = self._energies[idx].tolist()
        samples = []
        for k, (i, u) in enumerate(zip(idx.tolist(), slot.tolist(), strict=True)):
            sample = {
                keys.Z: numbers[u],
                keys.R: coords[u],
                keys.CELL: _ZERO_CELL,
                keys.PBC: _NO_PBC,
                keys.STRUCTURE_ID: i,
                keys.ENERGY: energies[k],
            }
            if forces:
                sample[keys.FORCES] = forces[u]
            samples.append(sample)
        return samples

    # ---------------------------------------------------------- dataset API
    def __len__(self) -> int:
        return int(self._gid.shape[0])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([int(index)])[0]

    def energies(self) -> np.ndarray:
        return self._energies

    def numbers_of(self, index: int) -> np.ndarray:
        return self._group_numbers[int(self._gid[index])]

    def groups(self) -> np.ndarray:
        return self._codes

    def group_names(self) -> list[str]:
        return self._label_names

    def group_of(self, index: int) -> tuple[str, int]:
        """(HDF5 group, row) structure ``index`` was read from, for messages."""
        return self.h5_groups[int(self._gid[index])], int(self._row[index])

    def n_atoms(self) -> np.ndarray:
        sizes = np.array([len(z) for z in self._group_numbers], dtype=np.int64)
        return sizes[self._gid]

    def elements(self) -> list[int]:
        return sorted({int(z) for zs in self._group_numbers for z in zs})

    def composition_matrix(self, indices: np.ndarray, species: list[int]) -> np.ndarray:
        """(len(indices), S) element counts, computed per group, not per row."""
        cached = getattr(self, "_composition", None)
        if cached is None or cached[0] != tuple(species):
            col = {z: k for k, z in enumerate(species)}
            per_group = np.zeros((len(self._group_numbers), len(species)))
            for g, zs in enumerate(self._group_numbers):
                for z in zs:
                    if int(z) in col:
                        per_group[g, col[int(z)]] += 1
            self._composition = cached = (tuple(species), per_group)
        return cached[1][self._gid[np.asarray(indices, dtype=np.int64)]]


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

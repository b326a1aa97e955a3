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
from collections.abc import Sequence

import h5py
import numpy as np

from nnp import keys
from nnp.data.checks import closest_pair, finite_rows, min_distances
from nnp.data.datasets import AtomsDataset
from nnp.data.hdf5_layout import (  # noqa: F401  (re-exported: nnp.data.hdf5 is the public name)
    _CHUNK_ELEMENTS,
    _COORD_KEYS,
    _NUMBER_KEYS,
    H5_ERRORS,
    GroupLayout,
    _decode,
    _pread_into,
    _pread_matches,
    _raw_offset,
    _reason,
    _small_attrs,
    _unit_factor,
    describe_group,
    find_data_groups,
    open_h5,
    reading,
)
from nnp.errors import NNPError

#: h5py datasets kept open per process for chunked files (each may hold a chunk cache).
_MAX_OPEN_DATASETS = 256
_ZERO_CELL = np.zeros((3, 3))
_ZERO_CELL.flags.writeable = False
_NO_PBC = np.zeros(3, dtype=bool)
_NO_PBC.flags.writeable = False


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
                except H5_ERRORS as err:  # a read not wrapped by `reading` (which names the dataset)
                    raise NNPError(f"{layout.where}: cannot read ({_reason(err)}); is the file truncated or corrupt?") from None
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
        where = layout.where
        with reading(where):
            g = f[layout.name] if layout.name else f
        with reading(where, self.energy_key):
            energy = np.asarray(g[self.energy_key][()], dtype=np.float64).reshape(-1)
        ok = np.isfinite(energy)
        if not ok.all():
            if not skip_nan:
                raise NNPError(f"{where} row {int(np.flatnonzero(~ok)[0])}: NaN or infinite energy '{self.energy_key}' (set data.skip_nan=true to skip such rows)")
            self.skipped["energy"] += int((~ok).sum())
        with reading(where, layout.coord_key):
            coords = g[layout.coord_key]
        with reading(where, self.forces_key):
            forces = g[self.forces_key] if self.has_forces else None
        offsets = {"coords": _raw_offset(coords) if fd >= 0 else None}
        offsets["forces"] = _raw_offset(forces) if forces is not None and fd >= 0 else None
        labels = np.zeros(layout.n_conf, dtype=np.int32)
        if layout.label_key is None:
            labels[:] = label_ids.setdefault(layout.name or "/", len(label_ids))
        for start, stop in layout.row_chunks():
            part = ok[start:stop]
            rows = f"{where} rows {start}-{stop - 1}"
            if forces is not None:
                with reading(rows, self.forces_key):
                    fin = finite_rows(forces[start:stop])
                bad = part & ~fin
                if bad.any():
                    if not skip_nan:
                        raise NNPError(f"{where} row {start + int(np.flatnonzero(bad)[0])}: NaN or infinite forces '{self.forces_key}' (set data.skip_nan=true to skip such rows)")
                    self.skipped["forces"] += int(bad.sum())
                    part &= fin
            with reading(rows, layout.coord_key):
                xyz = coords[start:stop]
            if start == 0 and len(xyz):
                for which, ds, first in (("coords", coords, xyz[0]), ("forces", forces, None)):
                    if offsets[which] is not None:
                        with reading(rows, layout.coord_key if which == "coords" else self.forces_key):
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
                with reading(rows, layout.label_key):
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
            which = "coords"
            try:  # (no `reading` context here: this is the training loop's path)
                block = self._read(gid, which, these).astype(np.float64)
                which = "forces"
                fblock = self._read(gid, which, these).astype(np.float64) if self.has_forces else None
            except H5_ERRORS as err:
                key = self._group_coord_key[gid] if which == "coords" else self.forces_key
                rows = f"{these[:3]}{'...' if len(these) > 3 else ''}"
                raise NNPError(f"{self.path}:/{self.h5_groups[gid]} rows {rows}: cannot read '{key}' ({_reason(err)}); is the file truncated or corrupt?") from None
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

    def column(self, key: str) -> np.ndarray:
        """Per-structure values (n, ...) of dataset ``key`` of every group, in this dataset's order
        (total charges, dipoles); NNPError naming the first group without it."""
        out: np.ndarray | None = None
        order = np.argsort(self._gid, kind="stable")
        bounds = np.searchsorted(self._gid[order], np.arange(len(self.h5_groups) + 1))
        with open_h5(self.path) as f:
            for gid, name in enumerate(self.h5_groups):
                sel = order[bounds[gid]:bounds[gid + 1]]
                if len(sel) == 0:
                    continue
                if key not in f[name]:
                    raise NNPError(f"{self.path}:/{name}: no dataset '{key}'")
                values = np.asarray(f[name][key], dtype=np.float64)[self._row[sel]]
                if out is None:
                    out = np.zeros((len(self),) + values.shape[1:])
                out[sel] = values
        return out if out is not None else np.zeros(0)

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

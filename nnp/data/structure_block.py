"""Many structures as a few flat arrays, read and written without per-structure objects.

``nnp predict`` on tens of thousands of small molecules spends most of its time
outside the model when every structure is an ``ase.Atoms`` (read, checked,
collated, given a calculator, written). A :class:`StructureBlock` holds them all
at once, concatenated like a flat batch: atomic numbers (N,), positions (N, 3) Å,
atoms per structure (M,), cells (M, 3, 3) Å, periodicity (M, 3). A batch is a
slice of it (:meth:`StructureBlock.batch`), and results come back as flat arrays
split only where a writer needs them.

Two file kinds are read and written here directly:

- the dataset HDF5 layout (ANI-1x: one group per formula with
  ``atomic_numbers`` (n,) and ``coordinates`` (n_conf, n, 3), see
  :mod:`nnp.data.hdf5_layout`): one read per group;
- extxyz through the ``extxyz`` package's C parser when it is installed
  (``pip install 'nnp[fastio]'``); :mod:`nnp.data.ase_files` (ASE) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnp import keys
from nnp.errors import NNPError


@dataclass
class StructureBlock:
    """M structures, N atoms in all: numbers (N,) int64, positions (N, 3) float64 Å, n_atoms (M,) int64,
    cell (M, 3, 3) Å, pbc (M, 3) bool; charge (M,) e or None (neutral)."""

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    charge: np.ndarray | None = None
    #: where the structures came from, for writing results back beside them (e.g. HDF5 groups)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.n_atoms)

    def where(self, m: int) -> str:
        """Structure ``m`` for messages ("structure 7", or "/C2H6O1 row 3" for HDF5 input)."""
        groups = self.source.get("groups")
        if groups:
            starts = np.cumsum([0] + [c for _, c in groups])
            g = int(np.searchsorted(starts, m, side="right") - 1)
            return f"/{groups[g][0]} row {m - starts[g]}"
        return f"structure {m}"

    def batch(self, start: int, stop: int) -> dict:
        """Structures ``start:stop`` as a collated flat batch (see :func:`nnp.data.collate.collate`)."""
        import torch

        a, b = int(self.offsets[start]), int(self.offsets[stop])
        n = torch.from_numpy(self.n_atoms[start:stop])
        out = {
            keys.Z: torch.from_numpy(self.numbers[a:b]),
            keys.R: torch.from_numpy(self.positions[a:b]),
            keys.N_ATOMS: n,
            keys.IDX_M: torch.repeat_interleave(torch.arange(stop - start), n),
            keys.CELL: torch.from_numpy(self.cell[start:stop]),
            keys.PBC: torch.from_numpy(self.pbc[start:stop]),
            keys.STRUCTURE_ID: torch.arange(start, stop),
        }
        if self.charge is not None:
            out[keys.TOTAL_CHARGE] = torch.from_numpy(self.charge[start:stop])
        return out

    @classmethod
    def from_atoms(cls, frames) -> StructureBlock:
        """From a list of ``ase.Atoms`` (total charge from ``atoms.info['charge']``, ASE's convention)."""
        from nnp.data.collate import total_charge

        n = np.array([len(a) for a in frames], dtype=np.int64)
        charges = [a.info.get("charge") for a in frames]
        charge = None
        if any(q is not None for q in charges):
            charge = np.array([0.0 if q is None else total_charge(q, f"structure {k}: atoms.info['charge']") for k, q in enumerate(charges)])
        return cls(
            numbers=np.concatenate([a.numbers for a in frames]).astype(np.int64) if len(frames) else np.zeros(0, np.int64),
            positions=np.concatenate([a.positions for a in frames]).astype(np.float64) if len(frames) else np.zeros((0, 3)),
            n_atoms=n,
            cell=np.array([a.cell.array for a in frames], dtype=np.float64).reshape(-1, 3, 3),
            pbc=np.array([a.pbc for a in frames], dtype=bool).reshape(-1, 3),
            charge=charge,
        )

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """A per-atom array (N, ...) as one view per structure."""
        return np.split(flat, self.offsets[1:-1])


def is_hdf5(path: str) -> bool:
    """True for a file that starts with the HDF5 signature (or is named .h5/.hdf5 when it does not exist yet)."""
    import os

    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    return path.lower().endswith((".h5", ".hdf5"))


def read_hdf5_block(path: str) -> StructureBlock:
    """Every structure of a dataset-layout HDF5 file (groups in sorted order, rows in file order).

    Positions are converted to Å from the file's ``length_unit`` attribute (Å when absent).
    """
    from nnp.data.hdf5_layout import (
        _COORD_KEYS,
        _NUMBER_KEYS,
        H5_ERRORS,
        _dataset_key,
        _small_attrs,
        _to_atomic_numbers,
        _unit_factor,
        find_data_groups,
        open_h5,
        reading,
    )

    numbers, positions, n_atoms, groups = [], [], [], []
    with open_h5(path) as f:
        try:
            attrs = _small_attrs(f)
            length = _unit_factor(attrs, "length", None, path)
            names = find_data_groups(f, _COORD_KEYS)
        except H5_ERRORS as err:
            raise NNPError(f"{path}: cannot read the file's groups ({err}); is it truncated or corrupt?") from None
        if not names:
            raise NNPError(f"{path}: no group holds 'coordinates' (expected the dataset HDF5 layout: one group per formula with atomic_numbers and coordinates)")
        for name in names:
            where = f"{path}:/{name}"
            with reading(where):
                g = f[name] if name else f
                coord_key = _dataset_key(g, _COORD_KEYS, where)
                number_key = _dataset_key(g, _NUMBER_KEYS, where)
            if number_key is None:
                raise NNPError(f"{where}: no 'atomic_numbers' beside '{coord_key}'")
            with reading(where, number_key):
                z = _to_atomic_numbers(np.asarray(g[number_key][()]), f"{where}/{number_key}").reshape(-1)
            with reading(where, coord_key):
                xyz = np.asarray(g[coord_key][()], dtype=np.float64)
            if xyz.ndim != 3 or xyz.shape[1:] != (len(z), 3):
                raise NNPError(f"{where}: '{coord_key}' has shape {xyz.shape}, expected (n_conf, {len(z)}, 3) for {len(z)} atomic numbers")
            groups.append((name, len(xyz)))
            numbers.append(np.tile(z, len(xyz)))
            positions.append(xyz.reshape(-1, 3) * length)
            n_atoms.append(np.full(len(xyz), len(z), dtype=np.int64))
    m = int(sum(len(n) for n in n_atoms))
    if m == 0:
        raise NNPError(f"{path}: file holds no structures")
    return StructureBlock(
        numbers=np.concatenate(numbers), positions=np.concatenate(positions), n_atoms=np.concatenate(n_atoms),
        cell=np.zeros((m, 3, 3)), pbc=np.zeros((m, 3), dtype=bool), source={"groups": groups, "path": path},
    )


#: Units written as attributes of each HDF5 result dataset (and the file's energy_unit / length_unit).
RESULT_UNITS = {
    "energy": "eV", "forces": "eV/angstrom", "energies": "eV", "stress": "eV/angstrom^3",
    "charges": "e", "dipole": "e*angstrom", "energy_std": "eV", "forces_std": "eV/angstrom", "max_forces_std": "eV/angstrom",
    "charges_std": "e",
}


def write_hdf5_results(path, block: StructureBlock, per_structure: dict[str, np.ndarray], per_atom: dict[str, np.ndarray]) -> None:
    """Write structures and flat results (``per_structure`` (M, ...), ``per_atom`` (N, ...)) in the dataset layout.

    HDF5 input keeps its groups (same names and row order); other input is grouped by formula
    (:func:`nnp.data.writer.formula_key`), structures in input order, with ``index`` (the input position);
    a row whose atoms come in another order than the group's first row is permuted to that order.
    Every result dataset carries a ``unit`` attribute; the file carries ``energy_unit`` / ``length_unit``.
    """
    import h5py

    groups = block.source.get("groups")
    if groups:
        plan, start = [], 0
        for name, count in groups:
            plan.append((name, np.arange(start, start + count)))
            start += count
    else:
        from nnp.data.writer import formula_key

        by: dict[str, list[int]] = {}
        for k, z in enumerate(block.split(block.numbers)):
            by.setdefault(formula_key(z), []).append(k)
        plan = [(name, np.array(rows)) for name, rows in sorted(by.items())]
    with h5py.File(path, "w") as f:
        f.attrs["energy_unit"] = "eV"
        f.attrs["length_unit"] = "angstrom"
        for name, rows in plan:
            g = f.require_group(name) if name else f
            n_at = int(block.n_atoms[rows[0]])
            atoms = block.offsets[rows][:, None] + np.arange(n_at)  # (rows, n_at): each row's atoms
            z = block.numbers[atoms]
            # one atom order per group (the first row's): other rows of the formula are permuted to it,
            # atoms of one element keeping their order (as nnp.data.writer appends rows)
            perm = np.empty_like(atoms)
            perm[:, np.argsort(z[0], kind="stable")] = np.argsort(z, axis=1, kind="stable")
            atoms = np.take_along_axis(atoms, perm, axis=1).reshape(-1)
            g["atomic_numbers"] = z[0].astype(np.uint8)
            g["coordinates"] = block.positions[atoms].reshape(len(rows), n_at, 3)
            if not groups:
                g["index"] = rows
            if block.pbc[rows].any():
                g["cell"] = block.cell[rows]
                g["pbc"] = block.pbc[rows]
            results = [(k, v[rows]) for k, v in per_structure.items()]
            results += [(k, v[atoms].reshape(len(rows), n_at, *v.shape[1:])) for k, v in per_atom.items()]
            for key, data in results:
                ds = g.create_dataset(key, data=data)
                unit = RESULT_UNITS.get(key, "eV" if key.startswith("energy_") else None)
                if unit:
                    ds.attrs["unit"] = unit


def check_block(block: StructureBlock, potential, min_distance: float, path: str) -> None:
    """NNPError naming the file and structure for no atoms, unknown elements, non-finite
    coordinates or atoms closer than ``min_distance`` Å (checked per stack of equal-sized structures)."""
    import torch

    from nnp.data.checks import check_min_distance, min_distances

    empty = np.flatnonzero(block.n_atoms == 0)
    if len(empty):
        raise NNPError(f"{path}: {block.where(int(empty[0]))}: no atoms")
    structure = np.repeat(np.arange(len(block)), block.n_atoms)
    bad = np.flatnonzero(~np.isfinite(block.positions).all(axis=1))
    if len(bad):
        raise NNPError(f"{path}: {block.where(int(structure[bad[0]]))}: NaN or infinite coordinates")
    try:
        potential.species_of(torch.from_numpy(block.numbers))
    except NNPError:
        z = torch.from_numpy(block.numbers)
        known = torch.zeros(119, dtype=torch.bool)
        known[list(potential.species)] = True
        first = int(structure[int(torch.nonzero(~known[z.clamp(0, 118)] | (z < 1) | (z > 118))[0])])
        a, b = block.offsets[first], block.offsets[first + 1]
        try:
            potential.species_of(z[a:b])
        except NNPError as err:
            raise NNPError(f"{path}: {block.where(first)}: {err}") from None
    if min_distance <= 0:
        return
    for n in np.unique(block.n_atoms):
        if n < 2:
            continue
        rows = np.flatnonzero(block.n_atoms == n)
        atoms = (block.offsets[rows][:, None] + np.arange(n)).reshape(-1)
        d = min_distances(block.positions[atoms].reshape(len(rows), n, 3))
        close = np.flatnonzero(d < min_distance)
        if len(close):  # the one-structure check words the message (atoms i and j, distance)
            k = int(rows[close[0]])
            check_min_distance(block.positions[block.offsets[k]:block.offsets[k + 1]], min_distance, f"{path}: {block.where(k)}")

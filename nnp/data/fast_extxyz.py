"""extxyz through the ``extxyz`` package's C parser (``pip install 'nnp[fastio]'``), when installed.

Measured on 20,000 small CHNO molecules (benchmarks/predict_bench.py): reading
several times faster than ``ase.io.read``, writing faster than ``ase.io.write``;
the numbers and the ``info`` / ``arrays`` keys are the same as ASE's (tested in
tests/test_predict_files.py). Without the package, callers use ASE.
"""

from __future__ import annotations

import os

import numpy as np

from nnp.data.structure_block import StructureBlock
from nnp.errors import NNPError


def available() -> bool:
    """True when the ``extxyz`` package (its C parser) can be imported."""
    try:
        import extxyz  # noqa: F401
    except ImportError:
        return False
    return True


def is_extxyz(path: str, fmt: str | None = None) -> bool:
    """A file this module handles: format extxyz (given, or from a .xyz/.extxyz name)."""
    if fmt is not None:
        return fmt == "extxyz"
    return str(path).lower().endswith((".xyz", ".extxyz"))


def read_frames(path: str) -> list:
    """Every frame of an extxyz file as ``extxyz.Frame`` (natoms, cell, pbc, info, arrays), one clear error otherwise."""
    import extxyz

    if not os.path.isfile(path):
        raise NNPError(f"{path}: file not found")
    try:
        frames = extxyz.read_dicts(path)
    except Exception as err:  # the C and Python parsers raise several types for malformed files
        raise NNPError(f"{path}: cannot read as extxyz ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise NNPError(f"{path}: file holds no structures")
    return frames


def block_of(frames, path: str) -> StructureBlock:
    """The frames' structures as one :class:`StructureBlock` (element symbols mapped once per distinct symbol)."""
    from ase.data import atomic_numbers

    from nnp.data.checks import check_cell
    from nnp.data.collate import total_charge

    n = np.array([f.natoms for f in frames], dtype=np.int64)
    species = np.concatenate([np.asarray(f.arrays["species"] if "species" in f.arrays else f.arrays["Z"]) for f in frames])
    if species.dtype.kind in "iu":
        numbers = species.astype(np.int64)
    else:
        symbols, inverse = np.unique(species, return_inverse=True)
        try:
            table = np.array([atomic_numbers[str(s).strip()] for s in symbols], dtype=np.int64)
        except KeyError as err:
            raise NNPError(f"{path}: unknown element symbol {err.args[0]!r}") from None
        numbers = table[inverse.reshape(-1)]
    positions = np.concatenate([np.asarray(f.arrays["pos"], dtype=np.float64).reshape(-1, 3) for f in frames])
    cell = np.array([np.asarray(f.cell, dtype=np.float64).reshape(3, 3) for f in frames])
    pbc = np.array([np.asarray(f.pbc, dtype=bool).reshape(3) for f in frames])
    for k in np.flatnonzero(pbc.any(axis=1)):
        check_cell(cell[k], pbc[k], f"{path}: structure {k}")
    charge = None
    if any("charge" in f.info for f in frames):
        charge = np.array([total_charge(f.info.get("charge", 0.0), f"structure {k}: info 'charge'") for k, f in enumerate(frames)])
    return StructureBlock(numbers, positions, n, cell, pbc, charge, source={"frames": frames, "path": path})


def write_frames(path, frames, per_structure: dict[str, np.ndarray], per_atom: dict[str, np.ndarray], offsets: np.ndarray) -> None:
    """Write ``frames`` with results added: per-structure values to ``info`` (stress as 3x3, as ASE writes it),
    per-atom arrays (N, ...) to ``arrays`` as views of the flat results."""
    import extxyz

    cuts = offsets[1:-1]
    split = {k: np.split(v, cuts) for k, v in per_atom.items()}
    # info values as text: the C writer prints floats with 8 decimals, ASE with all 17 digits (and a
    # stress or dipole as one quoted list of numbers, which is what ASE's reader expects)
    text, periodic = {}, {}
    for k, v in per_structure.items():
        if v.ndim == 1:
            text[k] = list(map(repr, v.tolist()))
        else:
            text[k] = [" ".join(map(repr, row)) for row in v.reshape(len(v), -1).tolist()]
            periodic[k] = np.isfinite(v.reshape(len(v), -1)).all(axis=1)  # stress: periodic structures only
    for m, f in enumerate(frames):
        for k, v in text.items():
            if k not in periodic or periodic[k][m]:
                f.info[k] = v[m]
        for k, v in split.items():
            f.arrays[k] = v[m]
    extxyz.write_dicts(str(path), frames)

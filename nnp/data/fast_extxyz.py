"""extxyz without an ``ase.Atoms`` per structure: read with the ``extxyz`` package's C parser
(``pip install 'nnp[fastio]'``; ASE's reader otherwise), written by a bulk writer here.

Measured on 20,000 small CHNO molecules (benchmarks/predict_bench.py, results in
benchmarks/results/predict.json): reading and writing several times faster than
``ase.io.read`` / ``ase.io.write``; the ``extxyz`` package's own writer measured no
faster than ASE's (its per-frame conversion to C dicts dominates) and prints info
floats with 8 decimals, so it is not used. Read back by ASE, the numbers and the
``info`` / ``arrays`` keys are the same as ASE's (tests/test_predict_files.py).
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
        charge = np.array([total_charge(f.info.get("charge", 0.0), f"structure {k}: atoms.info['charge']") for k, f in enumerate(frames)])
    return StructureBlock(numbers, positions, n, cell, pbc, charge, source={"frames": frames, "path": path})


#: extxyz column formats, as ASE writes them (ase.io.extxyz.output_column_format)
_COLUMN = {"f": ("R", "%16.8f"), "i": ("I", "%8d"), "u": ("I", "%8d"), "U": ("S", "%-2s"), "S": ("S", "%s"), "b": ("L", " %.1s")}


def write_block(path, block: StructureBlock, per_structure: dict[str, np.ndarray], per_atom: dict[str, np.ndarray]) -> None:
    """Write a block's structures with flat results as extxyz in the layout ``ase.io.write`` uses.

    The comment line of each structure carries the input's own ``info`` (from ``block.source``:
    extxyz frames or ASE Atoms; calculator properties of the input are replaced by the results)
    and the per-structure results; the atom lines hold species, positions, the input's other
    per-atom arrays and the per-atom results. All atom lines of a structure are one ``%``
    operation on a flat list made once for the whole file (no per-atom Python), which is what
    makes this faster than ``ase.io.write`` and the ``extxyz`` package's writer (measured in
    benchmarks/predict_bench.py; read back by ASE, the numbers and keys are the same as ASE's).
    """
    from ase.calculators.calculator import all_properties
    from ase.data import chemical_symbols
    from ase.io.extxyz import key_val_dict_to_str

    m = len(block)
    infos, arrays = _input_extras(block, set(all_properties) | set(per_structure) | set(per_atom))
    columns: list[tuple[str, np.ndarray]] = [("species", np.array(chemical_symbols)[block.numbers]), ("pos", block.positions)]
    columns += [(k, v) for k, v in arrays.items()] + list(per_atom.items())
    props, fmts, flat_cols = [], [], []
    for name, value in columns:
        value = value.reshape(len(value), -1)
        ptype, fmt = _COLUMN[value.dtype.kind]
        props.append(f"{name}:{ptype}:{value.shape[1]}")
        fmts += [fmt] * value.shape[1]
        flat_cols.append(value.astype(object) if value.dtype.kind != "b" else np.where(value, "T", "F").astype(object))
    line = " ".join(fmts) + "\n"
    values = np.concatenate(flat_cols, axis=1).ravel().tolist()
    ncol = len(fmts)
    properties = "Properties=" + ":".join(props)
    scalars = {k: v.tolist() for k, v in per_structure.items() if v.ndim == 1}
    vectors = {k: v for k, v in per_structure.items() if v.ndim > 1}
    if "stress" in vectors:  # symmetric, as ASE keeps it (Voigt 6: the mean of each off-diagonal pair)
        vectors["stress"] = (vectors["stress"] + vectors["stress"].swapaxes(1, 2)) / 2
    # the comment line's per-structure parts, made for all structures at once where possible
    has_cell = block.cell.reshape(m, 9).any(axis=1).tolist()
    first = [f'Lattice="{" ".join(map(str, c.T.reshape(9, order="F").tolist()))}" {properties}' if has else properties
             for c, has in zip(block.cell, has_cell)]
    pbc_text = {(a, b, c): f'pbc="{"T" if a else "F"} {"T" if b else "F"} {"T" if c else "F"}"' for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    pbc = [pbc_text[tuple(p)] for p in block.pbc.astype(int).tolist()]
    finite = {k: np.isfinite(v.reshape(m, -1)).all(axis=1).tolist() for k, v in vectors.items()}  # stress: periodic only
    n_atoms, offsets = block.n_atoms.tolist(), (block.offsets * ncol).tolist()
    templates: dict[int, str] = {}
    with open(path, "w") as fh:
        for k in range(m):
            n = n_atoms[k]
            head = [first[k]]
            if infos and infos[k]:
                head.append(key_val_dict_to_str(infos[k]))
            head += [f"{key}={v[k]}" for key, v in scalars.items()]
            extra = {key: v[k] for key, v in vectors.items() if finite[key][k]}
            if extra:
                head.append(key_val_dict_to_str(extra))
            head.append(pbc[k])
            template = templates.get(n) or templates.setdefault(n, line * n)
            fh.write(f"{n}\n{' '.join(head)}\n")
            fh.write(template % tuple(values[offsets[k]:offsets[k + 1]]))


def _input_extras(block: StructureBlock, replaced: set[str]) -> tuple[list[dict] | None, dict[str, np.ndarray]]:
    """The input's per-structure ``info`` dicts and its other per-atom arrays (flat, (N, ...)), without
    species, positions and the keys the results replace; arrays only where every structure has them."""
    frames = block.source.get("frames")
    atoms = block.source.get("atoms")
    if frames is not None:
        infos = [{k: v for k, v in f.info.items() if k not in replaced} for f in frames]
        per = [f.arrays for f in frames]
    elif atoms is not None:
        infos = [{k: v for k, v in a.info.items() if k not in replaced} for a in atoms]
        per = [a.arrays for a in atoms]
    else:
        return None, {}
    skip = replaced | {"species", "pos", "Z", "numbers", "positions"}
    names = [k for k in per[0] if k not in skip and all(k in p for p in per)]
    arrays = {k: np.concatenate([np.asarray(p[k]) for p in per]) for k in names}
    return infos, {k: v for k, v in arrays.items() if v.dtype.kind in _COLUMN}

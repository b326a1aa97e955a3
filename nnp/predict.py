"""``nnp predict``: energies and forces for every structure of a file.

    nnp predict ckpt=RUN/model.pt input=structures.extxyz output=predicted.extxyz
    nnp predict ckpt=[a.pt,b.pt,c.pt] input=structures.extxyz output=predicted.extxyz

Reads any format ASE reads, and the dataset HDF5 layout (ANI-1x: one group per
formula, see :mod:`nnp.data.hdf5`); writes energy, forces (and stress for periodic
cells, per-atom energies as ``energies``) with ASE's single-point calculator, or
to an HDF5 file in the dataset layout (``output=*.h5``: each result a dataset with
a ``unit`` attribute). extxyz is read with the ``extxyz`` package's C parser when
it is installed (``pip install 'nnp[fastio]'``) and written by a bulk writer in ASE's
layout (:mod:`nnp.data.fast_extxyz`); ``fast_io=false``: ASE's reader and writer.

All structures are held as one flat block (:mod:`nnp.data.structure_block`):
batches are slices of it and results stay flat arrays until a writer splits them.
With a committee, the mean, and beside it ``energy_std`` and ``max_forces_std``
in ``atoms.info`` and the per-atom ``forces_std`` in ``atoms.arrays`` (eV, eV/Å).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from nnp.committee import load_model
from nnp.data import fast_extxyz
from nnp.data.structure_block import (
    StructureBlock,
    check_block,
    is_hdf5,
    read_hdf5_block,
    write_hdf5_results,
)
from nnp.errors import NNPError
from nnp.inference import run_block
from nnp.outputs import atomic_path, check_writable, write_error_reason
from nnp.report import console, table
from nnp.structures import read_inputs


def _output_format(out: Path, fmt: str | None) -> str:
    """The ASE format the output is written in (``format``, or from the file name), checked
    before any work: an unknown or read-only format is one line, not a failure at the end."""
    from ase.io.formats import filetype, ioformats

    given = fmt is not None
    if fmt in ("hdf5", "h5") or (not given and str(out).lower().endswith((".h5", ".hdf5"))):
        return "hdf5"  # the dataset layout (see :func:`nnp.data.structure_block.write_hdf5_results`)
    if not given:
        try:
            fmt = filetype(str(out), read=False)
        except Exception:  # ASE raises several types for a name it does not know
            fmt = None
    info = ioformats.get(str(fmt)) if fmt is not None else None
    if info is None and not given:
        raise NNPError(f"{out}: cannot tell the output format from the file name: give format=extxyz (or another ASE format)")
    if info is None:
        raise NNPError(f"format={fmt}: not an ASE format (e.g. extxyz, xyz, traj, db)")
    if not info.can_write:
        raise NNPError(f"format={fmt}: ASE cannot write this format; choose e.g. extxyz")
    return str(fmt)


def _read(inp: Path, potential, cfg: DictConfig, fast: bool):
    """The input as a :class:`StructureBlock`; ``source`` holds the HDF5 groups, the extxyz frames or the ASE Atoms."""
    index = str(cfg.get("index", ":"))
    path = str(inp)
    if is_hdf5(path):
        if index != ":":
            raise NNPError(f"index={index}: selecting structures works for ASE formats only, not for the HDF5 input {inp}")
        block = read_hdf5_block(path)
    elif fast and index == ":" and fast_extxyz.is_extxyz(path) and fast_extxyz.available():
        block = fast_extxyz.block_of(fast_extxyz.read_frames(path), path)
    else:
        frames = read_inputs(path, potential, float(cfg.min_distance), index)
        block = StructureBlock.from_atoms(frames)
        block.source = {"atoms": frames, "path": path}
        return block
    check_block(block, potential, float(cfg.min_distance), path)
    return block


def _write(out: Path, fmt: str, block: StructureBlock, per_structure: dict, per_atom: dict, fast: bool) -> None:
    """Results beside their structures: HDF5 (dataset layout), extxyz (the bulk writer unless ``fast_io=false``) or any ASE format."""
    if fmt == "hdf5":
        write_hdf5_results(out, block, per_structure, per_atom)
        return
    if fast and fmt == "extxyz":
        fast_extxyz.write_block(out, block, per_structure, per_atom)
        return
    import ase.io

    ase.io.write(out, _atoms_with_results(block, per_structure, per_atom), format=fmt)


def _atoms_with_results(block: StructureBlock, per_structure: dict, per_atom: dict) -> list:
    """ASE Atoms (the input's, or built from the block) with a single-point calculator holding the results."""
    import ase
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    frames = block.source.get("atoms")
    if frames is None:
        pos, num = block.split(block.positions), block.split(block.numbers)
        frames = [ase.Atoms(numbers=num[m], positions=pos[m], cell=block.cell[m], pbc=block.pbc[m]) for m in range(len(block))]
    split = {k: block.split(v) for k, v in per_atom.items()}
    energy = per_structure["energy"].tolist()
    for m, atoms in enumerate(frames):
        kw = {"energy": energy[m], "forces": split["forces"][m], "energies": split["energies"][m]}
        if "charges" in split:  # models with the coulomb term
            kw["charges"] = split["charges"][m]
        if "dipole" in per_structure:
            kw["dipole"] = per_structure["dipole"][m]
        if "stress" in per_structure and block.pbc[m].all():
            kw["stress"] = full_3x3_to_voigt_6_stress(per_structure["stress"][m])
        atoms.calc = SinglePointCalculator(atoms, **kw)
        for key, value in per_structure.items():
            if key in ("energy_std", "max_forces_std") or key.startswith("energy_"):
                atoms.info[key] = float(value[m])  # committee spread; each term's share (eV)
        for key in ("forces_std", "charges_std"):  # committees (charges_std: with coulomb)
            if key in split:
                atoms.arrays[key] = split[key][m]
    return frames


def run(cfg: DictConfig) -> dict:
    """Predict, write, print a summary; returns ``(per_structure, per_atom)`` flat results
    (see :func:`nnp.inference.run_block`) as a dict with those two keys."""
    for key in ("ckpt", "input", "output"):
        if cfg.get(key) in (None, "", "???"):
            raise NNPError(f"{key} is not set: nnp predict ckpt=MODEL input=FILE output=FILE")
    inp, out = Path(str(cfg.input)), Path(str(cfg.output))
    if out.resolve() == inp.resolve():
        raise NNPError(f"{out}: output would overwrite the input file")
    check_writable(out, bool(cfg.get("overwrite", False)))  # before reading or predicting anything
    fmt = _output_format(out, cfg.get("format") or None)
    fast = bool(cfg.get("fast_io", True))
    potential = load_model(cfg.ckpt)
    if cfg.get("dtype"):
        potential = potential.to(getattr(torch, str(cfg.dtype)))
    block = _read(inp, potential, cfg, fast)
    per_structure, per_atom = run_block(potential, block, int(cfg.batch_size), str(cfg.device), progress="predicting")
    # temp file beside the output (never beside the input), renamed when complete
    with atomic_path(out) as tmp:
        try:
            _write(tmp, fmt, block, per_structure, per_atom, fast)
        except NNPError:
            raise
        except Exception as err:
            if write_error_reason(err) is not None:
                raise  # a disk error (full, read-only, ...): atomic_path reports it
            raise NNPError(f"{out}: cannot write ({type(err).__name__}: {err})") from None
    _summary(inp, out, block, per_structure, per_atom)
    return {"per_structure": per_structure, "per_atom": per_atom}


def _summary(inp: Path, out: Path, block: StructureBlock, per_structure: dict, per_atom: dict) -> None:
    """The table of the first five and last three structures (no per-structure work for the rest)."""
    from ase.data import chemical_symbols
    from ase.formula import Formula

    m = len(block)
    shown = list(range(m)) if m <= 10 else [*range(5), *range(m - 3, m)]
    committee = "max_forces_std" in per_structure
    columns = ["#", "formula", "atoms", "energy (eV)", "max |F| (eV/Å)"]
    if committee:
        columns += ["energy std (eV)", "max force std (eV/Å)"]
    rows = []
    for k in shown:
        a, b = block.offsets[k], block.offsets[k + 1]
        formula = Formula("".join(chemical_symbols[z] for z in block.numbers[a:b])).format("hill")
        row = [k, formula, int(b - a), float(per_structure["energy"][k]), float(np.abs(per_atom["forces"][a:b]).max())]
        rows.append(row + [float(per_structure["energy_std"][k]), float(per_structure["max_forces_std"][k])] if committee else row)
    if m > 10:
        rows.insert(5, ["…"] + [""] * (len(columns) - 1))
    console.print(table(f"{m} structures from {inp}", columns, rows))
    console.print(f"wrote {out}")

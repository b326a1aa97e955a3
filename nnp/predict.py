"""``nnp predict``: energies and forces for every structure of a file.

    nnp predict ckpt=RUN/model.pt input=structures.extxyz output=predicted.extxyz
    nnp predict ckpt=[a.pt,b.pt,c.pt] input=structures.extxyz output=predicted.extxyz

Reads any format ASE reads; writes energy, forces (and stress for periodic
cells, per-atom energies as ``energies``) with ASE's single-point calculator.
With a committee, the mean, and beside it ``energy_std`` and ``max_forces_std``
in ``atoms.info`` and the per-atom ``forces_std`` in ``atoms.arrays`` (eV, eV/Å).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from nnp.committee import load_model
from nnp.data.collate import atoms_to_sample
from nnp.errors import NNPError
from nnp.inference import per_structure, run_batches
from nnp.outputs import atomic_path, check_writable, write_error_reason
from nnp.report import console, table
from nnp.structures import read_inputs


def predict_structures(model, frames, batch_size: int = 64, device: str = "cpu") -> list[dict]:
    """One dict per structure (see :func:`nnp.inference.per_structure`): energy (eV),
    forces (n, 3) eV/Å, energies (n,), stress (3, 3) where periodic, committee spreads."""
    results: list[dict] = []

    def fetch(idx):
        return [atoms_to_sample(frames[i], i) for i in idx]

    for batch, out in run_batches(model, fetch, len(frames), batch_size, device, forces=True, progress="predicting"):
        results.extend(per_structure(batch, out))
    return results


def _output_format(out: Path, fmt: str | None) -> str:
    """The ASE format the output is written in (``format``, or from the file name), checked
    before any work: an unknown or read-only format is one line, not a failure at the end."""
    from ase.io.formats import filetype, ioformats

    given = fmt is not None
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


def run(cfg: DictConfig) -> list[dict]:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    for key in ("ckpt", "input", "output"):
        if cfg.get(key) in (None, "", "???"):
            raise NNPError(f"{key} is not set: nnp predict ckpt=MODEL input=FILE output=FILE")
    inp, out = Path(str(cfg.input)), Path(str(cfg.output))
    if out.resolve() == inp.resolve():
        raise NNPError(f"{out}: output would overwrite the input file")
    check_writable(out, bool(cfg.get("overwrite", False)))  # before reading or predicting anything
    fmt = _output_format(out, cfg.get("format") or None)
    potential = load_model(cfg.ckpt)
    if cfg.get("dtype"):
        potential = potential.to(getattr(torch, str(cfg.dtype)))
    frames = read_inputs(str(inp), potential, float(cfg.min_distance), str(cfg.get("index", ":")))
    preds = predict_structures(potential, frames, int(cfg.batch_size), str(cfg.device))
    for atoms, p in zip(frames, preds):
        kw = {"energy": p["energy"], "forces": p["forces"], "energies": p["energies"]}
        for key in ("charges", "dipole"):  # models with the coulomb term
            if key in p:
                kw[key] = p[key]
        if "stress" in p:
            kw["stress"] = full_3x3_to_voigt_6_stress(p["stress"])
        atoms.calc = SinglePointCalculator(atoms, **kw)
        for key in ("energy_std", "max_forces_std"):
            if key in p:
                atoms.info[key] = p[key]
        for key in p:
            if key.startswith("energy_") and key not in ("energy_std",):
                atoms.info[key] = p[key]  # energy_zbl, energy_coulomb, ...: each term's share (eV)
        for key in ("forces_std", "charges_std"):  # committees (charges_std: with coulomb)
            if key in p:
                atoms.arrays[key] = p[key]
    # temp file beside the output (never beside the input), renamed when complete
    with atomic_path(out) as tmp:
        try:
            ase.io.write(tmp, frames, format=fmt)
        except Exception as err:
            if write_error_reason(err) is not None:
                raise  # a disk error (full, read-only, ...): atomic_path reports it
            raise NNPError(f"{out}: cannot write ({type(err).__name__}: {err})") from None
    committee = bool(preds) and "max_forces_std" in preds[0]
    rows = []
    for k, (a, p) in enumerate(zip(frames, preds)):
        row = [k, a.get_chemical_formula(), len(a), p["energy"], float(np.abs(p["forces"]).max())]
        rows.append(row + [p["energy_std"], p["max_forces_std"]] if committee else row)
    columns = ["#", "formula", "atoms", "energy (eV)", "max |F| (eV/Å)"]
    if committee:
        columns += ["energy std (eV)", "max force std (eV/Å)"]
    if len(rows) > 10:
        rows = rows[:5] + [["…"] + [""] * (len(columns) - 1)] + rows[-3:]
    console.print(table(f"{len(frames)} structures from {inp}", columns, rows))
    console.print(f"wrote {out}")
    return preds

"""``nnp predict``: energies and forces for every structure of a file.

    nnp predict ckpt=RUN/model.pt input=structures.extxyz output=predicted.extxyz

Reads any format ASE reads; writes energy, forces (and stress for periodic
cells, per-atom energies as ``energies``) with ASE's single-point calculator.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from nnp import keys
from nnp.calculator import batch_to
from nnp.data.collate import atoms_to_sample, collate
from nnp.errors import NNPError
from nnp.potential import Potential
from nnp.report import console, table
from nnp.structures import read_inputs


def predict_structures(potential: Potential, frames, batch_size: int = 64, device: str = "cpu") -> list[dict]:
    """One dict per structure: energy (eV), forces (n, 3) eV/Å, energies (n,), stress (3, 3) if periodic."""
    from rich.progress import Progress

    dtype = potential.atomref.dtype
    potential = potential.to(device).eval()
    results: list[dict] = []
    with Progress(console=console, transient=True, disable=len(frames) < 2 * batch_size) as bar:
        task = bar.add_task("predicting", total=len(frames))
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            batch = batch_to(collate([atoms_to_sample(a, k) for k, a in enumerate(chunk)]), device, dtype)
            periodic = bool(batch[keys.PBC].all(-1).all())
            out = potential(batch, compute_forces=True, compute_stress=periodic)
            n = batch[keys.N_ATOMS].tolist()
            forces = torch.split(out[keys.FORCES].detach().double().cpu(), n)
            atomic = torch.split(out[keys.ATOMIC_ENERGY].detach().double().cpu(), n)
            for m in range(len(chunk)):
                r = {"energy": float(out[keys.ENERGY][m].detach()), "forces": forces[m].numpy(), "energies": atomic[m].numpy()}
                if periodic:
                    r["stress"] = out[keys.STRESS][m].detach().double().cpu().numpy()
                results.append(r)
            bar.advance(task, len(chunk))
    return results


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
    potential = Potential.load(cfg.ckpt)
    if cfg.get("dtype"):
        potential = potential.to(getattr(torch, str(cfg.dtype)))
    frames = read_inputs(str(inp), potential, float(cfg.min_distance), str(cfg.get("index", ":")))
    preds = predict_structures(potential, frames, int(cfg.batch_size), str(cfg.device))
    for atoms, p in zip(frames, preds):
        kw = {"energy": p["energy"], "forces": p["forces"], "energies": p["energies"]}
        if "stress" in p:
            kw["stress"] = full_3x3_to_voigt_6_stress(p["stress"])
        atoms.calc = SinglePointCalculator(atoms, **kw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    try:
        ase.io.write(tmp, frames, format=cfg.get("format") or None)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise NNPError(f"{out}: cannot write ({type(err).__name__}: {err})") from None
    os.replace(tmp, out)
    rows = [[k, a.get_chemical_formula(), len(a), p["energy"], float(np.abs(p["forces"]).max())] for k, (a, p) in enumerate(zip(frames, preds))]
    if len(rows) > 10:
        rows = rows[:5] + [["…", "", "", "", ""]] + rows[-3:]
    console.print(table(f"{len(frames)} structures from {inp}", ["#", "formula", "atoms", "energy (eV)", "max |F| (eV/Å)"], rows))
    console.print(f"wrote {out}")
    return preds

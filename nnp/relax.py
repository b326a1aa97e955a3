"""``nnp relax``: local minimisation of every structure of a file with a model.

    nnp relax ckpt=RUN/model.pt input=start.extxyz output=relaxed.extxyz \
        optimizer=fire fmax=0.05 max_steps=500 [cell=true pressure_bar=0]

ASE's optimizers (FIRE, BFGS, LBFGS: :data:`nnp.registry.RELAX_OPTIMIZERS`) until the
largest force is below ``fmax`` (eV/Å) or ``max_steps`` steps; ``cell=true`` also relaxes
the cell of periodic structures (ASE's ``FrechetCellFilter`` at ``pressure_bar``; fmax
then bounds the stress times the volume per atom as well). Each step shows the energy
and the largest force on a progress line.

Writes every structure, relaxed as far as it got, to ``output`` with ``energy``,
``forces`` (and ``stress``) and, in ``atoms.info``, ``relax_converged``, ``relax_steps``
and ``relax_fmax``; and a JSON summary beside it. A structure that did not converge is
listed in the table and the summary, and the command exits with code 3 (a check not
passed; what was computed is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from nnp.errors import NNPError, SafetyStop
from nnp.outputs import atomic_path, check_writable
from nnp.report import console, table, write_json


class NotConverged(SafetyStop):
    """Some structure did not reach ``fmax`` within ``max_steps`` (exit 3; all structures written)."""


def max_force(atoms) -> float:
    """Largest row norm of ``get_forces()`` (eV/Å): of the atoms, or of a cell filter's generalized
    forces (atoms and cell), the quantity ASE's optimizers compare with fmax."""
    f = atoms.get_forces()
    return float(np.sqrt(np.einsum("ij,ij->i", f, f).max(initial=0.0)))


def relax_one(atoms, optimizer: str, fmax: float, max_steps: int, cell: bool = False, pressure_bar: float = 0.0,
              on_step=None) -> dict[str, Any]:
    """Relax ``atoms`` (calculator attached) in place; returns energies (eV), fmax (eV/Å), steps, converged.

    ``on_step(step, energy, fmax)`` is called after every step (the progress line).
    """
    from ase import units

    from nnp.registry import RELAX_OPTIMIZERS

    target = atoms
    if cell:
        if not atoms.pbc.all():
            raise NNPError("cell=true relaxes periodic cells; this structure is not periodic in all three directions")
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms, scalar_pressure=float(pressure_bar) * units.bar)
    opt = RELAX_OPTIMIZERS.get(optimizer)(target, logfile=None)
    e0 = float(atoms.get_potential_energy())
    if on_step is not None:
        opt.attach(lambda: on_step(opt.nsteps, float(atoms.get_potential_energy()), max_force(target)), interval=1)
    converged = bool(opt.run(fmax=float(fmax), steps=int(max_steps)))
    result = {
        "converged": converged,
        "steps": int(opt.nsteps),
        "energy_start_eV": e0,
        "energy_eV": float(atoms.get_potential_energy()),
        "fmax_eV_A": max_force(target),
        "max_atom_force_eV_A": max_force(atoms),
    }
    if cell:
        result["volume_A3"] = float(atoms.get_volume())
        result["stress_eV_A3"] = atoms.get_stress().tolist()
    return result


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    import ase.io
    import torch
    from ase.calculators.singlepoint import SinglePointCalculator
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nnp.calculator import NNPCalculator
    from nnp.committee import load_model
    from nnp.registry import RELAX_OPTIMIZERS
    from nnp.structures import read_inputs

    for key in ("ckpt", "input", "output"):
        if cfg.get(key) in (None, "", "???"):
            raise NNPError(f"{key} is not set: nnp relax ckpt=MODEL input=FILE output=FILE")
    RELAX_OPTIMIZERS.get(cfg.optimizer)
    inp, out = Path(str(cfg.input)), Path(str(cfg.output))
    if out.resolve() == inp.resolve():
        raise NNPError(f"{out}: output would overwrite the input file")
    summary_path = out.with_suffix(".json")
    for p in (out, summary_path):
        check_writable(p, bool(cfg.overwrite))
    model = load_model(cfg.ckpt)
    if cfg.get("dtype"):
        model = model.to(getattr(torch, str(cfg.dtype)))
    frames = read_inputs(str(inp), model, float(cfg.min_distance), str(cfg.get("index", ":")))
    cell = bool(cfg.cell)
    if cell:
        flat = [k for k, a in enumerate(frames) if not a.pbc.all()]
        if flat:
            raise NNPError(f"{inp}: structure {flat[0]} is not periodic in all three directions; cell=true needs periodic cells")
    calc = NNPCalculator(model, device=str(cfg.device))
    results: list[dict[str, Any]] = []
    with Progress(TextColumn("[bold]relax[/] {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as bar:
        for k, atoms in enumerate(frames):
            name = f"{k}: {atoms.get_chemical_formula()}"
            task = bar.add_task("relax", total=int(cfg.max_steps), name=name, info="")

            def on_step(step, energy, fmax, task=task):
                bar.update(task, completed=step, info=f"E={energy:.6f} eV  fmax={fmax:.4f} eV/Å")

            atoms.calc = calc
            r = relax_one(atoms, str(cfg.optimizer), float(cfg.fmax), int(cfg.max_steps), cell,
                          float(cfg.pressure_bar), on_step)
            bar.update(task, completed=int(cfg.max_steps) if r["converged"] else r["steps"],
                       info=("converged" if r["converged"] else "[red]NOT converged[/]") + f", fmax={r['fmax_eV_A']:.4f} eV/Å")
            r["index"], r["formula"] = k, atoms.get_chemical_formula()
            results.append(r)
            kw = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            if atoms.pbc.all():
                kw["stress"] = atoms.get_stress()
            atoms.calc = SinglePointCalculator(atoms, **kw)
            atoms.info.update(relax_converged=r["converged"], relax_steps=r["steps"], relax_fmax=r["fmax_eV_A"])
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    failed = [r["index"] for r in results if not r["converged"]]
    write_json(summary_path, {
        "optimizer": str(cfg.optimizer), "fmax_eV_A": float(cfg.fmax), "max_steps": int(cfg.max_steps),
        "cell": cell, "pressure_bar": float(cfg.pressure_bar) if cell else None,
        "converged": len(results) - len(failed), "not_converged": failed, "structures": results, "output": str(out),
    })
    rows = [[r["index"], r["formula"], "yes" if r["converged"] else "NO", r["steps"], f"{r['energy_start_eV']:.6f}",
             f"{r['energy_eV']:.6f}", f"{r['fmax_eV_A']:.4f}"] for r in results]
    if len(rows) > 12:
        rows = rows[:6] + [["…"] + [""] * 6] + rows[-4:]
    console.print(table(f"relax ({cfg.optimizer}, fmax {float(cfg.fmax):g} eV/Å, at most {cfg.max_steps} steps)",
                        ["#", "formula", "converged", "steps", "E start (eV)", "E (eV)", "fmax (eV/Å)"], rows))
    console.print(f"wrote {out}, {summary_path}")
    if failed:
        shown = ", ".join(str(i) for i in failed[:10]) + (" ..." if len(failed) > 10 else "")
        raise NotConverged(f"{len(failed)} of {len(results)} structures did not reach fmax={float(cfg.fmax):g} eV/Å within "
                           f"max_steps={cfg.max_steps} (structures {shown}); all are written to {out}, with info relax_converged")
    return results

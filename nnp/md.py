"""``nnp md``: molecular dynamics with a model, through ASE's integrators.

    nnp md ckpt=RUN/model.pt input=start.xyz md.ensemble=nve md.steps=10000 \
        md.timestep_fs=0.5 md.temperature_K=300 output=traj.extxyz

Writes the trajectory (every ``md.write_interval`` steps), a CSV log with
``time_ps,epot_eV,ekin_eV,etot_eV,temperature_K`` and a JSON summary, and
reports the drift of the total energy (eV/atom/ps, a linear fit).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from nnp.errors import NNPError
from nnp.report import console, table, write_json

LOG_COLUMNS = ["time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]


def energy_drift(time_ps: np.ndarray, etot_ev: np.ndarray, n_atoms: int) -> float:
    """Slope of a linear fit of total energy per atom against time (eV/atom/ps)."""
    if len(time_ps) < 2:
        return 0.0
    return float(np.polyfit(time_ps, etot_ev / n_atoms, 1)[0])


# Below this many atoms one CPU thread is faster: per-step work is too small to
# split, and spin-waiting threads on a loaded machine cost 10-40x (measured:
# aspirin, 37 ms/step on 1 thread vs 933 ms on 2 with the other core busy).
_SINGLE_THREAD_MAX_ATOMS = 1000


def _set_threads(threads, n_atoms: int, device: str) -> None:
    import torch

    if threads in (None, "auto"):
        if device == "cpu" and n_atoms < _SINGLE_THREAD_MAX_ATOMS:
            torch.set_num_threads(1)
        return
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise NNPError(f"threads={threads!r}: give a number of CPU threads or auto") from None
    if n < 1:
        raise NNPError(f"threads={threads!r}: must be at least 1")
    torch.set_num_threads(n)


def make_dynamics(atoms, md: DictConfig):
    from ase import units

    ensemble = str(md.ensemble).lower()
    dt = float(md.timestep_fs) * units.fs
    if dt <= 0:
        raise NNPError(f"md.timestep_fs={md.timestep_fs}: must be positive")
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble in ("nvt", "langevin"):
        from ase.md.langevin import Langevin

        gamma_per_fs = float(md.friction_per_ps) / 1000.0
        return Langevin(
            atoms, timestep=dt, temperature_K=float(md.temperature_K), friction=gamma_per_fs / units.fs,
            rng=np.random.default_rng(int(md.seed)),
        )
    raise NNPError(f"md.ensemble={md.ensemble!r}: choose nve or nvt (Langevin)")


def run(cfg: DictConfig) -> dict[str, Any]:
    import ase.io
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from nnp.calculator import NNPCalculator
    from nnp.potential import Potential
    from nnp.structures import read_inputs

    for key in ("ckpt", "input"):
        if cfg.get(key) in (None, "", "???"):
            raise NNPError(f"{key} is not set: nnp md ckpt=MODEL input=FILE output=FILE")
    md = cfg.md
    steps = int(md.steps)
    if steps < 1:
        raise NNPError(f"md.steps={steps}: must be at least 1")
    out = Path(str(cfg.output))
    log_path = Path(str(cfg.log)) if cfg.get("log") else out.with_suffix(".csv")
    summary_path = out.with_suffix(".json")
    for p in (out, log_path):
        if p.exists() and not cfg.overwrite:
            raise NNPError(f"{p} already exists: choose another output, or overwrite=true")
    potential = Potential.load(cfg.ckpt)
    frames = read_inputs(str(cfg.input), potential, float(cfg.min_distance), str(cfg.get("index", "0")))
    atoms = frames[0]
    _set_threads(cfg.get("threads", "auto"), len(atoms), str(cfg.device))
    atoms.calc = NNPCalculator(potential, device=str(cfg.device), dtype=cfg.get("dtype"))
    n_atoms = len(atoms)
    if md.temperature_K and float(md.temperature_K) > 0 and (md.init_velocities or not atoms.get_velocities().any()):
        MaxwellBoltzmannDistribution(atoms, temperature_K=float(md.temperature_K), rng=np.random.default_rng(int(md.seed)))
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
    dyn = make_dynamics(atoms, md)
    dt_ps = float(md.timestep_fs) / 1000.0

    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[list[float]] = []
    traj_fh = open(out, "w")
    log_fh = open(log_path, "w", newline="")
    writer = csv.writer(log_fh)
    writer.writerow(LOG_COLUMNS)

    def log():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        row = [dyn.nsteps * dt_ps, epot, ekin, epot + ekin, atoms.get_temperature()]
        if not np.isfinite(row[3]):
            raise NNPError(f"the simulation became unstable at step {dyn.nsteps} (non-finite energy); output so far kept in {out}")
        rows.append(row)
        writer.writerow([f"{v:.8g}" for v in row])

    def write():
        ase.io.write(traj_fh, atoms, format="extxyz")

    dyn.attach(log, interval=max(1, int(md.log_interval)))
    dyn.attach(write, interval=max(1, int(md.write_interval)))
    t0 = time.time()
    chunk = max(1, steps // 200)
    try:
        with Progress(
            TextColumn(f"[bold]md {md.ensemble}[/] {atoms.get_chemical_formula()}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        ) as bar:
            task = bar.add_task("md", total=steps, info="")
            done = 0
            while done < steps:
                n = min(chunk, steps - done)
                dyn.run(n)
                done += n
                bar.update(task, completed=done, info=f"T={atoms.get_temperature():.0f} K")
    finally:
        traj_fh.close()
        log_fh.close()
    wall = time.time() - t0
    data = np.array(rows)
    drift = energy_drift(data[:, 0], data[:, 3], n_atoms)
    summary = {
        "ensemble": str(md.ensemble),
        "n_atoms": n_atoms,
        "steps": steps,
        "timestep_fs": float(md.timestep_fs),
        "simulated_ps": steps * dt_ps,
        "energy_drift_eV_per_atom_per_ps": drift,
        "etot_std_eV_per_atom": float(data[:, 3].std() / n_atoms),
        "mean_temperature_K": float(data[:, 4].mean()),
        "steps_per_second": steps / wall,
        "ns_per_day": steps * dt_ps * 1e-3 / (wall / 86400.0),
        "wall_seconds": wall,
        "trajectory": str(out),
        "log": str(log_path),
    }
    write_json(summary_path, summary)
    console.print(table(
        f"md {md.ensemble}: {steps} steps x {md.timestep_fs} fs, {n_atoms} atoms",
        ["", "value"],
        [
            ["total-energy drift", f"{drift:.3e} eV/atom/ps"],
            ["total-energy std", f"{summary['etot_std_eV_per_atom']:.3e} eV/atom"],
            ["mean temperature", f"{summary['mean_temperature_K']:.1f} K"],
            ["speed", f"{summary['steps_per_second']:.1f} steps/s ({summary['ns_per_day']:.3f} ns/day)"],
        ],
    ))
    console.print(f"wrote {out}, {log_path}, {summary_path}")
    return summary

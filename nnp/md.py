"""``nnp md``: molecular dynamics with a model, through ASE's integrators.

    nnp md ckpt=RUN/model.pt input=start.xyz md.ensemble=nve md.steps=10000 \
        md.timestep_fs=0.5 md.temperature_K=300 output=traj.extxyz

Writes the trajectory (every ``md.write_interval`` steps), a CSV log with
``time_ps,epot_eV,ekin_eV,etot_eV,temperature_K`` (every digit of the float64
values; under NPT ``volume_A3``; for a committee ``max_forces_std_eV_A,energy_std_eV``),
a PNG of it (:mod:`nnp.md_plot`), a JSON summary, and reports the drift of the
total energy (eV/atom/ps, a linear fit). Ensembles: nve, nvt (``md.thermostat``),
npt (``md.barostat``), ASE integrators named in :mod:`nnp.registry`.

``md.steps`` is the total length; ``OUTPUT.restart.npz`` is written with every
frame and at the end, ``md.restart=true`` continues from it, and ``md.max_time``
ends a run early with exit code 75 (:mod:`nnp.md_restart`).

Every step is watched (:mod:`nnp.md_watch`): a safety check that trips ends
the run with :class:`~nnp.errors.SafetyStop` (exit code 3), a committee's
uncertainty above ``md.uncertainty.threshold`` flags the frame or, with
``action=stop``, ends the run with :class:`~nnp.errors.UncertaintyStop` (exit
code 4). Files are flushed after every write, so what was written before a
stop stays complete and readable, and the summary says where and why it stopped.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from nnp.errors import NNPError, SafetyStop, UncertaintyStop
from nnp.md_watch import (
    FrameWriter,
    SafetyLimits,
    SafetyWatch,
    Trip,
    Tripped,
    UncertaintySettings,
    UncertaintyWatch,
    check_non_finite,
    uncertainty_of,
)
from nnp.outputs import check_writable
from nnp.registry import MD_ENGINES
from nnp.report import console, table, write_json

LOG_COLUMNS = ["time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]
COMMITTEE_COLUMNS = ["max_forces_std_eV_A", "energy_std_eV"]
NPT_COLUMNS = ["volume_A3"]


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
    """The ASE integrator ``md`` asks for: nve (velocity Verlet), nvt (``md.thermostat``,
    default Langevin) or npt (``md.barostat`` with its own thermostat, at ``md.pressure_bar``)."""
    from ase import units

    from nnp.registry import BAROSTAT_THERMOSTAT, BAROSTATS, THERMOSTATS

    ensemble = str(md.ensemble).lower()
    dt = float(md.timestep_fs) * units.fs
    if dt <= 0:
        raise NNPError(f"md.timestep_fs={md.timestep_fs}: must be positive")
    engine = MD_ENGINES.get(md.get("engine", "ase"))()
    if engine is not None:  # OpenMM or LAMMPS integrates; this loop still checks and logs (nnp/engines)
        return engine(atoms, md)
    thermostat = str(md.get("thermostat") or "langevin").lower()
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble in ("nvt", "langevin"):
        return THERMOSTATS.get("langevin" if ensemble == "langevin" else thermostat)(atoms, md, dt)
    if ensemble == "npt":
        barostat = str(md.get("barostat") or "mtk").lower()
        builder = BAROSTATS.get(barostat)
        own = BAROSTAT_THERMOSTAT[barostat]
        if thermostat not in ("langevin", own):
            raise NNPError(f"md.thermostat={thermostat} with md.barostat={barostat}: ASE's {barostat} barostat "
                           f"integrates with its own {own} thermostat; set md.thermostat={own} (or leave the default)")
        if not atoms.pbc.all():
            raise NNPError("md.ensemble=npt needs a cell periodic in all three directions (pbc=T T T)")
        return builder(atoms, md, dt)
    raise NNPError(f"md.ensemble={md.ensemble!r}: choose nve, nvt or npt")


def _ckpt_spec(ckpt):
    """``ckpt`` as load_model takes it: a path, or a list of paths (``ckpt=[a.pt,b.pt]``)."""
    from omegaconf import ListConfig

    if isinstance(ckpt, (ListConfig, list, tuple)):
        return [str(p) for p in ckpt]
    return str(ckpt)


def run(cfg: DictConfig) -> dict[str, Any]:
    from nnp.calculator import NNPCalculator
    from nnp.committee import load_model
    from nnp.structures import read_inputs

    for key in ("ckpt", "input"):
        if cfg.get(key) in (None, "", "???"):
            raise NNPError(f"{key} is not set: nnp md ckpt=MODEL input=FILE output=FILE")
    SafetyLimits.from_config(cfg.md)  # bad limits fail before anything is read
    UncertaintySettings.from_config(cfg.md, Path(str(cfg.output)))
    model = load_model(_ckpt_spec(cfg.ckpt))
    frames = read_inputs(str(cfg.input), model, float(cfg.min_distance), str(cfg.get("index", "0")))
    atoms = frames[0]
    _set_threads(cfg.get("threads", "auto"), len(atoms), str(cfg.device))
    atoms.calc = NNPCalculator(model, device=str(cfg.device), dtype=cfg.get("dtype"), skin=float(cfg.md.get("skin") or 0.0))
    return simulate(atoms, cfg)


def _kept(traj: FrameWriter, log_step: int | None, log_path: Path) -> str:
    if traj.last_step is None and log_step is None:
        return f"nothing written to {traj.path}, {log_path} before it"
    if traj.last_step == log_step:
        return f"trajectory and log up to step {log_step} kept in {traj.path}, {log_path}"
    t = f"trajectory up to step {traj.last_step} kept in {traj.path}" if traj.last_step is not None else f"no frame in {traj.path}"
    lg = f"log up to step {log_step} in {log_path}" if log_step is not None else f"no row in {log_path}"
    return f"{t}, {lg}"


def simulate(atoms, cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.md`` on ``atoms`` (its calculator attached): the part of ``nnp md`` after loading."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from nnp.md_plot import plot_log
    from nnp.md_restart import (
        Restart,
        RunCut,
        parse_max_time,
        restart_path,
        trim_log,
        trim_trajectory,
        write_restart,
    )

    md = cfg.md
    steps = int(md.steps)
    if steps < 1:
        raise NNPError(f"md.steps={steps}: must be at least 1")
    out = Path(str(cfg.output))
    log_path = Path(str(cfg.log)) if cfg.get("log") else out.with_suffix(".csv")
    summary_path = out.with_suffix(".json")
    plot_path = log_path.with_suffix(".png")
    limits = SafetyLimits.from_config(md)
    unc_settings = UncertaintySettings.from_config(md, out)
    max_time = parse_max_time(md.get("max_time"))
    restart_file = restart_path(out)
    # md.restart=true continues from the run's restart file when there is one (else starts anew),
    # so a job script can always pass it and rerun the same command after a cut (exit 75)
    resume = Restart(restart_file) if md.get("restart") and restart_file.is_file() else None
    if resume is not None:
        resume.check(md)
        resume.apply_atoms(atoms)
        for p in (out, log_path, summary_path):
            check_writable(p, overwrite=True)
    else:
        for p in (out, log_path, summary_path, restart_file):  # refused before any work: existing (unless overwrite), unwritable
            check_writable(p, bool(cfg.overwrite))
    npt = str(md.ensemble).lower() == "npt"
    atoms.get_forces()  # the start structure, evaluated once: a committee reports its spread
    committee = uncertainty_of(atoms.calc.results) is not None
    if unc_settings.threshold is not None:
        if not committee:
            raise NNPError(
                f"md.uncertainty.threshold={unc_settings.threshold:g} needs a committee model "
                "(ckpt=committee.pt or ckpt=[a.pt,b.pt,...]); this model reports no max_forces_std"
            )
        flagged = unc_settings.output
        if flagged.exists() and resume is None:  # a restart appends to the run's own flagged frames
            if not cfg.overwrite:
                raise NNPError(f"{flagged} already exists: choose another md.uncertainty.output, or overwrite=true")
            flagged.unlink()  # a stale file would read as this run's flagged frames
    n_atoms = len(atoms)
    if resume is None and md.temperature_K and float(md.temperature_K) > 0 and (md.init_velocities or not atoms.get_velocities().any()):
        MaxwellBoltzmannDistribution(atoms, temperature_K=float(md.temperature_K), rng=np.random.default_rng(int(md.seed)))
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
    dyn = make_dynamics(atoms, md)
    dt_ps = float(md.timestep_fs) / 1000.0
    start = 0
    if resume is not None:
        resume.apply_dynamics(dyn)
        start = resume.step

    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    safety = SafetyWatch(limits)
    uwatch = UncertaintyWatch(unc_settings, append=resume is not None) if committee else None
    rows: list[list[float]] = trim_log(log_path, start * dt_ps) if resume is not None else []
    last_log: list[int | None] = [None]
    if resume is not None:
        trim_trajectory(out, start)
    traj = FrameWriter(out, append=resume is not None)
    log_fh = open(log_path, "a" if resume is not None else "w", newline="")
    writer = csv.writer(log_fh)
    if resume is None or not rows:
        log_fh.truncate(0)
        writer.writerow(LOG_COLUMNS + (NPT_COLUMNS if npt else []) + (COMMITTEE_COLUMNS if committee else []))
    log_fh.flush()
    meta = {"ensemble": str(md.ensemble), "timestep_fs": str(md.timestep_fs), "steps": steps}

    def check():
        trip = safety.check(dyn.nsteps, atoms)
        if trip is None and uwatch is not None:
            trip = uwatch.observe(dyn.nsteps, atoms, atoms.calc.results)
        if trip is not None:
            raise Tripped(trip)

    def log():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        row = [dyn.nsteps * dt_ps, epot, ekin, epot + ekin, atoms.get_temperature()]
        if npt:
            row.append(atoms.get_volume())
        if committee:
            unc = uncertainty_of(atoms.calc.results)
            row += [unc["max_forces_std"], unc.get("energy_std", float("nan"))]
        rows.append(row)
        writer.writerow([repr(float(v)) for v in row])  # every digit: 10^4-atom totals need 12 or more
        log_fh.flush()
        last_log[0] = dyn.nsteps

    # Each step is watched before its frame and log row are written: a frame that trips a check is
    # not written. Step 0 (the start structure, already checked as input) is written first, so the
    # trajectory is never empty.
    dyn.attach(lambda: dyn.nsteps > 0 and check(), interval=1)
    dyn.attach(log, interval=max(1, int(md.log_interval)))
    def write_frame():
        atoms.info["step"] = dyn.nsteps  # a restart drops frames after its step by this
        traj.write(atoms, dyn.nsteps)
        if dyn.nsteps > start:
            write_restart(restart_file, atoms, dyn, dyn.nsteps, meta)

    dyn.attach(write_frame, interval=max(1, int(md.write_interval)))
    dyn.attach(check, interval=0)  # ASE: interval 0 = only at step 0, after that step's frame and row
    t0 = time.time()
    chunk = max(1, steps // 200)
    trip: Trip | None = None
    cut = False
    try:
        with Progress(
            TextColumn(f"[bold]md {md.ensemble}[/] {atoms.get_chemical_formula()}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        ) as bar:
            task = bar.add_task("md", total=steps, info="", completed=start)
            done = start
            while done < steps:
                if max_time is not None and done > start and time.time() - t0 > max_time:
                    cut = True
                    break
                n = min(chunk, steps - done)
                try:
                    dyn.run(n)
                except Tripped:
                    raise
                except (RuntimeError, ValueError, FloatingPointError, NNPError):
                    # the model failed on the integrator's new positions: non-finite ones are a blow-up
                    vel = atoms.get_velocities() if atoms.has("momenta") else None
                    blowup = check_non_finite(dyn.nsteps + 1, atoms.positions, vel)
                    if blowup is None:
                        raise
                    raise Tripped(blowup) from None
                done += n
                bar.update(task, completed=done, info=f"T={atoms.get_temperature():.0f} K")
    except Tripped as stop:
        trip = stop.trip
    finally:
        traj.close()
        log_fh.close()
        if uwatch is not None:
            uwatch.close()
    wall = time.time() - t0
    steps_done = trip.step if trip is not None else (done if cut else steps)
    if trip is None:
        write_restart(restart_file, atoms, dyn, steps_done, meta)
    if rows:
        plot_log(rows, LOG_COLUMNS + (NPT_COLUMNS if npt else []) + (COMMITTEE_COLUMNS if committee else []),
                 plot_path, f"md {md.ensemble}: {atoms.get_chemical_formula()}", n_atoms=n_atoms)
    data = np.array(rows) if rows else np.zeros((0, len(LOG_COLUMNS)))
    have = len(rows) > 0
    drift = energy_drift(data[:, 0], data[:, 3], n_atoms) if have else None
    summary = {
        "ensemble": str(md.ensemble),
        "engine": str(md.get("engine", "ase")),
        "n_atoms": n_atoms,
        "steps": steps,
        "steps_done": steps_done,
        "timestep_fs": float(md.timestep_fs),
        "simulated_ps": steps_done * dt_ps,
        "energy_drift_eV_per_atom_per_ps": drift,
        "etot_std_eV_per_atom": float(data[:, 3].std() / n_atoms) if have else None,
        "mean_temperature_K": float(data[:, 4].mean()) if have else None,
        "steps_per_second": (steps_done - start) / wall if wall > 0 else None,
        "ns_per_day": (steps_done - start) * dt_ps * 1e-3 / (wall / 86400.0) if wall > 0 else None,
        "restarted_from_step": start if resume is not None else None,
        "restart_file": str(restart_file) if trip is None else None,
        "plot": str(plot_path) if rows else None,
        "final_volume_A3": float(atoms.get_volume()) if atoms.pbc.all() else None,
        "wall_seconds": wall,
        "trajectory": str(out),
        "log": str(log_path),
        "limits": {"max_force_eV_A": limits.max_force, "max_temperature_K": limits.max_temperature_K,
                   "min_distance_A": limits.min_distance},
        "uncertainty": uwatch.summary() if uwatch is not None else None,
        "stopped": trip.as_dict() if trip is not None else None,
    }
    write_json(summary_path, summary)
    if cut:
        raise RunCut(f"md stopped by md.max_time at step {steps_done} of {steps}: restart file {restart_file} written; "
                     "rerun with md.restart=true to continue")
    if trip is not None:
        error = UncertaintyStop if trip.check == "uncertainty" else SafetyStop
        raise error(f"md stopped at step {trip.step}: {trip.detail} ({_kept(traj, last_log[0], log_path)})")
    lines = [
        ["total-energy drift", f"{drift:.3e} eV/atom/ps"],
        ["total-energy std", f"{summary['etot_std_eV_per_atom']:.3e} eV/atom"],
        ["mean temperature", f"{summary['mean_temperature_K']:.1f} K"],
        ["speed", f"{summary['steps_per_second']:.1f} steps/s ({summary['ns_per_day']:.3f} ns/day)"],
    ]
    written = [str(out), str(log_path), str(summary_path), str(restart_file)] + ([str(plot_path)] if rows else [])
    if summary["uncertainty"] is not None:
        u = summary["uncertainty"]
        lines.append(["max_forces_std", f"max {u['max_forces_std_max_eV_A']:.3g}, mean {u['max_forces_std_mean_eV_A']:.3g} eV/Å"])
        if u["threshold_eV_A"] is not None:
            lines.append(["flagged frames", f"{u['flagged_frames']} above {u['threshold_eV_A']:g} eV/Å"])
        if u["flagged_output"]:
            written.append(u["flagged_output"])
    console.print(table(f"md {md.ensemble}: {steps} steps x {md.timestep_fs} fs, {n_atoms} atoms", ["", "value"], lines))
    console.print(f"wrote {', '.join(written)}")
    return summary

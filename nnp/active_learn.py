"""``nnp active-learn``: the model chooses its own data (the ANI-1x recipe).

    nnp active-learn data=ase data.path=init.extxyz seeds=start.extxyz labeler=ase \\
        labeler.calculator=ase.calculators.emt:EMT ensemble.size=3 rounds=2 hydra.run.dir=al-run

Round ``r`` (0 .. rounds-1): train a committee on all labels so far
(:func:`nnp.train.run`) -> run MD with it from the seed structures
(:func:`nnp.md.simulate`, ``sampling.trajectories`` runs over the seeds and
``sampling.temperatures_K``) -> select the frames where the members disagree
most (``max_forces_std``: above ``md.uncertainty.threshold`` or the top k, at
most ``selection.max_per_round``, at least ``md.uncertainty.min_interval``
steps apart within a trajectory) -> label them (:mod:`nnp.labeling`) ->
append them to the work directory's data set (:mod:`nnp.data.writer`). Round
``rounds`` trains the last committee on the end result.

The work directory (``hydra.run.dir``)::

    dataset.h5        every label so far, ANI-1x layout (eV, Å), append-only
    state.json        the completed stages (written atomically after each)
    round_NNN/        committee/ (model.pt, members/), md/ (trajectories, logs),
                      selected.extxyz, labels.jsonl (the labeling journal), failed.json;
                      labeler.executor=slurm: labels.tasks/ (the array tasks' journals),
                      labels.jobs.json (their job ids), slurm/ (submitit's files and logs)
    rounds.csv, rounds.json, rounds.png   the report, rewritten after every stage

Rerunning the same command continues from the last completed stage; a
structure already in a round's labeling journal is not labeled again, and a
round's rows are appended once (the data set records its batches). Raising
``rounds`` on a finished run continues it.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from nnp import keys
from nnp.data.writer import Row, append_rows, count_rows
from nnp.errors import NNPError, SafetyStop, UncertaintyStop
from nnp.report import console, table, write_json

DATASET = "dataset.h5"
STATE = "state.json"
STAGES = ("train", "sample", "select", "label", "append")
#: Columns of rounds.csv (eV, eV/Å, seconds).
COLUMNS = [
    "round", "labels", "test_energy_mae_eV", "test_forces_mae_eV_A", "candidates", "disagreement_mean_eV_A",
    "disagreement_median_eV_A", "disagreement_max_eV_A", "selected", "labeled", "failed",
    "train_s", "sample_s", "label_s",
]


# ---------------------------------------------------------------- the state


class State:
    """What is done, in ``state.json``: rewritten atomically after every completed stage."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"version": 1, "rounds": {}}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                raise NNPError(f"{path}: not a readable state file (move the work directory away to start over)") from None

    def round(self, r: int) -> dict[str, Any]:
        return self.data["rounds"].setdefault(str(r), {"done": [], "trajectories": {}, "report": {"round": r}})

    def done(self, r: int, stage: str) -> bool:
        return stage in self.round(r)["done"]

    def finish(self, r: int, stage: str, **report: Any) -> None:
        entry = self.round(r)
        entry["report"].update(report)
        if stage not in entry["done"]:
            entry["done"].append(stage)
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


# ---------------------------------------------------------------- helpers


def _round_dir(work: Path, r: int) -> Path:
    return work / f"round_{r:03d}"


def _rows_from_dataset(dataset, origin: str) -> list[Row]:
    rows = []
    for i in range(len(dataset)):
        s = dataset[i]
        if np.asarray(s[keys.PBC]).any():
            raise NNPError(f"{dataset.path}: structure {i} is periodic; active-learn stores molecules and clusters "
                           "(the ANI-1x layout has no cell)")
        forces = s.get(keys.FORCES)
        rows.append(Row(np.asarray(s[keys.Z]), np.asarray(s[keys.R]), float(s[keys.ENERGY]),
                        None if forces is None else np.asarray(forces), origin=f"{origin} {i}"))
    return rows


def _work_data_cfg(cfg: DictConfig, work: Path) -> dict[str, Any]:
    """The data config of the work directory's data set: cfg.data's batch size and split, the file's own keys."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.update(format="hdf5", path=str(work / DATASET), energy_key="energy", forces_key="forces", group_key=None,
                units={"energy": None, "length": None}, split_file=None)
    return data


def _train_cfg(cfg: DictConfig, work: Path) -> DictConfig:
    """The ``nnp train`` config of a round: the same groups, on the work data set."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in
             ("model", "loss", "optim", "trainer", "ensemble", "early_stopping")}
    return OmegaConf.create({
        **parts, "data": _work_data_cfg(cfg, work), "seed": int(cfg.seed), "dtype": str(cfg.dtype),
        "model_file": "model.pt", "overwrite": True, "evaluate_test": False, "resume": None,
        "verbose": bool(cfg.verbose),
    })


def _combos(n_seeds: int, temperatures: list[float]) -> list[tuple[int, float]]:
    return [(s, t) for t in temperatures for s in range(n_seeds)]


def _temperatures(cfg: DictConfig) -> list[float]:
    temps = cfg.sampling.get("temperatures_K")
    return [float(t) for t in temps] if temps else [float(cfg.md.temperature_K)]


# ---------------------------------------------------------------- stages


def _train(cfg: DictConfig, work: Path, r: int) -> dict[str, Any]:
    from nnp.train import run as train

    out = _round_dir(work, r) / "committee"
    if out.exists():  # a training cut short: start it again from scratch
        shutil.rmtree(out)
    t0 = time.time()
    console.print(f"[bold]round {r}[/]: training a committee of {cfg.ensemble.size} on {count_rows(work / DATASET)} structures")
    train(_train_cfg(cfg, work), run_dir=out)
    return {"labels": count_rows(work / DATASET), "train_s": round(time.time() - t0, 2)}


def _test_errors(cfg: DictConfig, work: Path, r: int) -> dict[str, Any]:
    if not cfg.get("test_data"):
        return {}
    from nnp.committee import load_model
    from nnp.data import open_dataset
    from nnp.evaluate import predict_dataset

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.update(path=str(cfg.test_data), split_file=None)
    dataset = open_dataset(data)
    model = load_model(str(_round_dir(work, r) / "committee" / "model.pt"))
    metrics = predict_dataset(model, dataset, np.arange(len(dataset)), progress=False)["metrics"]
    return {"test_energy_mae_eV": metrics["energy_mae"], "test_forces_mae_eV_A": metrics["forces_mae"]}


def _sample(cfg: DictConfig, work: Path, r: int, seeds: list, state: State) -> dict[str, Any]:
    """``sampling.trajectories`` MD runs with the round's committee; each one recorded when done."""
    from nnp.calculator import NNPCalculator
    from nnp.committee import load_model
    from nnp.md import _set_threads, simulate

    t0 = time.time()
    model = load_model(str(_round_dir(work, r) / "committee" / "model.pt"))
    combos = _combos(len(seeds), _temperatures(cfg))
    entry = state.round(r)
    md_dir = _round_dir(work, r) / "md"
    for t in range(int(cfg.sampling.trajectories)):
        if str(t) in entry["trajectories"]:
            continue
        s, temp = combos[t % len(combos)]
        md = OmegaConf.to_container(cfg.md, resolve=True)
        interval = int(md["write_interval"])
        md.update(temperature_K=temp, seed=int(md["seed"]) + 1000 * r + t, log_interval=interval,
                  uncertainty={"threshold": None})
        atoms = seeds[s].copy()
        _set_threads("auto", len(atoms), "cpu")
        atoms.calc = NNPCalculator(model)
        out = md_dir / f"traj_{t:03d}.extxyz"
        run_cfg = OmegaConf.create({"md": md, "output": str(out), "log": None, "overwrite": True})
        try:
            summary = simulate(atoms, run_cfg)
            stopped = None
        except (SafetyStop, UncertaintyStop) as stop:  # frames before the stop are kept: often the most uncertain
            console.print(f"[yellow]round {r} trajectory {t}:[/] {stop}")
            stopped = str(stop)
            summary = None
        entry["trajectories"][str(t)] = {"seed": s, "temperature_K": temp, "trajectory": str(out.relative_to(work)),
                                         "stopped": stopped, "steps": None if summary is None else summary["steps_done"]}
        state.save()
    return {"sample_s": round(time.time() - t0, 2)}


def _candidates(work: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every frame the round's MD wrote after its start (step > 0), with its max_forces_std."""
    import ase.io

    from nnp.md import COMMITTEE_COLUMNS

    found = []
    for t, info in sorted(entry["trajectories"].items(), key=lambda kv: int(kv[0])):
        traj = work / info["trajectory"]
        if not traj.exists() or traj.stat().st_size == 0:
            continue
        frames = ase.io.read(traj, index=":")
        with open(traj.with_suffix(".csv")) as fh:
            rows = list(csv.DictReader(fh))
        for k, (atoms, row) in enumerate(zip(frames, rows)):  # both every md.write_interval steps
            if k == 0:  # the seed itself, the same every round
                continue
            atoms.calc = None
            found.append({"traj": int(t), "frame": k, "std": float(row[COMMITTEE_COLUMNS[0]]), "atoms": atoms,
                          "temperature_K": info["temperature_K"]})
    return found


def select(candidates: list[dict[str, Any]], threshold: float | None, max_picks: int, min_frames_apart: int,
           rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
    """Most uncertain first, above ``threshold`` (None: any), at most ``max_picks``, picks from one
    trajectory at least ``min_frames_apart`` frames apart. With ``rng``: in random order instead
    (the baseline active learning is measured against)."""
    if rng is not None:
        order = [candidates[i] for i in rng.permutation(len(candidates))]
    else:
        order = sorted(candidates, key=lambda c: -c["std"])
    picked: list[dict[str, Any]] = []
    taken: dict[int, list[int]] = {}
    for c in order:
        if len(picked) >= max_picks or (threshold is not None and not c["std"] > threshold):
            break
        near = taken.setdefault(c["traj"], [])
        if any(abs(c["frame"] - f) < min_frames_apart for f in near):
            continue
        near.append(c["frame"])
        picked.append(c)
    return picked


def _select(cfg: DictConfig, work: Path, r: int, state: State) -> dict[str, Any]:
    import ase.io

    from nnp.outputs import atomic_path

    cands = _candidates(work, state.round(r))
    interval = int(cfg.md.write_interval)
    spacing = max(1, -(-int(cfg.md.uncertainty.min_interval) // interval))  # steps -> frames, rounded up
    threshold = cfg.md.uncertainty.threshold if cfg.selection.mode == "threshold" else None
    rng = np.random.default_rng(int(cfg.seed) + r) if cfg.selection.mode == "random" else None
    picked = select(cands, threshold, int(cfg.selection.max_per_round), spacing, rng)
    stds = np.array([c["std"] for c in cands]) if cands else np.zeros(0)
    frames = []
    for c in picked:
        atoms = c["atoms"]
        atoms.info = {"round": r, "traj": c["traj"], "step": c["frame"] * interval, "max_forces_std": c["std"],
                      "temperature_K": c["temperature_K"]}
        atoms.arrays.pop("momenta", None)
        frames.append(atoms)
    out = _round_dir(work, r) / "selected.extxyz"
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz") if frames else tmp.write_text("")
    return {
        "candidates": len(cands), "selected": len(frames),
        "disagreement_mean_eV_A": float(stds.mean()) if len(stds) else None,
        "disagreement_median_eV_A": float(np.median(stds)) if len(stds) else None,
        "disagreement_max_eV_A": float(stds.max()) if len(stds) else None,
    }


def _selected(work: Path, r: int) -> list:
    import ase.io

    path = _round_dir(work, r) / "selected.extxyz"
    return ase.io.read(path, index=":") if path.stat().st_size else []


def _label(cfg: DictConfig, work: Path, r: int) -> dict[str, Any]:
    from nnp.labeling import label_structures

    t0 = time.time()
    frames = _selected(work, r)
    labels = label_structures(frames, OmegaConf.to_container(cfg.labeler, resolve=True),
                              _round_dir(work, r) / "labels.jsonl")
    failed = [{"index": lb.index, "step": frames[lb.index].info.get("step"), "traj": frames[lb.index].info.get("traj"),
               "reason": lb.reason} for lb in labels if not lb.ok]
    write_json(_round_dir(work, r) / "failed.json", {"failed": failed})
    for f in failed:
        console.print(f"[yellow]label failed[/] (round {r}, selected frame {f['index']}): {f['reason']}")
    return {"labeled": len(labels) - len(failed), "failed": len(failed), "label_s": round(time.time() - t0, 2)}


def _append(work: Path, r: int) -> None:
    from nnp.labeling import read_journal

    frames = _selected(work, r)
    labels = read_journal(_round_dir(work, r) / "labels.jsonl")
    rows = []
    for k, atoms in enumerate(frames):
        lb = labels.get(k)
        if lb is None or not lb.ok:
            continue
        origin = f"round {r} traj {atoms.info.get('traj')} step {atoms.info.get('step')} T {atoms.info.get('temperature_K')}"
        rows.append(Row(atoms.numbers, atoms.positions, lb.energy, lb.forces, origin=origin))
    if rows:
        append_rows(work / DATASET, rows, batch=f"round_{r:03d}")


# ---------------------------------------------------------------- report


def write_report(work: Path, state: State) -> None:
    """rounds.csv, rounds.json and rounds.png from the state (every round so far)."""
    from nnp.outputs import atomic_path

    rounds = [state.data["rounds"][k]["report"] for k in sorted(state.data["rounds"], key=int)]
    with atomic_path(work / "rounds.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for rep in rounds:
            w.writerow(["" if rep.get(c) is None else rep.get(c) for c in COLUMNS])
    write_json(work / "rounds.json", {"rounds": rounds, "units": {"energy": "eV", "forces": "eV/Angstrom", "time": "s"}})
    _plot(rounds, work / "rounds.png")


def _plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnp.outputs import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    test = [(x["labels"], x["test_forces_mae_eV_A"]) for x in rounds if x.get("test_forces_mae_eV_A") is not None]
    if test:
        a.plot(*zip(*test), "o-")
        a.set_ylabel("test force MAE (eV/Å)")
    else:
        a.text(0.5, 0.5, "no test_data given", ha="center", va="center", transform=a.transAxes)
    a.set_xlabel("labels")
    a.set_title("learning curve")
    dis = [(x["round"], x["disagreement_mean_eV_A"], x["disagreement_max_eV_A"]) for x in rounds
           if x.get("disagreement_mean_eV_A") is not None]
    if dis:
        rr, mean, mx = zip(*dis)
        b.plot(rr, mean, "o-", label="mean")
        b.plot(rr, mx, "s--", label="max")
        b.legend()
    b.set_xlabel("round")
    b.set_ylabel("max_forces_std of MD frames (eV/Å)")
    b.set_title("committee disagreement")
    save_figure(fig, path, dpi=100)


def _print_summary(state: State) -> None:
    def f(rep, key, fmt="{:.4g}"):
        v = rep.get(key)
        return "" if v is None else fmt.format(v)

    rows = []
    for k in sorted(state.data["rounds"], key=int):
        rep = state.data["rounds"][k]["report"]
        rows.append([k, f(rep, "labels", "{}"), f(rep, "test_forces_mae_eV_A"), f(rep, "disagreement_mean_eV_A"),
                     f(rep, "selected", "{}"), f(rep, "failed", "{}"), f(rep, "train_s", "{:.0f}"),
                     f(rep, "sample_s", "{:.0f}"), f(rep, "label_s", "{:.0f}")])
    console.print(table("active learning", ["round", "labels", "test F MAE (eV/Å)", "mean disagreement (eV/Å)",
                                           "selected", "failed", "train s", "sample s", "label s"], rows))


# ---------------------------------------------------------------- command


def _check(cfg: DictConfig) -> None:
    if int(cfg.ensemble.size) < 2:
        raise NNPError(f"ensemble.size={cfg.ensemble.size}: active learning needs a committee of at least 2 members")
    if cfg.selection.mode == "threshold" and cfg.md.uncertainty.threshold is None:
        raise NNPError("selection.mode=threshold needs md.uncertainty.threshold (eV/Å), e.g. md.uncertainty.threshold=0.2")


def run(cfg: DictConfig) -> dict[str, Any]:
    from nnp.data import open_dataset
    from nnp.data.ase_files import read_structures
    from nnp.labeling.run import check_labeler
    from nnp.train import _run_dir

    _check(cfg)
    check_labeler(OmegaConf.to_container(cfg.labeler, resolve=True))  # a labeler that cannot run: before any work
    seeds = read_structures(str(cfg.seeds))
    for k, atoms in enumerate(seeds):
        if atoms.pbc.any():
            raise NNPError(f"{cfg.seeds}: structure {k} is periodic; active-learn stores molecules and clusters (the ANI-1x layout has no cell)")
    work = _run_dir()
    work.mkdir(parents=True, exist_ok=True)
    state = State(work / STATE)
    if not state.data.get("init_rows"):
        dataset = open_dataset(OmegaConf.to_container(cfg.data, resolve=True))
        if not dataset.has_forces:
            raise NNPError(f"{cfg.data.path}: the initial data has no forces (data.forces_key); active learning trains on forces")
        append_rows(work / DATASET, _rows_from_dataset(dataset, f"init {cfg.data.path}"), batch="init")
        state.data["init_rows"] = count_rows(work / DATASET)
        state.save()
        console.print(f"work directory {work}: {state.data['init_rows']} initial structures in {work / DATASET}")
    rounds = int(cfg.rounds)
    for r in range(rounds + 1):
        last = r == rounds
        if not state.done(r, "train"):
            state.finish(r, "train", **_train(cfg, work, r), **_test_errors(cfg, work, r))
            write_report(work, state)
        if last:
            break
        if not state.done(r, "sample"):
            state.finish(r, "sample", **_sample(cfg, work, r, seeds, state))
        if not state.done(r, "select"):
            state.finish(r, "select", **_select(cfg, work, r, state))
            write_report(work, state)
        if not state.done(r, "label"):
            state.finish(r, "label", **_label(cfg, work, r))
            write_report(work, state)
        if not state.done(r, "append"):
            _append(work, r)
            state.finish(r, "append")
    write_report(work, state)
    _print_summary(state)
    console.print(f"[bold green]done[/]: {count_rows(work / DATASET)} structures in {work / DATASET}; "
                  f"last committee {_round_dir(work, rounds) / 'committee' / 'model.pt'}; report {work / 'rounds.csv'}")
    return {"work_dir": str(work), "rounds": [state.round(r)["report"] for r in range(rounds + 1)]}

"""Active learning against random selection: aspirin, GFN2-xTB labels from tblite.

    python benchmarks/active_learning_bench.py            # defaults: sized for ~20 min on a loaded 2-core machine
    python benchmarks/active_learning_bench.py --init 100 --per-round 100 --rounds 5 --members 4 --epochs 300   # the issue's full size

Both arms run ``nnp active-learn`` with the same data, seeds, model, training
settings, MD sampling and label budget; they differ only in
``selection.mode``: ``top_k`` (the frames where the committee's members
disagree most) against ``random`` (uniform picks from the same round's MD
frames of that arm's committee). Labels come from GFN2-xTB through tblite
(``labeler=xtb``), computed live for every selected frame.

- initial labels: ``--init`` frames spread evenly over
  ``../shared/data/aspirin-gfn2-500K.extxyz`` (500 K);
- seeds: two other frames of that file; MD at the ``--temperatures``;
- test set: a held-out GFN2-xTB trajectory at a higher temperature
  (``--test-temperature``, Langevin through ASE with tblite's calculator,
  made once and cached in benchmarks/runs/active_learning/), evaluated after
  every round (``test_data=``).

Writes benchmarks/results/active_learning.json (both learning curves, timings,
the labels active learning needed to reach the random arm's final error) and
active_learning.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("NNP_SHARED_DATA", ROOT.parent / "shared" / "data"))  # ../shared beside the checkout
ASPIRIN = SHARED / "aspirin-gfn2-500K.extxyz"
RUN = HERE / "runs" / "active_learning"
RESULTS = HERE / "results"


def prepare(args) -> tuple[Path, Path, Path]:
    import ase.io
    import numpy as np

    RUN.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(ASPIRIN, index=":")
    pick = np.linspace(0, len(frames) - 1, args.init).round().astype(int)
    init, seeds, test = RUN / f"init_{args.init}.extxyz", RUN / "seeds.extxyz", RUN / f"test_{args.test_temperature:.0f}K.extxyz"
    ase.io.write(init, [frames[i] for i in pick])
    ase.io.write(seeds, [frames[len(frames) // 3 + 5], frames[2 * len(frames) // 3 + 5]])
    if not test.exists():
        t0 = time.time()
        ase.io.write(test, gfn2_trajectory(frames[0], args.test_temperature, args.test_frames))
        print(f"test set: {args.test_frames} GFN2-xTB frames at {args.test_temperature} K in {time.time() - t0:.0f} s", flush=True)
    return init, seeds, test


def gfn2_trajectory(start, temperature: float, n_frames: int, every: int = 20, equilibrate: int = 400):
    """Langevin MD under GFN2-xTB (tblite); frames every ``every`` steps of 0.5 fs, with their labels."""
    import numpy as np
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tblite.ase import TBLite

    atoms = start.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(7))
    Stationary(atoms)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, rng=np.random.default_rng(8))
    dyn.run(equilibrate)
    out = []
    for _ in range(n_frames):
        dyn.run(every)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(frame)
    return out


def active_learn_cmd(args, mode: str, init: Path, seeds: Path, test: Path) -> list[str]:
    work = RUN / f"al_{mode}"
    cmd = [
        sys.executable, "-m", "nnp.cli", "active-learn", "data=ase", f"data.path={init}", "data.split.train=0.9",
        "data.split.val=0.1", "data.split.test=0.0", f"data.batch_size={args.batch_size}", f"seeds={seeds}",
        f"test_data={test}", "labeler=xtb", f"labeler.workers={args.workers}", "model=ani", f"optim.lr={args.lr}",
        f"model.hidden={args.hidden}", "model.hidden_per_element=null", f"ensemble.size={args.members}",
        f"rounds={args.rounds}", "trainer=cpu", f"trainer.max_epochs={args.epochs}", "early_stopping.patience=15",
        f"md.steps={args.steps}", "md.write_interval=10", f"md.uncertainty.min_interval={args.min_interval}",
        f"sampling.temperatures_K={args.temperatures}", f"sampling.trajectories={args.trajectories}",
        f"selection.mode={mode}", f"selection.max_per_round={args.per_round}", f"hydra.run.dir={work}",
    ]
    print("$ " + " ".join(cmd[2:]), flush=True)
    return cmd


def run_arms(args, init: Path, seeds: Path, test: Path) -> dict:
    """Both arms at once, one process each (``--sequential``: one after the other); logs in RUN/al_MODE.log."""
    arms, procs = {}, {}
    for mode in ("top_k", "random"):
        t0 = time.time()
        log = open(RUN / f"al_{mode}.log", "w")
        procs[mode] = (subprocess.Popen(active_learn_cmd(args, mode, init, seeds, test), cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")), t0, log)
        if args.sequential:
            procs[mode][0].wait()
    for mode, (proc, t0, log) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"the {mode} arm failed: see {RUN / f'al_{mode}.log'}")
        log.close()
        rounds = json.loads((RUN / f"al_{mode}" / "rounds.json").read_text())["rounds"]
        arms[mode] = {"wall_s": round(time.time() - t0, 1), "rounds": rounds}
    return arms


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a learning curve first reaches ``target`` (linear between rounds), or None."""
    for (n0, e0), (n1, e1) in zip(curve, curve[1:]):
        if e0 <= target:
            return float(n0)
        if e1 <= target:
            return n0 + (n1 - n0) * (e0 - target) / (e0 - e1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for mode, style in (("top_k", "o-"), ("random", "s--")):
        curve = result["curves"][mode]
        ax.plot([n for n, _ in curve], [e for _, e in curve], style, label=f"{mode} selection")
    ax.set_xlabel("GFN2-xTB labels")
    ax.set_ylabel(f"force MAE, held-out {result['settings']['test_temperature']:.0f} K trajectory (eV/Å)")
    ax.set_title("aspirin: active learning vs random selection")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", type=int, default=50)
    p.add_argument("--per-round", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sequential", action="store_true", help="run the two arms one after the other")
    p.add_argument("--hidden", default="[64,32]")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--trajectories", type=int, default=3)
    p.add_argument("--min-interval", type=int, default=20, help="MD steps between two picks from one trajectory")
    p.add_argument("--temperatures", default="[500,800]")
    p.add_argument("--test-temperature", type=float, default=800.0)
    p.add_argument("--test-frames", type=int, default=50)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--note", default="", help="free text stored with the results (e.g. how the run was interrupted and resumed)")
    args = p.parse_args()
    if not ASPIRIN.is_file():
        sys.exit(f"{ASPIRIN} not available (../shared is only beside CI and developer checkouts)")
    init, seeds, test = prepare(args)
    arms = run_arms(args, init, seeds, test)
    curves = {m: [(r["labels"], r["test_forces_mae_eV_A"]) for r in a["rounds"]] for m, a in arms.items()}
    final_random = curves["random"][-1][1]
    result = {
        "settings": {**vars(args), "labeler": "GFN2-xTB (tblite)", "model": f"ani hidden={args.hidden}",
                     "machine": "2 CPU cores shared with 7 other jobs (loaded): timings are indicative only"},
        "curves": curves,
        "final_forces_mae_eV_A": {m: c[-1][1] for m, c in curves.items()},
        "final_energy_mae_eV": {m: a["rounds"][-1]["test_energy_mae_eV"] for m, a in arms.items()},
        "labels_for_top_k_to_reach_random_final": labels_to_reach(curves["top_k"], final_random),
        "mean_disagreement_of_selected_rounds": {m: [r.get("disagreement_mean_eV_A") for r in a["rounds"]] for m, a in arms.items()},
        "seconds": {m: {"wall_this_invocation": a["wall_s"], "train": sum(r.get("train_s") or 0 for r in a["rounds"]),
                        "sample": sum(r.get("sample_s") or 0 for r in a["rounds"]),
                        "label": sum(r.get("label_s") or 0 for r in a["rounds"])} for m, a in arms.items()},
        "failed_labels": {m: sum(r.get("failed") or 0 for r in a["rounds"]) for m, a in arms.items()},
        "note": args.note,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "active_learning.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "active_learning.png")
    print(json.dumps({k: result[k] for k in ("curves", "labels_for_top_k_to_reach_random_final", "seconds")}, indent=1))


if __name__ == "__main__":
    main()

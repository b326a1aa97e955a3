"""Committees: how well the spread predicts the error, and what a committee costs.

    python benchmarks/committee_bench.py                 # train (once), evaluate, calibrate, time
    python benchmarks/committee_bench.py --skip-train    # reuse benchmarks/runs/committee_ani
    python benchmarks/committee_bench.py --only cost

Quality: a 5-member ANI committee trained with ``nnp train ensemble.size=5`` on
``../shared/data/chno-gfn2.h5`` split by molecule (``data.split.by=group``),
evaluated on the held-out molecules: Spearman correlation of the per-atom force
std with the force error, the miscalibration area, the scale factor fitted on
the validation molecules (``calibrate=true``), and the calibration plot.

Cost: a K-member committee against one of its members, measured in the same
process, alternating, median of repeats (this machine is noisy; ratios are what
count): batched energy + forces of the CHNO set (batches of 256) and MD steps/s
on aspirin (21 atoms, ASE velocity Verlet through NNPCalculator, one thread as
`nnp md` uses for small molecules). Writes benchmarks/results/committee.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
RUN = HERE / "runs" / "committee_ani"
RESULTS = HERE / "results" / "committee.json"


def nnp(*args: str) -> None:
    cmd = [sys.executable, "-m", "nnp.cli", *args]
    print("$ nnp " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def quality(args) -> dict:
    data = [
        "data=ani1x", f"data.path={SHARED / 'chno-gfn2.h5'}", "data.energy_key=gfn2.energy",
        "data.forces_key=gfn2.forces", "data.split.by=group", "data.num_workers=0",
    ]
    if not args.skip_train and not (RUN / "model.pt").is_file():
        nnp("train", *data, "model=ani", f"ensemble.size={args.members}", "trainer=cpu",
            f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}", f"hydra.run.dir={RUN}")
    model = RUN / "model.pt"
    raw = RUN / "eval_test_raw.json"
    nnp("evaluate", f"ckpt={model}", "split=test", f"output={raw}")
    calibrated_model = RUN / "committee_calibrated.pt"
    calibrated_model.write_bytes(model.read_bytes())
    cal = RUN / "eval_test_calibrated.json"
    nnp("evaluate", f"ckpt={calibrated_model}", "split=test", "calibrate=true", f"output={cal}")
    before, after = json.loads(raw.read_text()), json.loads(cal.read_text())
    return {
        "members": before["n_members"],
        "test_molecules_split": "data.split.by=group (held-out molecules)",
        "n_test_structures": before["n_structures"],
        "forces_mae_eV_A": before["forces_mae"],
        "energy_mae_eV": before["energy_mae"],
        "uncalibrated": before["uncertainty"],
        "calibration": after["calibration"],
        "calibrated": after["uncertainty"],
        "plot": _keep_plot(cal.with_name(cal.stem + "_calibration.png")),
    }


def _keep_plot(png: Path) -> str:
    """Copy the calibration plot beside the results (the run directory is not kept in git)."""
    kept = RESULTS.with_name("committee_calibration.png")
    kept.write_bytes(png.read_bytes())
    return str(kept.relative_to(ROOT))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost(args) -> dict:
    import ase.io
    import torch
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs
    from omegaconf import OmegaConf

    from nnp.calculator import NNPCalculator
    from nnp.committee import Committee
    from nnp.data import collate, open_dataset
    from nnp.inference import run_batch
    from nnp.potential import Potential

    torch.set_num_threads(args.threads)
    data_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "ani1x.yaml"))
    data_cfg.update(path=str(SHARED / "chno-gfn2.h5"), energy_key="gfn2.energy", forces_key="gfn2.forces")
    dataset = open_dataset(data_cfg)
    n = min(len(dataset), args.structures)
    batches = [collate(dataset.__getitems__(list(range(s, min(s + 256, n))))) for s in range(0, n, 256)]
    aspirin = ase.io.read(SHARED / "aspirin-gfn2-500K.extxyz", index="0")
    out: dict = {"threads": args.threads, "structures": n, "members": args.members}
    for name in args.models:
        model_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
        members = []
        for seed in range(args.members):
            torch.manual_seed(seed)
            members.append(Potential.build(model_cfg, dataset.elements(), None, 1.0).eval())
        committee = Committee(members)
        single = members[0]

        def predict(model):
            for b in batches:
                run_batch(model, b)

        def md(model, steps=args.md_steps):
            atoms = aspirin.copy()
            atoms.calc = NNPCalculator(model)
            VelocityVerlet(atoms, timestep=0.5 * fs).run(steps)

        rows = {"predict_s": {"single": [], "committee": []}, "md_steps_per_s": {"single": [], "committee": []}}
        predict(single), predict(committee), md(single, 5), md(committee, 5)  # warm up
        for _ in range(args.rounds):  # alternate, so both see the same machine load
            for label, model in (("single", single), ("committee", committee)):
                rows["predict_s"][label].append(_median_time(lambda m=model: predict(m), 1))
                rows["md_steps_per_s"][label].append(args.md_steps / _median_time(lambda m=model: md(m), 1))
        med = {k: {label: statistics.median(v) for label, v in d.items()} for k, d in rows.items()}
        out[name] = {
            "predict_s": med["predict_s"],
            "predict_cost_ratio": med["predict_s"]["committee"] / med["predict_s"]["single"],
            "md_steps_per_s": med["md_steps_per_s"],
            "md_cost_ratio": med["md_steps_per_s"]["single"] / med["md_steps_per_s"]["committee"],
            "shared_descriptor": committee.shared_descriptor,
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["quality", "cost"])
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--models", nargs="*", default=["ani", "schnet", "painn"])
    p.add_argument("--structures", type=int, default=2048)
    p.add_argument("--md-steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not (SHARED / "chno-gfn2.h5").is_file():
        print(f"{SHARED} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if "quality" in args.only:
        results["quality"] = quality(args)
    if "cost" in args.only:
        results["cost"] = cost(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

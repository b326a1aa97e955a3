"""NVE energy drift of aspirin in float32 and float64 (meV/atom/ps), same weights, same start.

    python benchmarks/md_drift_bench.py                 # 20 ps per dtype (40,000 steps of 0.5 fs)
    python benchmarks/md_drift_bench.py --ps 2 --repeat 2

Trains a small ANI model once (cached in benchmarks/.cache/drift_model/) on
../shared/data/aspirin-gfn2-500K.extxyz (GFN2-xTB, 500 K), or on the shipped
demo data when that file is absent, then runs ``nnp md`` NVE (velocity Verlet,
0.5 fs, velocities drawn at 300 K (``--temperature``) with seed 0) with the model in float32 and in
float64. The drift is the slope of a linear fit of the total energy per atom
against time (the drift ``nnp md`` reports); float32 runs are repeated
(``--repeat``) to show whether their drift is reproducible. Energies are summed
and logged in float64 in both cases, so the difference is the network's own
precision. Results: benchmarks/results/md_drift.json (medians and every run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "drift_model"
# ../shared beside the checkout (a worktree may sit one level deeper: NNP_SHARED=/path/to/shared/data)
ASPIRIN = Path(os.environ.get("NNP_SHARED", ROOT.parent / "shared" / "data")) / "aspirin-gfn2-500K.extxyz"


def train_model(epochs: int, cache: Path, frames: int) -> Path:
    model = cache / "model.pt"
    if model.is_file():
        return model
    cache.mkdir(parents=True, exist_ok=True)
    data = ["data=ase", f"data.path={ASPIRIN}"] if ASPIRIN.is_file() else ["data=demo"]
    cmd = [sys.executable, "-m", "nnp.cli", "train", *data, "model=ani", "model.hidden=[64,64]",
           "model.hidden_per_element=null", "trainer=cpu", f"trainer.max_epochs={epochs}", "data.batch_size=32",
           f"data.split.train={frames}", f"data.split.val={max(1, frames // 5)}", "data.split.test=null",
           "evaluate_test=false", f"hydra.run.dir={cache}"]
    print("training:", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return model


def run_md(model: Path, dtype: str, ps: float, tag: str, temperature: float) -> dict:
    from omegaconf import OmegaConf

    from nnp.md import run

    out = model.parent / f"nve_{dtype}_{tag}.extxyz"
    start = ASPIRIN if ASPIRIN.is_file() else ROOT / "datasets" / "aspirin.xyz"
    steps = int(round(ps * 2000))
    base = OmegaConf.load(ROOT / "conf" / "md.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([
        f"ckpt={model}", f"input={start}", f"output={out}", f"dtype={dtype}", "overwrite=true",
        "md.ensemble=nve", f"md.steps={steps}", "md.timestep_fs=0.5", f"md.temperature_K={temperature}", "md.seed=0",
        f"md.log_interval={max(1, steps // 2000)}", f"md.write_interval={max(1, steps // 20)}",
    ]))
    from nnp.errors import SafetyStop

    t0 = time.time()
    try:
        summary = run(cfg)
    except SafetyStop as stop:  # a model that is not good enough for this long a run: say so
        return {"dtype": dtype, "ps": ps, "steps": steps, "stopped": str(stop), "wall_s": time.time() - t0}
    return {
        "dtype": dtype, "ps": ps, "steps": steps,
        "drift_meV_per_atom_per_ps": summary["energy_drift_eV_per_atom_per_ps"] * 1000,
        "etot_std_meV_per_atom": summary["etot_std_eV_per_atom"] * 1000,
        "mean_temperature_K": summary["mean_temperature_K"],
        "steps_per_second": summary["steps_per_second"], "wall_s": time.time() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ps", type=float, default=20.0, help="simulated time per run (ps)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per dtype")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (first use only)")
    ap.add_argument("--frames", type=int, default=1600, help="training structures (first use only)")
    ap.add_argument("--temperature", type=float, default=300.0, help="initial velocities (K)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "md_drift.json")
    ap.add_argument("--cache", type=Path, default=CACHE, help="model and trajectories")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = train_model(args.epochs, args.cache, args.frames)
    runs = []
    for k in range(args.repeat):  # dtypes alternate, so machine load hits both alike
        for dtype in ("float32", "float64"):
            runs.append(run_md(model, dtype, args.ps, str(k), args.temperature))
            print(json.dumps(runs[-1]), flush=True)
    result = {
        "what": f"NVE drift of aspirin (21 atoms), nnp ANI model, 0.5 fs velocity Verlet from {args.temperature:g} K",
        "model": str(model), "data": str(ASPIRIN if ASPIRIN.is_file() else "datasets (demo)"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: timings are loaded-machine numbers)",
        "median": {
            dtype: {
                key: statistics.median([r[key] for r in runs if r["dtype"] == dtype and key in r] or [float("nan")])
                for key in ("drift_meV_per_atom_per_ps", "etot_std_meV_per_atom", "steps_per_second")
            }
            for dtype in ("float32", "float64")
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()

"""Steps/s of the same model and system through nnp md's engines (ase, lammps, openmm).

    python benchmarks/md_engines.py [--engines ase,lammps] [--sizes aspirin,2000,20000] [--json out.json]

For each system: NVE steps/s through each engine (``nnp.md.simulate``, the
safety checks on except min_distance, log every step), and the time spent in
the model (energy+forces) inside those same runs, so that each engine's
per-step cost besides the model (integration, coupling, checks, log) is
measured under the same load. Needs the engine's library
(``make test-lammps`` / ``make test-openmm`` build environments that have it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import torch
from ase.build import bulk
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnp import NNPCalculator, Potential  # noqa: E402
from nnp.md import simulate  # noqa: E402

MODEL = {"name": "schnet", "n_features": 64, "n_interactions": 2, "n_rbf": 16, "cutoff": 4.5}
STEPS = {"aspirin": 200, "2000": 10, "20000": 3}


def system(name: str):
    if name == "aspirin":
        atoms = ase.io.read(REPO / "datasets/aspirin.xyz")
        species, ref = [1, 6, 8], [-13.6, -1029.0, -2042.0]
    else:
        n = int(name)
        k = round((n / 4) ** (1 / 3))
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
        species, ref = [29], [-3.5]
    torch.manual_seed(0)
    return atoms, Potential.build(MODEL, species, atomref=ref, energy_scale=0.01)


class TimedCalculator(NNPCalculator):
    """The calculator, counting the seconds and calls spent in the model."""

    seconds = 0.0
    calls = 0

    def calculate(self, *args, **kwargs):
        t = time.perf_counter()
        super().calculate(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        self.calls += 1


def run(engine: str, atoms, model, steps: int, out: Path) -> dict:
    base = OmegaConf.load(REPO / "conf/md.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([
        "ckpt=unused", "input=unused", f"output={out / engine}.extxyz", f"md.steps={steps}", "md.timestep_fs=0.25",
        "md.log_interval=1", "md.write_interval=1000", f"md.engine={engine}",
        "md.min_distance=null",  # a random model does not hold aspirin's bonds: speed only
    ]))
    atoms = atoms.copy()
    calc = atoms.calc = TimedCalculator(model)
    summary = simulate(atoms, cfg)
    per_call = calc.seconds / calc.calls
    in_run = per_call * (calc.calls - 1)  # simulate evaluates the start structure before its clock starts
    wall = summary["wall_seconds"]
    return {"steps_per_s": summary["steps_per_second"], "model_ms_per_call": 1e3 * per_call,
            "model_calls": calc.calls, "other_ms_per_step": 1e3 * (wall - in_run) / steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="ase,lammps")
    ap.add_argument("--sizes", default="aspirin,2000,20000")
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: 200 aspirin, 10 / 3 for 2,000 / 20,000 Cu)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.sizes.split(","):
        atoms, model = system(name)
        steps = args.steps or STEPS.get(name, 10)
        row = {"system": name, "n_atoms": len(atoms), "steps": steps}
        with tempfile.TemporaryDirectory() as tmp:
            for engine in args.engines.split(","):
                for key, value in run(engine, atoms, model, steps, Path(tmp)).items():
                    row[f"{engine}_{key}"] = value
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    for r in rows:
        ratios = {e: r[f"{e}_steps_per_s"] / r["ase_steps_per_s"] for e in args.engines.split(",") if "ase_steps_per_s" in r}
        print(r["system"], r["n_atoms"], "steps/s ratio to ase:", {k: f"{v:.2f}" for k, v in ratios.items()})


if __name__ == "__main__":
    main()

"""The per-step cost of driving an engine, without the model: a calculator that returns zero
energy and forces, NVE through ``nnp md``'s loop (checks on, a log row every 10 steps) with
``md.engine=ase`` and each other engine. The difference is the coupling's own cost per step
(LAMMPS: one ``run 1``, the fix external callback, atoms matched by tag, positions, velocities
and box read back; OpenMM: one step and a getState).

    python benchmarks/engine_coupling.py [--engines ase,lammps] [--sizes 21,2048,16384]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnp.md import simulate  # noqa: E402


class Zero(Calculator):
    """No interaction: what is left of a step is the engine's and nnp md's own work."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    potential = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def steps_per_second(engine: str, n: int, steps: int, out: Path) -> float:
    k = max(1, round((n / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
    atoms.calc = Zero()
    base = OmegaConf.load(REPO / "conf/md.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([
        "ckpt=unused", "input=unused", f"output={out / engine}_{n}.extxyz", f"md.steps={steps}",
        "md.log_interval=10", "md.write_interval=100000", f"md.engine={engine}",
    ]))
    return float(simulate(atoms, cfg)["steps_per_second"]), len(atoms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="ase,lammps")
    ap.add_argument("--sizes", default="32,2048,16384")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            row = {}
            for engine in args.engines.split(","):
                sps, natoms = steps_per_second(engine, n, 300 if n < 1000 else 60, Path(tmp))
                row[engine] = 1e3 / sps
            print(json.dumps({"n_atoms": natoms, "ms_per_step": row,
                              "coupling_ms_per_step": {e: row[e] - row["ase"] for e in row if e != "ase"}}), flush=True)


if __name__ == "__main__":
    main()

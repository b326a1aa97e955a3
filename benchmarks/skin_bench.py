"""MD steps/s with and without neighbor-list reuse (skin), and nnp's neighbor list against vesin's.

    python benchmarks/skin_bench.py [--rounds 3] [--out benchmarks/results/skin.json]

MD: ASE velocity Verlet through NNPCalculator(skin=0) and NNPCalculator(skin=1.0),
alternating in every round (medians over rounds): aspirin (21 atoms, ANI and
SchNet) and a periodic 2,000-atom Cu cell (SchNet, PaiNN). Neighbor lists: one
search at the model's cutoff, nnp.neighbors.neighbor_list against
vesin.NeighborList (when installed) on the same structures. Untrained models,
float32, one thread; on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("NNP_SHARED_DATA", "/work/shared/data"))


def _structures():
    from ase.build import bulk, molecule
    from ase.io import read

    path = DATA / "aspirin-gfn2-500K.extxyz"
    aspirin = read(path, index=0) if path.is_file() else molecule("CH3CH2OH")
    copper = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 10, 10))
    copper.rattle(0.05, seed=0)
    return {"aspirin": aspirin, "cu_2000": copper}


def _potential(model: str, species: list[int]):
    from omegaconf import OmegaConf

    from nnp.potential import Potential

    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml"))
    if model != "ani":
        config.pop("hidden_per_element", None)
    torch.manual_seed(0)
    return Potential.build(config, species).eval()


def md_rate(atoms, pot, skin: float, steps: int) -> tuple[float, int]:
    """Steps/s of velocity Verlet (after one warm-up step) and how many lists were built."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from nnp import NNPCalculator

    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = NNPCalculator(pot, skin=skin)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.run(1)
    t0 = time.perf_counter()
    dyn.run(steps)
    rate = steps / (time.perf_counter() - t0)
    nl = atoms.calc.neighbors
    return rate, (nl.builds if nl is not None else steps + 1)


def neighbor_times(atoms, cutoff: float, repeats: int) -> dict:
    from nnp.neighbors import neighbor_list

    pos = torch.as_tensor(atoms.positions, dtype=torch.float32)
    cell = torch.as_tensor(atoms.cell.array, dtype=torch.float32)[None]
    pbc = torch.as_tensor(atoms.pbc)[None]
    idx_m = torch.zeros(len(atoms), dtype=torch.long)
    n_atoms = torch.tensor([len(atoms)])
    out: dict[str, float] = {}

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out["nnp_s"] = best(lambda: neighbor_list(pos, idx_m, n_atoms, cell, pbc, cutoff))
    try:
        import vesin
    except ImportError:
        return out
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    points = atoms.positions
    box = atoms.cell.array if atoms.pbc.all() else np.zeros((3, 3))
    periodic = bool(atoms.pbc.all())
    out["vesin_s"] = best(lambda: nl.compute(points, box, periodic, quantities="ijS"))
    out["vesin_version"] = vesin.__version__
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skin", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "skin.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    structures = _structures()
    cases = [("aspirin", "ani", 40), ("aspirin", "schnet", 40), ("cu_2000", "schnet", 4), ("cu_2000", "painn", 4)]
    rows = []
    for name, model, steps in cases:
        atoms = structures[name]
        pot = _potential(model, sorted(set(atoms.numbers.tolist())))
        rates: dict[float, list[float]] = {0.0: [], args.skin: []}
        builds = {}
        for _ in range(args.rounds):  # alternate within each round
            for skin in (0.0, args.skin):
                rate, built = md_rate(atoms, pot, skin, steps)
                rates[skin].append(rate)
                builds[skin] = built
        row = {
            "structure": name, "model": model, "steps": steps, "skin": args.skin,
            "steps_per_s_new_list": statistics.median(rates[0.0]), "steps_per_s_skin": statistics.median(rates[args.skin]),
            "speedup": statistics.median([b / a for a, b in zip(rates[0.0], rates[args.skin])]),
            "lists_built_with_skin": builds[args.skin], "rounds": args.rounds,
        }
        row["neighbors"] = neighbor_times(atoms, float(pot.cutoff), 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_average": os.getloadavg(), "threads": 1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

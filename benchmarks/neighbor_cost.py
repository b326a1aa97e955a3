"""Per-step neighbor-list cost: a new nnp list, a reused skin list (filtered to the cutoff), a new vesin list.

    python benchmarks/neighbor_cost.py      # needs vesin and ../shared/data (aspirin); one thread

Medians of 7 alternating rounds, in ms, and the ratios to a new nnp list.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def costs(atoms, cutoff: float, rounds: int = 7) -> dict[str, float]:
    import vesin

    from nnp.neighbor_skin import SkinNeighborList
    from nnp.neighbors import neighbor_list

    pos = torch.as_tensor(atoms.positions, dtype=torch.float32)
    cell = torch.as_tensor(atoms.cell.array, dtype=torch.float32)
    pbc = torch.as_tensor(atoms.pbc)
    idx = torch.zeros(len(atoms), dtype=torch.long)
    n = torch.tensor([len(atoms)])
    skin = SkinNeighborList(cutoff, 1.0)
    skin(pos, cell, pbc)  # built once; the timed calls reuse it
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    periodic = bool(atoms.pbc.all())
    box = atoms.cell.array if periodic else np.zeros((3, 3))
    fns = {
        "nnp_new": lambda: neighbor_list(pos, idx, n, cell[None], pbc[None], cutoff),
        "nnp_skin_reuse": lambda: skin(pos, cell, pbc),
        "vesin_new": lambda: nl.compute(atoms.positions, box, periodic, quantities="ijS"),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    from ase.build import bulk
    from ase.io import read

    torch.set_num_threads(1)
    copper = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 10, 10))
    copper.rattle(0.05, seed=0)
    aspirin = read("/work/shared/data/aspirin-gfn2-500K.extxyz", index=0)
    for name, atoms, cutoff in (("aspirin", aspirin, 5.2), ("cu_2000", copper, 5.0)):
        ms = costs(atoms, cutoff)
        ratios = {f"{k}_speedup": round(ms["nnp_new"] / v, 2) for k, v in ms.items() if k != "nnp_new"}
        print(name, {k: round(v, 3) for k, v in ms.items()}, ratios)


if __name__ == "__main__":
    main()

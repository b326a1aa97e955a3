"""Per-step neighbor-list cost: a new nnp list, a reused skin list (filtered to the cutoff), and a new vesin list.

Medians of 7 alternating rounds, one thread: python benchmarks/neighbor_cost.py (needs vesin and ../shared data)."""
import statistics
import time

import numpy as np
import torch
import vesin
from ase.build import bulk
from ase.io import read

from nnp.neighbor_skin import SkinNeighborList
from nnp.neighbors import neighbor_list

torch.set_num_threads(1)
cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 10, 10)); cu.rattle(0.05, seed=0)
asp = read("/work/shared/data/aspirin-gfn2-500K.extxyz", index=0)
for name, atoms, cutoff in (("aspirin", asp, 5.2), ("cu_2000", cu, 5.0)):
    pos = torch.as_tensor(atoms.positions, dtype=torch.float32); cell = torch.as_tensor(atoms.cell.array, dtype=torch.float32); pbc = torch.as_tensor(atoms.pbc)
    idx = torch.zeros(len(atoms), dtype=torch.long); n = torch.tensor([len(atoms)])
    skin = SkinNeighborList(cutoff, 1.0); skin(pos, cell, pbc)
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    box = atoms.cell.array if atoms.pbc.all() else np.zeros((3, 3))
    fns = {"nnp_new": lambda: neighbor_list(pos, idx, n, cell[None], pbc[None], cutoff),
           "nnp_skin_reuse": lambda: skin(pos, cell, pbc),
           "vesin_new": lambda: nl.compute(atoms.positions, box, bool(atoms.pbc.all()), quantities="ijS")}
    res = {k: [] for k in fns}
    for _ in range(7):
        for k, f in fns.items():
            t = time.perf_counter(); f(); res[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
    print(name, {k: round(v, 3) for k, v in med.items()}, "ms; skin reuse / new:", round(med["nnp_new"] / med["nnp_skin_reuse"], 1), "x; vesin / nnp new:", round(med["nnp_new"] / med["vesin_new"], 1), "x")

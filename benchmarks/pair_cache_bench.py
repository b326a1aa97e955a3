"""Training throughput with each structure's neighbor pairs cached across epochs (nnp.data.pair_cache).

SchNet and PaiNN sized like the SchNetPack models of the suite (128 features,
3 interactions, 5 Å), and ANI as shipped (``--models``), float32, on the suite's aspirin (batch 32) and CHNO
(batch 64) sets (benchmarks/prepare.py, from ../shared/data). Each timed step
is what a training step costs with the data pipeline: collate the batch's
samples, forward + force loss + backward + AdamW step.

- ``search``: samples without pairs; the potential searches them every step (before).
- ``cached``: samples from :class:`~nnp.data.pair_cache.PairCachedDataset` after its first
  epoch; collate concatenates the cached pairs (after).

The two run interleaved (alternating order) in the same process, ``--rounds``
rounds of ``--steps`` steps each; medians of the per-round means, and the
min-max of the per-round ratios (CPU time of the process, one thread: other
jobs on a shared machine disturb it less than wall time). Also the cache's memory per pair and per
structure and the time of the neighbor search alone. Results in
``results/pair_cache.json``.

    OMP_NUM_THREADS=1 python benchmarks/pair_cache_bench.py [--rounds 5 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from prepare import aspirin_structures, chno_structures  # noqa: E402

from nnp import keys  # noqa: E402
from nnp.data.collate import collate  # noqa: E402
from nnp.data.pair_cache import PairCachedDataset  # noqa: E402
from nnp.inference import batch_to  # noqa: E402
from nnp.neighbors import neighbor_list  # noqa: E402
from nnp.potential import Potential  # noqa: E402
from nnp.training.loss import EnergyForceLoss  # noqa: E402

SIZE = {"n_features": 128, "n_interactions": 3, "cutoff": 5.0}


def model_config(model: str) -> dict:
    """SchNet/PaiNN at the suite's SchNetPack sizes; others (ani) as shipped in conf/model."""
    if model in ("schnet", "painn"):
        return {"name": model, **SIZE}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(HERE.parent / "conf" / "model" / f"{model}.yaml"), resolve=True)


def samples_of(structures: list[dict]) -> list[dict]:
    return [{keys.Z: s["Z"], keys.R: s["R"], keys.CELL: np.zeros((3, 3)), keys.PBC: np.zeros(3, dtype=bool),
             keys.STRUCTURE_ID: k, keys.ENERGY: s["energy"], keys.FORCES: s["forces"]} for k, s in enumerate(structures)]


def case(model: str, samples: list[dict], batch_size: int, rounds: int, steps: int) -> dict:
    species = sorted({int(z) for s in samples for z in s[keys.Z]})
    torch.manual_seed(0)
    pot = Potential.build(model_config(model), species).float().train()
    loss_fn = EnergyForceLoss()
    opt = torch.optim.AdamW(pot.parameters(), lr=1e-4)
    cached = PairCachedDataset(samples, pot.cutoff)
    t0 = time.perf_counter()
    for k in range(len(samples)):  # the first epoch fills the cache
        cached[k]
    fill_s = time.perf_counter() - t0
    n_batches = len(samples) // batch_size
    sources = {"search": lambda k: samples[k], "cached": cached.__getitem__}
    state = {"b": 0}

    def step(get) -> None:
        b = state["b"] % n_batches
        state["b"] += 1
        batch = batch_to(collate([get(k) for k in range(b * batch_size, (b + 1) * batch_size)]), "cpu", torch.float32)
        pred = pot(batch, compute_forces=True, create_graph=True)
        loss, _ = loss_fn(pred, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name in sources:  # warm-up
        step(sources[name])
    # CPU time of this process (one thread): less disturbed by other jobs on a shared machine than wall time
    times: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(rounds):
        for name in (list(sources) if r % 2 == 0 else list(sources)[::-1]):
            t0 = time.process_time()
            for _ in range(steps):
                step(sources[name])
            times[name].append((time.process_time() - t0) / steps)

    def per_call_ms(fn, reps: int = 30) -> float:
        runs = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(reps):
                fn()
            runs.append((time.process_time() - t0) / reps * 1e3)
        return statistics.median(runs)

    # the parts the cache changes, alone: the neighbor search it removes from each step, and collate's extra work
    first = list(range(batch_size))
    batch = batch_to(collate([samples[k] for k in first]), "cpu", torch.float32)
    search_ms = per_call_ms(lambda: neighbor_list(batch[keys.R], batch[keys.IDX_M], batch[keys.N_ATOMS],
                                                  batch[keys.CELL], batch[keys.PBC], pot.cutoff))
    collate_ms = {name: per_call_ms(lambda get=get: collate([get(k) for k in first])) for name, get in sources.items()}
    n_pairs = sum(e[0].shape[1] for e in cached._cache.values())
    ratios = [a / b for a, b in zip(times["search"], times["cached"])]
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "model": model, "batch_size": batch_size, "structures": len(samples),
        "step_ms": {name: 1e3 * v for name, v in med.items()},
        "conf_per_s": {name: batch_size / v for name, v in med.items()},
        "speedup_median": med["search"] / med["cached"], "speedup_round_min": min(ratios), "speedup_round_max": max(ratios),
        "neighbor_search_ms_per_batch": search_ms, "collate_ms_per_batch": collate_ms,
        "expected_speedup_from_parts": 1 / (1 - (search_ms - collate_ms["cached"] + collate_ms["search"]) / (1e3 * med["search"])),
        "cache_fill_s": fill_s, "cache_bytes": cached.nbytes, "cache_pairs": n_pairs,
        "bytes_per_structure": cached.nbytes / len(samples), "array_bytes_per_pair": 4.0,
        "rounds": rounds, "steps_per_round": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--count", type=int, default=256, help="structures per set")
    p.add_argument("--models", nargs="*", default=["schnet", "painn", "ani"])
    p.add_argument("--out", default=str(HERE / "results" / "pair_cache.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(torch.get_num_threads()))
    sets = {"aspirin": (samples_of(aspirin_structures(args.count)), 32), "chno": (samples_of(chno_structures(args.count)), 64)}
    results = []
    for dataset, (samples, batch_size) in sets.items():
        for model in args.models:
            res = {"dataset": dataset, **case(model, samples, batch_size, args.rounds, args.steps)}
            results.append(res)
            print(f"{model:7s} {dataset:8s} batch {batch_size}: search {res['conf_per_s']['search']:7.1f} conf/s, "
                  f"cached {res['conf_per_s']['cached']:7.1f} conf/s, x{res['speedup_median']:.2f} "
                  f"(rounds {res['speedup_round_min']:.2f}-{res['speedup_round_max']:.2f}); neighbor search "
                  f"{res['neighbor_search_ms_per_batch']:.1f} ms/batch, collate {res['collate_ms_per_batch']['search']:.1f} -> "
                  f"{res['collate_ms_per_batch']['cached']:.1f} ms (parts: x{res['expected_speedup_from_parts']:.3f}); cache {res['bytes_per_structure']:.0f} B/structure, "
                  f"{res['cache_pairs'] / res['structures']:.0f} pairs/structure", flush=True)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine_note": "shared, loaded 2-core machine"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

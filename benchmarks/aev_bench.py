"""ANI descriptor benchmark: where a 256-molecule batch's time goes, and nnp against TorchANI, at 1 thread and all cores.

    python benchmarks/aev_bench.py [--rounds 3] [--threads 1 2] [--training]

Per batch of 256 CHNO molecules (benchmarks/.cache/chno.npz, prepare.py), in
this process: neighbor list, AEV forward + backward (the fused path on the
compiled kernel, on torch ops, and the autograd reference), the element
networks forward + input gradient, and one GEMM of the networks' shapes
(atoms x AEV length x first layer): the networks' FLOPs over that GEMM's
rate say how close ANI inference is to the limit the networks set.
In worker processes (run_all.py's): energy + forces of the whole batch, nnp
fused and reference against TorchANI's TorchScript and eager models; with
``--training``, ANI training steps on the CHNO set against TorchANI's recipe.
Rounds alternate the order; numbers are medians over rounds; results in
benchmarks/results/aev.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "workers"))
sys.path.insert(0, str(HERE.parent))

import prepare  # noqa: E402
import run_all  # noqa: E402


def median_ms(fn, repeats: int = 9, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def parts(threads: int) -> dict:
    """Milliseconds per 256-molecule batch of each part, nnp, in this process."""
    import torch
    from common import batches, load_npz, split_structures
    from nnp_worker import build, to_batch

    from nnp import keys
    from nnp.models import aev_native
    from nnp.potential import pair_inputs

    torch.set_num_threads(threads)
    structures = split_structures(load_npz("chno"))
    pot = build("ani", structures).eval()
    batch = to_batch(batches(structures, 256)[0])
    species = pot.species_of(batch[keys.Z])
    aev = pot.model.aev
    with torch.no_grad():
        inputs, _, _ = pair_inputs(batch, species, pot.cutoff, False, False)
    pairs, vectors = inputs[keys.PAIRS], inputs[keys.PAIR_VECTORS]

    def descriptor():
        v = vectors.clone().requires_grad_(True)
        features = aev(species, pairs, v, torch.linalg.norm(v, dim=-1))
        torch.autograd.grad([features], [v], [torch.ones_like(features)])

    out: dict = {"threads": threads, "atoms": int(species.shape[0]), "pairs": int(pairs.shape[1])}
    out["neighbors_ms"] = median_ms(lambda: pair_inputs(batch, species, pot.cutoff, True, False))
    native = aev_native.library() is not None
    for label, fused, use_native in (("aev_fused_native_ms", True, True), ("aev_fused_torch_ms", True, False),
                                     ("aev_reference_ms", False, False)):
        if use_native and not native:
            continue
        aev.fused = fused
        saved = aev_native.library
        if not use_native:
            aev_native.library = lambda: None
        try:
            out[label] = median_ms(descriptor)
        finally:
            aev_native.library = saved
    aev.fused = True
    features = aev(species, pairs, vectors, torch.linalg.norm(vectors, dim=-1)).detach()

    def networks():
        x = features.clone().requires_grad_(True)
        torch.autograd.grad([pot.model.networks(x, species).sum()], [x])

    out["networks_ms"] = median_ms(networks)
    out["full_ms"] = median_ms(lambda: pot(batch, compute_forces=True))
    # the networks' multiply-adds: forward and input gradient, every layer (the last is a dot product)
    widths = [aev.length] + [m.out_features for m in pot.model.networks.nets[0] if isinstance(m, torch.nn.Linear)]
    flops = 2 * 2 * features.shape[0] * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    a = torch.randn(features.shape[0], widths[0])
    w = torch.randn(widths[0], widths[1])
    gemm_s = median_ms(lambda: a @ w) / 1e3
    out["gemm_gflops"] = 2 * a.shape[0] * a.shape[1] * w.shape[1] / gemm_s / 1e9
    out["networks_floor_ms"] = 1e3 * flops / (out["gemm_gflops"] * 1e9)
    out["atoms_per_s"] = out["atoms"] / (out["full_ms"] / 1e3)
    out["atoms_per_s_at_gemm_limit"] = out["atoms"] / (out["networks_floor_ms"] / 1e3)
    out["fraction_of_gemm_limit"] = out["atoms_per_s"] / out["atoms_per_s_at_gemm_limit"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--training", action="store_true", help="also ANI training steps vs TorchANI's recipe")
    p.add_argument("--skip-peers", action="store_true")
    args = p.parse_args()
    prepare.ensure(["chno"])
    plan = [("nnp", {}), ("nnp", {"fused": False}), ("torchani", {"jit": True}), ("torchani", {})]
    if args.skip_peers:
        plan = plan[:2]
    runs: dict = {}
    for r in range(args.rounds):
        for threads in args.threads:
            wargs = SimpleNamespace(threads=threads, repeats=args.repeats, quick=False)
            runs.setdefault(f"parts@{threads}", []).append(parts(threads))
            cases = [("ani_batch", {"batch_size": 256})]
            if args.training:
                cases.append(("train", {"dataset": "chno", "batch_size": 64, "model": "ani"}))
            for case, params in cases:
                for fw, variant in (plan if r % 2 == 0 else plan[::-1]):
                    if case == "train" and fw == "torchani" and variant:
                        continue  # the recipe runs eager
                    res = run_all.run_worker(fw, case, {**params, **variant}, wargs, 900)
                    key = f"{case}@{threads}:{fw}:{json.dumps(variant, sort_keys=True)}"
                    runs.setdefault(key, []).append(res.get("items_per_s", float("nan")))
                    print(key, res.get("items_per_s", res.get("error")), flush=True)
    summary: dict = {"load_avg_end": os.getloadavg(), "rounds": args.rounds}
    for key, values in runs.items():
        if key.startswith("parts@"):
            summary[key] = {k: statistics.median(v[k] for v in values) for k in values[0]}
        else:
            summary[key] = {"median": statistics.median(values), "all": values}
    for threads in args.threads:
        for case in ("ani_batch", "train"):
            ours = summary.get(f"{case}@{threads}:nnp:{{}}")
            for peer in ('torchani:{"jit": true}', "torchani:{}", 'nnp:{"fused": false}'):
                theirs = summary.get(f"{case}@{threads}:{peer}")
                if ours and theirs:
                    summary[f"ratio {case}@{threads} vs {peer}"] = ours["median"] / theirs["median"]
    out = HERE / "results" / "aev.json"
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

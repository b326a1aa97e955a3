"""ANI descriptor benchmark: where a 256-molecule batch's time goes, and nnp against TorchANI, at 1 thread and all cores.

    python benchmarks/aev_bench.py [--rounds 11] [--threads 1 2] [--training]

Everything runs in ONE process, interleaved call by call (round r times every
variant once, in an order that rotates each round), so a shared, loaded
machine slows every variant alike; each number is the median over rounds.
TorchANI is imported from its benchmark venv (benchmarks/.venvs/torchani, the
same torch 2.13 as nnp) and built as in workers/torchani_worker.py.

Per batch of 256 CHNO molecules (benchmarks/.cache/chno.npz, prepare.py):
energy + forces, nnp (fused descriptor: compiled kernel; and the reference
autograd path) against TorchANI's TorchScript and eager models; the parts of
nnp's batch: neighbor list, AEV forward + backward (fused on the compiled
kernel, fused on torch ops, autograd reference), element networks forward +
input gradient (autograd, and the closed form inference runs); and one GEMM of the networks' first-layer shape: the
networks' FLOPs at that GEMM's rate give the atoms/s limit the networks set,
and nnp's atoms/s is reported as a fraction of it. ``--training``: ANI
training steps on the CHNO set (batch 64, forces in the loss) against
TorchANI's recipe, the two alternating. Results: benchmarks/results/aev.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "workers"))
sys.path.insert(0, str(HERE.parent))

import prepare  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(variants: dict, rounds: int) -> dict:
    """name -> seconds of one call per round, the variants called in turn, order rotating by round."""
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
        variants[name]()
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(variants[name]))
    return times


def ratio_interval(theirs: list, ours: list) -> dict:
    """Median and 90% interval (5th to 95th percentile) of the per-round ratios theirs / ours:
    the two were timed back to back in each round, so each ratio shares the round's load."""
    ratios = sorted(t / o for t, o in zip(theirs, ours))
    pick = lambda q: ratios[min(len(ratios) - 1, max(0, round(q * (len(ratios) - 1))))]  # noqa: E731
    return {"median": statistics.median(ratios), "low": pick(0.05), "high": pick(0.95), "rounds": len(ratios)}


def torchani_side(structures, batch_size: int):
    """TorchANI's jit and eager energy + forces on the same batches (None when its venv is missing)."""
    found = glob.glob(str(HERE / ".venvs" / "torchani" / "lib" / "python*" / "site-packages"))
    if not found:
        return None
    sys.path.append(found[0])  # after nnp's own: torch stays nnp's (the same version)
    import torchani_worker as tw
    from common import batches

    inputs = [tw.padded(b)[:2] for b in batches(structures, batch_size)][:4]
    out = {}
    for label, jit in (("torchani_jit", True), ("torchani_eager", False)):
        model = tw.build(tw.symbols_of(structures), "all_pairs", jit)
        state = {"k": 0}

        def step(model=model, state=state):
            species, coords = inputs[state["k"] % len(inputs)]
            state["k"] += 1
            tw.energy_forces(model, species, coords)

        out[label] = step
    return out


def batch_case(threads: int, rounds: int, with_peer: bool) -> dict:
    import torch
    from common import batches, load_npz, split_structures
    from nnp_worker import build, to_batch

    from nnp import keys
    from nnp.models import aev_native
    from nnp.potential import pair_inputs

    torch.set_num_threads(threads)
    structures = split_structures(load_npz("chno"))
    pot = build("ani", structures).eval()
    aev = pot.model.aev
    data = [to_batch(b) for b in batches(structures, 256)][:4]
    state = {"k": 0}

    def full(fused: bool):
        def step():
            aev.fused = fused
            pot(data[state["k"] % len(data)], compute_forces=True)
            state["k"] += 1
        return step

    variants = {"nnp_fused": full(True), "nnp_reference": full(False)}
    peer = torchani_side(structures, 256) if with_peer else None
    variants.update(peer or {})
    rounds_s = interleaved(variants, rounds)
    whole = {k: statistics.median(v) for k, v in rounds_s.items()}
    out: dict = {"threads": threads, "batch_ms": {k: 1e3 * v for k, v in whole.items()}}
    out["molecules_per_s"] = {k: 256 / v for k, v in whole.items()}
    for peer_name in ("torchani_jit", "torchani_eager", "nnp_reference"):
        if peer_name in whole:
            out[f"ratio_vs_{peer_name}"] = ratio_interval(rounds_s[peer_name], rounds_s["nnp_fused"])

    # the parts of nnp's batch (the first batch)
    batch = data[0]
    species = pot.species_of(batch[keys.Z])
    with torch.no_grad():
        inputs, _, _ = pair_inputs(batch, species, pot.cutoff, False, False)
    pairs, vectors = inputs[keys.PAIRS], inputs[keys.PAIR_VECTORS]
    native = aev_native.library()

    def descriptor(fused: bool, use_native: bool):
        def step():
            aev.fused = fused
            aev_native._state["lib"] = native if use_native else None
            try:
                v = vectors.clone().requires_grad_(True)
                features = aev(species, pairs, v, torch.linalg.norm(v, dim=-1))
                torch.autograd.grad([features], [v], [torch.ones_like(features)])
            finally:
                aev_native._state["lib"] = native
        return step

    aev.fused = True
    features = aev(species, pairs, vectors, torch.linalg.norm(vectors, dim=-1)).detach()

    def networks():
        x = features.clone().requires_grad_(True)
        torch.autograd.grad([pot.model.networks(x, species).sum()], [x])

    widths = [aev.length] + [m.out_features for m in pot.model.networks.nets[0] if isinstance(m, torch.nn.Linear)]
    a = torch.randn(features.shape[0], widths[0])
    w = torch.randn(widths[0], widths[1])
    parts = {
        "neighbors": lambda: pair_inputs(batch, species, pot.cutoff, True, False),
        "aev_fused_torch": descriptor(True, False),
        "aev_reference": descriptor(False, False),
        "networks": networks,
        # what inference runs (nnp.models.pair_gradient): the chain rule written out, no graph
        "networks_closed_form": lambda: pot.model.networks.value_and_input_gradient(features, species),
        "gemm": lambda: a @ w,
    }
    if native is not None:
        parts["aev_fused_native"] = descriptor(True, True)
    measured = {k: statistics.median(v) for k, v in interleaved(parts, rounds).items()}
    gemm_s = measured.pop("gemm")
    out["parts_ms"] = {k: 1e3 * v for k, v in measured.items()}
    out["atoms"], out["pairs"] = int(species.shape[0]), int(pairs.shape[1])
    out["gemm_gflops"] = 2 * a.shape[0] * a.shape[1] * w.shape[1] / gemm_s / 1e9
    # forward and input gradient of every layer: 2 x 2 x atoms x sum(w_in x w_out) FLOPs
    flops = 4 * features.shape[0] * sum(x * y for x, y in zip(widths[:-1], widths[1:]))
    limit = out["atoms"] / (flops / (out["gemm_gflops"] * 1e9))
    out["atoms_per_s"] = out["atoms"] * out["molecules_per_s"]["nnp_fused"] / 256
    out["atoms_per_s_gemm_limit"] = limit
    out["fraction_of_gemm_limit"] = out["atoms_per_s"] / limit
    return out


def training_case(threads: int, rounds: int) -> dict:
    """ANI training on CHNO (batch 64): nnp's step against TorchANI's recipe, alternating whole measurements."""
    import torch

    found = glob.glob(str(HERE / ".venvs" / "torchani" / "lib" / "python*" / "site-packages"))
    if not found:
        return {"error": "no TorchANI venv"}
    if found[0] not in sys.path:
        sys.path.append(found[0])
    import nnp_worker
    import torchani_worker

    torch.set_num_threads(threads)
    rates: dict = {"nnp": [], "torchani": []}
    for r in range(rounds):
        order = [("nnp", nnp_worker), ("torchani", torchani_worker)]
        for name, worker in order if r % 2 == 0 else order[::-1]:
            rates[name].append(worker.train(3, "chno", 64)["items_per_s"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"threads": threads, "conformations_per_s": med, "all": rates, "ratio_vs_torchani": med["nnp"] / med["torchani"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--training", action="store_true", help="also ANI training vs TorchANI's recipe")
    p.add_argument("--training-rounds", type=int, default=4)
    p.add_argument("--skip-peers", action="store_true")
    args = p.parse_args()
    prepare.ensure(["chno"])
    summary: dict = {"load_avg_start": os.getloadavg(), "rounds": args.rounds}
    for threads in args.threads:
        summary[f"batch@{threads}"] = res = batch_case(threads, args.rounds, not args.skip_peers)
        print(json.dumps(res, indent=1), flush=True)
    if args.training:
        for threads in args.threads:
            summary[f"training@{threads}"] = res = training_case(threads, args.training_rounds)
            print(json.dumps(res, indent=1), flush=True)
    summary["load_avg_end"] = os.getloadavg()
    out = HERE / "results" / "aev.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Committees with energy terms: what computing the shared terms once saves.

    python benchmarks/committee_terms_bench.py [--members 5] [--repeats 7]

A K-member committee of small ANI models with ``terms`` (zbl + d3 shared by the
members, coulomb per member) on a batch of the demo CHNO molecules
(datasets/chno-mini.h5), energy + forces, timed in the same process,
alternating, median of repeats (ratios are what count on a loaded machine):

- shared: zbl and d3 computed once for the committee (the default);
- per member: every member computes them (``committee.share_terms = False``);
- generic: the ANI fast path off (``committee.shared_descriptor = False``);
- one member alone (the peer every committee is compared to).

Writes benchmarks/results/committee_terms.json (one entry per term set; ``--no-d3``: zbl + coulomb).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import h5py
import torch
from ase import Atoms

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from nnp.committee import Committee  # noqa: E402
from nnp.data.collate import atoms_to_sample, collate  # noqa: E402
from nnp.inference import batch_to  # noqa: E402
from nnp.potential import Potential  # noqa: E402

ANI = {"name": "ani", "hidden": [64, 32]}


def structures(n: int) -> list[Atoms]:
    out = []
    with h5py.File(ROOT / "datasets" / "chno-mini.h5", "r") as f:
        for name in sorted(f.keys()):
            z = f[name]["atomic_numbers"][()]
            for xyz in f[name]["coordinates"][:2]:
                out.append(Atoms(numbers=z, positions=xyz))
                if len(out) == n:
                    return out
    return out


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--structures", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-d3", action="store_true", help="zbl + coulomb only (d3 needs pip install 'nnp[d3]')")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    terms = {"zbl": {}, "coulomb": {"hidden": [16]}}
    try:
        import dftd3.interface  # noqa: F401

        if not args.no_d3:
            terms["d3"] = {"functional": "wb97x"}
    except ImportError:
        pass
    frames = structures(args.structures)
    batch = batch_to(collate([atoms_to_sample(a) for a in frames]), "cpu", torch.float32)
    species = sorted({int(z) for a in frames for z in a.numbers})
    members = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        members.append(Potential.build(ANI, species, terms=terms).eval())
    committee = Committee(members)

    def run(shared: bool, fast: bool):
        def go():
            committee.share_terms, committee.shared_descriptor = shared, fast
            committee(dict(batch))
        return go

    cases = {
        "shared terms (fast ANI path)": run(True, True),
        "per-member terms (fast ANI path)": run(False, True),
        "shared terms (generic path)": run(True, False),
        "per-member terms (generic path)": run(False, False),
        "one member": lambda: members[0](dict(batch)),
    }
    for fn in cases.values():  # warm up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # alternate, so machine load hits every case alike
        for name, fn in cases.items():
            samples[name] += timed(fn, 1)
    medians = {name: statistics.median(t) for name, t in samples.items()}
    peer = medians["one member"]
    result = {
        "members": args.members,
        "terms": sorted(terms),
        "structures": len(frames),
        "atoms": int(batch["n_atoms"].sum()),
        "median_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
        "ratio_to_one_member": {k: round(v / peer, 2) for k, v in medians.items()},
        "saving_shared_vs_per_member_fast": round(1 - medians["shared terms (fast ANI path)"] / medians["per-member terms (fast ANI path)"], 3),
        "saving_shared_vs_per_member_generic": round(1 - medians["shared terms (generic path)"] / medians["per-member terms (generic path)"], 3),
        "note": "one thread, energy + forces, medians of alternating repeats on a shared (loaded) machine",
    }
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "committee_terms.json"
    out.parent.mkdir(exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous["+".join(sorted(terms))] = result  # one entry per term set
    out.write_text(json.dumps(previous, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Single points with forces at 10^3, 10^4, 10^5 atoms: time and peak memory per architecture.

    python benchmarks/scale_bench.py                    # all four models, 10^3..10^5 atoms
    python benchmarks/scale_bench.py --models ani --sizes 1000 10000 --out /tmp/scale.json

Each (model, size, path) runs in its own process, so its peak resident memory
(VmHWM) is its own. Two paths, interleaved at every size:

- ``chunked``: what nnp does (ANI forward + backward per chunk of center atoms,
  nnp/models/pair_gradient.py; SchNet, PaiNN, HIP-NN with per-pair work in
  chunks recomputed in the backward, nnp/nn/chunks.py);
- ``whole``: nnp's previous path, the reference: one autograd graph of the
  whole system (ANI: AEVs computed in chunks, one graph; message passing: no
  recomputation). Skipped at 10^5 atoms by default (SchNet's
  needs more than this machine's 24 GB; ``--whole-max`` raises the limit).

Systems: ANI on a box of small CHNO molecules at liquid density (no cell,
benchmarks/prepare.py); SchNet, PaiNN, HIP-NN on rattled periodic fcc copper.
Models are untrained, full size (conf/model/*.yaml). The cost exponent k of
t ~ N^k is fitted over the sizes measured. Timings on a shared machine: read
the chunked/whole ratios measured in the same run, and the CPU times (``cpu_s``,
the process's own, 1 thread), which waiting for a shared core does not inflate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COPPER_REPEATS = {1000: (5, 5, 10), 10000: (10, 10, 25), 100000: (25, 25, 40)}


def _system(model: str, n: int):
    """(atomic numbers, positions, cell, pbc) of about n atoms."""
    import numpy as np

    if model == "ani":
        sys.path.insert(0, str(HERE))
        import prepare

        prepare.ensure([f"box_{n}"], log=lambda *_: None)
        with np.load(prepare.CACHE / f"box_{n}.npz") as data:
            return data["Z"], data["R"], np.zeros((3, 3)), np.zeros(3, dtype=bool)
    from ase.build import bulk

    repeat = COPPER_REPEATS.get(n) or (max(1, round((n / 4) ** (1 / 3))),) * 3
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=0)
    return atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc


def worker(model: str, n: int, path: str, repeats: int) -> dict:
    """One process: build, evaluate ``repeats`` single points, report time and peak memory."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from nnp import keys
    from nnp.potential import Potential

    z, r, cell, pbc = _system(model, n)
    species = sorted({int(v) for v in z})
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml"))
    if model != "ani":
        config.pop("hidden_per_element", None)
    torch.manual_seed(0)
    pot = Potential.build(config, species).eval()
    if path == "chunked":  # chunked at every size (nnp switches above a model-specific size)
        if model == "ani":
            pot.model.backward_chunk_above = 0
        else:
            pot.model.chunk_above = 0
    if path == "whole":
        if model == "ani":
            pot.train()  # nnp's previous path: AEVs in chunks, one graph (ANI has no train-only layers)
        else:
            pot.model.chunk_above = 1 << 40  # message passing: no recomputation
            if hasattr(pot.model, "fused_above"):  # (nor chunks with an analytic backward, in eval mode)
                pot.model.fused_above = 1 << 40
    batch = {
        keys.Z: torch.as_tensor(np.asarray(z), dtype=torch.long),
        keys.R: torch.as_tensor(np.asarray(r), dtype=torch.float32),
        keys.IDX_M: torch.zeros(len(z), dtype=torch.long),
        keys.N_ATOMS: torch.tensor([len(z)]),
        keys.CELL: torch.as_tensor(np.asarray(cell), dtype=torch.float32)[None],
        keys.PBC: torch.as_tensor(np.asarray(pbc), dtype=torch.bool)[None],
    }
    # warm-up (first-call costs) on the first 300 atoms, so that every size is timed warm
    pot({**batch, keys.R: batch[keys.R][:300], keys.Z: batch[keys.Z][:300], keys.IDX_M: batch[keys.IDX_M][:300],
         keys.N_ATOMS: torch.tensor([min(300, len(z))])}, compute_forces=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the present
    with open("/proc/self/status") as f:
        before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = pot(batch, compute_forces=True)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)  # on a shared machine: the process's own CPU time
        energy = float(out[keys.ENERGY][0].detach())
        fsum = float(out[keys.FORCES].detach().abs().sum())
        del out
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {
        "model": model, "n_atoms": len(z), "path": path, "times_s": times, "time_s": sorted(times)[len(times) // 2],
        "cpu_times_s": cpu_times, "cpu_s": sorted(cpu_times)[len(cpu_times) // 2],
        "peak_rss_mb": peak / 1024, "peak_above_start_mb": (peak - before) / 1024,
        "energy": energy, "abs_force_sum": fsum, "threads": torch.get_num_threads(),
    }


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log t against log N."""
    if len(points) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["ani", "schnet", "painn", "hipnn"])
    p.add_argument("--sizes", nargs="*", type=int, default=[1000, 10000, 100000])
    p.add_argument("--whole-max", type=int, default=10000, help="largest size run without chunking")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    p.add_argument("--worker", nargs=4, metavar=("MODEL", "N", "PATH", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        model, n, path, repeats = args.worker
        print(json.dumps(worker(model, int(n), path, int(repeats))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    rows = []
    for model in args.models:
        for n in args.sizes:
            repeats = 3 if n <= 1000 else 1
            paths = ["chunked", "whole"] if n <= args.whole_max else ["chunked"]
            for path in paths:  # interleaved: both paths of one size back to back
                cmd = [sys.executable, __file__, "--worker", model, str(n), path, str(repeats)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    row = {"model": model, "n_atoms": n, "path": path, "error": res.stderr.strip().splitlines()[-1:]}
                else:
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for model in args.models:
        chunked = [r for r in rows if r["model"] == model and r["path"] == "chunked" and "time_s" in r]
        summary[model] = {
            "exponent_chunked": fit_exponent([(r["n_atoms"], r["time_s"]) for r in chunked]),
            "exponent_chunked_cpu": fit_exponent([(r["n_atoms"], r["cpu_s"]) for r in chunked]),
        }
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "load_average": load, "rows": rows, "summary": summary}, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

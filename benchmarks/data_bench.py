"""Data pipeline at ANI-1x scale: open time, first batch, peak memory, batches per second.

    python benchmarks/data_bench.py                      # 200k and 2M conformations, batch 256
    python benchmarks/data_bench.py --sizes 100000 --workers 0

For each size, a synthetic file in the ANI-1x layout is written under --dir
(random-ish CHNO molecules of 4-30 atoms, one group per formula, contiguous
float32 coordinates and forces like the release file) unless it is already
there. Each measurement runs in a fresh process, as training does:
open_dataset (index scan with NaN and overlap checks) -> grouped split ->
streaming atomref fit -> DataLoader(Subset(train), shuffle, collate) for one
full epoch. Reported: time to open, time to the first batch, batches/s and
structures/s, and peak memory: the main process's peak RSS, the largest
worker's peak RSS, and the peak total PSS of main + workers (PSS splits pages
shared after fork, so the sum is the real footprint). Results go to
benchmarks/results/data.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "data.json"
ENERGY = {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.1}  # Hartree per atom, roughly


# ------------------------------------------------------------------ the file
def _formulas(rng: np.random.Generator, n_groups: int) -> list[np.ndarray]:
    out = []
    for _ in range(n_groups):
        heavy = int(rng.integers(1, 13))
        numbers = rng.choice([6, 7, 8], size=heavy, p=[0.7, 0.15, 0.15])
        n_h = int(rng.integers(max(1, heavy // 2), 2 * heavy + 3))
        out.append(np.sort(np.concatenate([numbers, np.ones(n_h, dtype=np.int64)]))[::-1])
    return out


def write_synthetic(path: Path, n_conf: int, seed: int = 0, mean_group: int = 1600) -> None:
    """ANI-1x layout with ``n_conf`` conformations; memory bounded by one group."""
    import h5py

    rng = np.random.default_rng(seed)
    n_groups = max(1, n_conf // mean_group)
    sizes = rng.gamma(1.0, 1.0, n_groups)
    sizes = np.maximum(1, np.floor(sizes / sizes.sum() * n_conf)).astype(np.int64)
    sizes[0] += n_conf - sizes.sum()
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        for k, (numbers, m) in enumerate(zip(_formulas(rng, n_groups), sizes, strict=True)):
            n = len(numbers)
            side = int(np.ceil(n ** (1 / 3)))
            grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
            base = grid * 1.45 + rng.uniform(-0.12, 0.12, (n, 3))
            g = f.create_group(f"{k:05d}_n{n}")
            g["atomic_numbers"] = numbers.astype(np.uint8)
            coords = g.create_dataset("coordinates", (m, n, 3), dtype=np.float32)
            forces = g.create_dataset("wb97x_dz.forces", (m, n, 3), dtype=np.float32)
            for start in range(0, m, 20000):
                c = min(20000, m - start)
                coords[start : start + c] = base + rng.normal(0, 0.04, (c, n, 3)).astype(np.float32)
                forces[start : start + c] = rng.normal(0, 0.03, (c, n, 3)).astype(np.float32)
            g["wb97x_dz.energy"] = sum(ENERGY[int(z)] for z in numbers) + rng.normal(0, 0.01, m)
        f.attrs["n_structures"] = n_conf
        f.attrs["energy_unit"] = "hartree"
    os.replace(tmp, path)


def ensure_file(directory: Path, n_conf: int) -> Path:
    import h5py

    path = directory / f"synthetic-ani-{n_conf}.h5"
    if path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if int(f.attrs.get("n_structures", -1)) == n_conf:
                    return path
        except OSError:
            pass
    directory.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_synthetic(path, n_conf)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


# ------------------------------------------------------------ measurement
def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PeakPSS(threading.Thread):
    """Samples the PSS of this process and its children (DataLoader workers)."""

    def __init__(self, every: float = 0.25):
        super().__init__(daemon=True)
        self.every, self.peak, self.peak_workers, self._done = every, 0.0, 0, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            kids = _children(me)
            total = _pss_mb(me) + sum(_pss_mb(c) for c in kids)
            if total > self.peak:
                self.peak, self.peak_workers = total, len(kids)
            self._done.wait(self.every)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def child(path: str, workers: int, batch_size: int, max_batches: int | None) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset

    from nnp.data import collate, open_dataset
    from nnp.data.splits import make_split
    from nnp.data.statistics import fit_atomref

    torch.set_num_threads(1)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sampler = PeakPSS()
    sampler.start()
    t0 = time.perf_counter()
    ds = open_dataset({"format": "hdf5", "path": path, "energy_key": "wb97x_dz.energy", "forces_key": "wb97x_dz.forces",
                       "group_key": "smiles", "units": {"energy": "hartree"}, "min_distance": 0.5})
    t_open = time.perf_counter() - t0
    split = make_split(len(ds), {"train": 0.8, "val": 0.1, "test": 0.1}, ds.groups(), seed=0)
    t_split = time.perf_counter() - t0 - t_open
    atomref, _ = fit_atomref(ds, split["train"], ds.elements())
    t_fit = time.perf_counter() - t0 - t_open - t_split
    rss_index = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loader = DataLoader(Subset(ds, split["train"]), batch_size=batch_size, shuffle=True, collate_fn=collate,
                        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    t_iter = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter()
    n_batches, n_structures = 1, len(first["n_atoms"])
    for batch in it:
        n_batches += 1
        n_structures += len(batch["n_atoms"])
        if max_batches and n_batches >= max_batches:
            break
    t_end = time.perf_counter()
    del it, loader
    peak_pss = sampler.stop()
    epoch = t_end - t_first
    return {
        "workers": workers,
        "structures_in_file": len(ds),
        "train_structures": len(split["train"]),
        "batch_size": batch_size,
        "open_s": round(t_open, 2),
        "split_s": round(t_split, 2),
        "atomref_fit_s": round(t_fit, 2),
        "time_to_first_batch_s": round(t_first - t0, 2),
        "first_batch_after_loader_s": round(t_first - t_iter, 3),
        "batches": n_batches,
        "full_epoch": max_batches is None,
        "epoch_s": round(epoch, 1),
        "batches_per_s": round((n_batches - 1) / epoch, 1),
        "structures_per_s": round((n_structures - len(first["n_atoms"])) / epoch),
        "rss_after_imports_mb": round(rss_imports),
        "rss_after_index_mb": round(rss_index),
        "peak_rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024) if workers else None,
        "peak_pss_total_mb": round(peak_pss),
    }


def run_child(path: Path, workers: int, batch_size: int, max_batches: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--workers", str(workers), "--batch-size", str(batch_size)]
    if max_batches:
        cmd += ["--max-batches", str(max_batches)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-batches", type=int, default=None, help="stop an epoch early (default: full epoch)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/nnp-data-bench"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers[0], args.batch_size, args.max_batches)))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for size in args.sizes:
        path = ensure_file(args.dir, size)
        for w in args.workers:
            r = run_child(path, w, args.batch_size, args.max_batches)
            r["file_gb"] = round(path.stat().st_size / 1e9, 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "data pipeline (nnp.data.hdf5) on synthetic ANI-1x-layout files",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "notes": "warm page cache (files just written); one process per row; peak_pss_total sums main + workers",
        "results": rows,
    }, indent=2) + "\n")
    t = Table(title=f"data pipeline, batch {args.batch_size} (results: {RESULTS})")
    for col in ("structures", "file GB", "workers", "open s", "first batch s", "batches/s", "structures/s",
                "peak RSS main MB", "peak RSS worker MB", "peak PSS total MB"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['structures_in_file']:,}", str(r["file_gb"]), str(r["workers"]), str(r["open_s"]),
                  str(r["time_to_first_batch_s"]), str(r["batches_per_s"]), f"{r['structures_per_s']:,}",
                  str(r["peak_rss_main_mb"]), str(r["peak_rss_worker_mb"] or "-"), str(r["peak_pss_total_mb"]))
    Console().print(t)


if __name__ == "__main__":
    main()

"""Whole-command benchmark: ``nnp predict`` on ~20,000 small CHNO molecules against the same job
written with TorchANI (read extxyz with ASE, batches of 256, write extxyz), and the file I/O alone.

    python benchmarks/predict_bench.py [--n 20000] [--rounds 3] [--threads 1,2] [--out results/predict.json]

Each round runs every variant once, in a rotated order (interleaved), as a fresh process timed
from start to exit (imports included); the JSON holds each variant's median, min and max over the
rounds, and each nnp variant's ratio to the TorchANI script (its time / nnp's: > 1 means nnp is faster).
Variants: nnp extxyz->extxyz (C reader when ``extxyz`` is installed, bulk writer), nnp with
``fast_io=false`` (ASE's reader and writer), nnp HDF5->HDF5 (the dataset layout), TorchANI's script
when its venv (benchmarks/.venvs/torchani) carries its ``.bench-ready`` stamp. The I/O section times
reading and writing the extxyz file alone: ASE, the ``extxyz`` package, nnp's bulk writer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from envs import VENVS, python_of  # noqa: E402
from predict_data import make  # noqa: E402


def _timed(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(HERE.parent), COLUMNS="120")
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return wall


def variants(files: dict, tmp: Path) -> dict[str, list[str]]:
    nnp = [sys.executable, "-m", "nnp.cli", "predict", f"ckpt={files['model']}", "batch_size=256", "overwrite=true"]
    out = {
        "nnp extxyz": [*nnp, f"input={files['extxyz']}", f"output={tmp / 'nnp.extxyz'}"],
        "nnp extxyz (ASE I/O)": [*nnp, f"input={files['extxyz']}", f"output={tmp / 'nnp_ase.extxyz'}", "fast_io=false"],
        "nnp hdf5": [*nnp, f"input={files['h5']}", f"output={tmp / 'nnp.h5'}"],
    }
    if (VENVS / "torchani" / ".bench-ready").exists():
        out["torchani extxyz"] = [str(python_of("torchani")), str(HERE / "workers" / "torchani_predict.py"), str(files["extxyz"]), str(tmp / "ani.extxyz")]
    return out


def io_section(files: dict, tmp: Path) -> dict:
    """Reading and writing the extxyz file alone (one process, seconds)."""
    import ase.io
    import numpy as np

    from nnp.data import fast_extxyz
    from nnp.data.structure_block import StructureBlock

    out: dict = {}
    t = time.perf_counter()
    frames = ase.io.read(files["extxyz"], index=":")
    out["read ase"] = time.perf_counter() - t
    block = StructureBlock.from_atoms(frames)
    block.source = {"atoms": frames}
    forces = np.random.default_rng(0).normal(size=block.positions.shape)
    per_structure, per_atom = {"energy": np.arange(len(block), dtype=float)}, {"forces": forces, "energies": forces[:, 0].copy()}
    t = time.perf_counter()
    fast_extxyz.write_block(tmp / "bulk.extxyz", block, per_structure, per_atom)
    out["write nnp bulk"] = time.perf_counter() - t
    from ase.calculators.singlepoint import SinglePointCalculator

    t = time.perf_counter()
    for a, f, e in zip(frames, block.split(forces), per_structure["energy"].tolist()):
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
    ase.io.write(tmp / "ase.extxyz", frames, format="extxyz")
    out["write ase"] = time.perf_counter() - t
    if fast_extxyz.available():
        import extxyz

        t = time.perf_counter()
        dicts = extxyz.read_dicts(str(files["extxyz"]))
        out["read extxyz package"] = time.perf_counter() - t
        t = time.perf_counter()
        extxyz.write_dicts(str(tmp / "c.extxyz"), dicts)
        out["write extxyz package (positions only)"] = time.perf_counter() - t
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--out", default=str(HERE / "results" / "predict.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = make(tmp / "data", args.n)
        cmds = variants(files, tmp)
        result: dict = {"n_structures": args.n, "rounds": args.rounds, "load_average_start": os.getloadavg()[0], "threads": {}}
        for threads in sorted({int(t) for t in args.threads.split(",")}):
            times: dict[str, list[float]] = {k: [] for k in cmds}
            names = list(cmds)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
                    times[name].append(_timed(cmds[name], threads))
                    print(f"threads={threads} round {r} {name}: {times[name][-1]:.2f} s", flush=True)
            rows = {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3)} for k, v in times.items()}
            if "torchani extxyz" in rows:
                peer = rows["torchani extxyz"]["median_s"]
                for k, row in rows.items():
                    if k.startswith("nnp"):
                        row["speedup_vs_torchani"] = round(peer / row["median_s"], 3)
            else:
                result["torchani"] = "skipped: benchmarks/.venvs/torchani has no .bench-ready stamp"
            result["threads"][str(threads)] = rows
        result["io_1_process_s"] = io_section(files, tmp)
        result["load_average_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

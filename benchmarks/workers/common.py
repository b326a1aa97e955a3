"""Helpers shared by every worker: timing, peak memory, cached inputs, result output.

Imported from each framework's own virtual environment, so it needs only the
standard library, numpy, torch and ase (all three peers install those).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("NNP_BENCH_CACHE") or HERE.parent / ".cache")  # recipe_bench.py: its own inputs


# ----------------------------------------------------------------- timing
def measure(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 2,
    min_time: float = 0.2,
    max_inner: int = 50,
) -> dict:
    """Median wall time of one call of ``fn`` over ``repeats`` repeats.

    Each repeat runs ``fn`` ``inner`` times (chosen from the warm-up so that a
    repeat lasts at least ``min_time`` seconds) and records the mean; the
    median of the repeats is the result (robust to a noisy shared CPU).
    """
    t = 0.0
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
    inner = int(min(max_inner, max(1, np.ceil(min_time / max(t, 1e-9)))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "inner": inner,
        "times": times,
    }


# ----------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object]) -> dict:
    """Peak resident memory while ``fn`` runs, absolute and above the RSS before it (MB).

    Call it first in a fresh process: memory freed by earlier calls can stay
    resident (malloc's heap) and would hide the peak.
    """
    import gc

    gc.collect()
    reset_peak_rss()
    before = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return {"peak_rss_mb": peak / 1024, "peak_delta_mb": max(peak - before, 0) / 1024}


# ----------------------------------------------------------------- inputs
def load_npz(name: str) -> dict[str, np.ndarray]:
    path = CACHE / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"missing benchmark input {path}: run benchmarks/run_all.py (it prepares them)")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def split_structures(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A flat cached set (Z, R, n_atoms, energy?, forces?, cell?, pbc?) -> list of structures."""
    out = []
    ends = np.cumsum(data["n_atoms"])
    starts = ends - data["n_atoms"]
    for m, (a, b) in enumerate(zip(starts, ends, strict=True)):
        s = {"Z": data["Z"][a:b], "R": data["R"][a:b]}
        if "energy" in data:
            s["energy"] = float(data["energy"][m])
        if "forces" in data:
            s["forces"] = data["forces"][a:b]
        s["cell"] = data["cell"][m] if "cell" in data else np.zeros((3, 3))
        s["pbc"] = data["pbc"][m] if "pbc" in data else np.zeros(3, dtype=bool)
        out.append(s)
    return out


def to_atoms(structure: dict[str, np.ndarray]):
    from ase import Atoms

    return Atoms(
        numbers=structure["Z"], positions=structure["R"], cell=structure["cell"], pbc=structure["pbc"]
    )


def batches(structures: list, size: int) -> list[list]:
    return [structures[k : k + size] for k in range(0, len(structures) - size + 1, size)]


def md_run(atoms, calc, steps: int, repeats: int, dt_fs: float = 0.5) -> dict:
    """Steps/s of ASE velocity Verlet with ``calc`` (the time of whole blocks of steps)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dyn.run(2)  # warm-up (first calls build caches, JIT, ...)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dyn.run(steps)
        times.append((time.perf_counter() - t0) / steps)
    e = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "repeats": repeats,
            "inner": steps, "times": times, "steps_per_s": 1.0 / med, "final_total_energy_eV": float(e)}


# ----------------------------------------------------------------- driver
def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("--params", default="{}", help="JSON dict of case parameters")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


def main(cases: dict[str, Callable[..., dict]]) -> None:
    """Run one case and print its result as the last line of stdout (JSON)."""
    args = parse_args()
    setup_torch(args.threads)
    params = json.loads(args.params)
    if args.case not in cases:
        print(json.dumps({"error": f"unsupported case {args.case}"}))
        sys.exit(0)
    import torch

    t0 = time.perf_counter()
    result = cases[args.case](repeats=args.repeats, **params)
    result.setdefault("threads", torch.get_num_threads())
    result["torch"] = torch.__version__
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result))


# ------------------------------------------------- accuracy (recipe_bench.py)
def recipe_split() -> tuple[list, list, list, dict]:
    """The molecule-split train/val/test structures recipe_bench.py prepared, and its meta
    (``atomref``: {Z: eV} fitted on the training part; loss weights)."""
    parts = [split_structures(load_npz(f"recipe_{p}")) for p in ("train", "val", "test")]
    meta = json.loads((CACHE / "recipe_meta.json").read_text())
    return (*parts, meta)


def reference_energy(structure: dict, atomref: dict) -> float:
    """Sum of the atoms' reference energies (eV), the part every model leaves to least squares."""
    return float(sum(atomref[str(int(z))] for z in structure["Z"]))


def common_loss(de, n_atoms, df, energy_weight: float, forces_weight: float, per_atom: bool):
    """The benchmark's one loss in every code: w_E mean(dE^2) + w_F mean over components (dF^2);
    dE per structure (eV), or per atom when ``per_atom``; torch tensors."""
    e = de / n_atoms if per_atom else de
    return energy_weight * e.pow(2).mean() + forces_weight * df.pow(2).mean()


def heldout_errors(energies: list[float], forces: list[np.ndarray], structures: list[dict]) -> dict:
    """Energy MAE per atom (meV/atom) and force-component MAE (meV/Å) of predictions on ``structures``."""
    e = np.array([abs(p - s["energy"]) / len(s["Z"]) for p, s in zip(energies, structures, strict=True)])
    f = np.concatenate([np.abs(np.asarray(p) - s["forces"]).ravel() for p, s in zip(forces, structures, strict=True)])
    return {"energy_mae_mev_per_atom": 1000.0 * float(e.mean()), "force_mae_mev_per_A": 1000.0 * float(f.mean()),
            "n_structures": len(structures)}


def fit_epochs(epochs: int, train_batches: list, val_batches: list, train_step, val_loss, get_state, set_state,
               seed: int = 0) -> dict:
    """A peer's training loop: ``epochs`` passes over shuffled ``train_batches`` (``train_step(batch)``),
    the validation loss after each, the best epoch's weights restored at the end (as nnp's best
    checkpoint). Returns the per-epoch wall times (training + validation) and the losses."""
    rng = np.random.default_rng(seed)
    best, best_state, times, curve = float("inf"), None, [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for k in rng.permutation(len(train_batches)):
            train_step(train_batches[k], epoch)
        loss = float(np.mean([val_loss(b) for b in val_batches]))
        times.append(time.perf_counter() - t0)
        curve.append(loss)
        if loss < best:
            best, best_state = loss, get_state()
    set_state(best_state)
    return {"epoch_s": times, "median_epoch_s": statistics.median(times), "val_loss": curve, "best_val_loss": best}

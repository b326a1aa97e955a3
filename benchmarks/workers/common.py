"""Helpers shared by every worker: timing, peak memory, cached inputs, result output.

Imported from each framework's own virtual environment, so it needs only the
standard library, numpy, torch and ase (all three peers install those).
"""

from __future__ import annotations

import argparse
import contextlib
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


def md_case(atoms, calc, steps: int, variant: str, **info) -> dict:
    """A worker case of MD steps/s (ASE velocity Verlet, 0.5 fs, 300 K Maxwell-Boltzmann start):
    ``first`` runs one step (its peak memory is the case's; it also builds caches, TorchScript,
    neighbor lists), ``run(repeats)`` times ``repeats`` blocks of ``steps`` steps."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)

    def run(repeats: int) -> dict:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dyn.run(steps)
            times.append((time.perf_counter() - t0) / steps)
        return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                "repeats": repeats, "inner": steps, "times": times}

    return {"first": lambda: dyn.run(1), "run": run, "items": 1, "unit": "steps/s",
            "warmup_steps": min(2, steps) if steps >= 5 else 0, "dyn": dyn,
            "info": {"n_atoms": len(atoms), "variant": variant, **info}}


# ----------------------------------------------------------------- training commands
def cached_extxyz(name: str, count: int) -> Path:
    """The first ``count`` structures of a cached set as extxyz (energy eV, forces eV/Å), written once."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    path = CACHE / f"{name}_{count}.extxyz"
    if not path.is_file():
        frames = []
        for s in split_structures(load_npz(name))[:count]:
            atoms = to_atoms(s)
            atoms.calc = SinglePointCalculator(atoms, energy=s["energy"], forces=s["forces"])
            frames.append(atoms)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        write(tmp, frames, format="extxyz")
        tmp.replace(path)
    return path


class _EpochTimes:
    """Wall time of every epoch of a Lightning fit: from one training epoch's start to the next's
    (training, validation, checkpoints, logs), the last to the end of fitting."""

    def __init__(self):
        self.starts: list[float] = []
        self.end: float | None = None

    def result(self, items_per_epoch: int) -> dict:
        marks = self.starts + ([self.end] if self.end is not None else [])
        epochs = [b - a for a, b in zip(marks, marks[1:])]
        timed = epochs[1:] or epochs  # the first epoch pays for start-up (caches, workers): not counted
        if not timed:
            raise RuntimeError("no epoch was timed")
        return {"median_s": statistics.median(timed), "min_s": min(timed), "max_s": max(timed),
                "repeats": len(timed), "inner": 1, "times": timed, "epoch_s_all": epochs,
                "first_epoch_s": epochs[0], "items_per_epoch": items_per_epoch}


@contextlib.contextmanager
def epoch_timer():
    """Within the block, every ``pytorch_lightning.Trainer`` built gets a callback timing its epochs
    (how the benchmark times the shipped ``nnp train`` without touching nnp)."""
    import pytorch_lightning as pl

    times = _EpochTimes()

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            times.starts.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            times.end = time.perf_counter()

    init = pl.Trainer.__init__

    def patched(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), Timer()]
        init(self, *args, **kwargs)

    pl.Trainer.__init__ = patched
    try:
        yield times
    finally:
        pl.Trainer.__init__ = init


def epoch_case(one_training: Callable[[], dict], batch_size: int, variant: str) -> dict:
    """A worker case whose every timing is one whole training run (``one_training`` returns
    :meth:`_EpochTimes.result`): conformations/s = training structures per epoch / median epoch."""
    case: dict = {"unit": "conformations/s", "items": 1, "info": {"variant": variant, "batch_size": batch_size}}

    def run(repeats: int) -> dict:
        t = one_training()
        case["items"] = t["items_per_epoch"]
        return t

    case["run"] = run
    return case


# ----------------------------------------------------------------- driver
RESULT_MARK = "@@BENCH "  # prefix of result lines (libraries may print to stdout too)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("case", nargs="?", default="", help="the case (or each request's ``case``, --serve)")
    p.add_argument("--params", default="{}", help="JSON dict of case parameters")
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts, each timed in turn")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--serve", action="store_true",
                   help="stay up: one JSON request per stdin line ({threads: [..], repeats: n}), one result line each")
    return p.parse_args()


def _measure_at(case: dict, threads: int, repeats: int, first_request: bool) -> dict:
    """Time one prepared case at ``threads`` torch threads (median of ``repeats`` repeats)."""
    import torch

    torch.set_num_threads(threads)
    if "run" in case:  # MD: blocks of steps; a short warm-up after a change of thread count
        if case.get("warmup_steps"):
            case["dyn"].run(case["warmup_steps"])
        t = case["run"](repeats)
    else:
        kw = dict(case.get("measure", {}))
        if not first_request:  # already warm: one call to choose the inner count
            kw["warmup"] = 1
        t = measure(case["call"], repeats, **kw)
    t["items_per_s"] = case["items"] / t["median_s"]
    t["threads"] = torch.get_num_threads()
    return t


def serve_request(case: dict, request: dict, first_request: bool) -> dict:
    """One request: the peak memory of the first call (first request of a fresh process only),
    then the timing at each thread count of ``request["threads"]``, in that order."""
    out: dict = {"by_threads": {}}
    if first_request and ("first" in case or "call" in case):
        import torch

        torch.set_num_threads(request["threads"][0])
        t0 = time.perf_counter()
        out["memory"] = peak_memory(case.get("first") or case["call"])
        out["first_call_s"] = time.perf_counter() - t0
    for threads in request["threads"]:
        out["by_threads"][str(threads)] = _measure_at(case, threads, request["repeats"], first_request)
    return out


def main(cases: dict[str, Callable[..., dict]]) -> None:
    """Answer requests: one from the command line, or one per stdin line (``--serve``).

    A case function takes the case's parameters and returns a prepared case: ``call`` (one timed
    call) or ``run(repeats)`` (its own timing: MD), ``items`` per call, ``unit``, optionally
    ``first`` (the call whose peak memory counts), ``measure`` (kwargs of :func:`measure`),
    ``info`` (variant, sizes), or ``error``. A request is ``{threads: [..], repeats: n}``, with
    ``case`` and ``params`` to serve another case from the same process (prepared once, kept
    until ``{"reset": true}``). Each answer is one stdout line: RESULT_MARK + JSON.
    """
    import gc
    import traceback

    import torch

    args = parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(int(args.threads.split(",")[0]))
    prepared: dict[str, tuple[dict, dict]] = {}

    def answer(request: dict) -> dict:
        name = request.get("case", args.case)
        params = request.get("params", json.loads(args.params))
        key = json.dumps([name, params], sort_keys=True)
        first = key not in prepared
        if first:
            if name not in cases:
                return {"error": f"unsupported case {name}"}
            torch.manual_seed(0)
            t0 = time.perf_counter()
            case = cases[name](**params)
            if "result" in case or "error" in case:
                return case
            base = {**case.get("info", {}), "unit": case["unit"], "torch": torch.__version__,
                    "setup_s": time.perf_counter() - t0}
            prepared[key] = (case, base)
        case, base = prepared[key]
        t1 = time.perf_counter()
        result = {**base, **serve_request(case, request, first_request=first)}
        result["wall_s"] = time.perf_counter() - t1
        return result

    if args.serve:
        requests = (json.loads(line) for line in sys.stdin)
    else:
        requests = iter([{"threads": [int(t) for t in args.threads.split(",")], "repeats": args.repeats}])
    for request in requests:
        if request.get("reset"):
            prepared.clear()
            gc.collect()
            continue
        try:
            result = answer(request)
        except Exception as err:  # noqa: BLE001 - reported to the driver, the server stays up
            result = {"error": f"{type(err).__name__}: {err} ({traceback.format_exc().strip().splitlines()[-3]})"}
        if "result" in result:  # a one-shot case (recipe_bench.py's ``fit``): its result as the last line
            print(json.dumps(result["result"]), flush=True)
            continue
        print(RESULT_MARK + json.dumps(result), flush=True)


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

"""Training recipe benchmark: accuracy on molecules never seen in training, for the same epochs.

    .venv/bin/python benchmarks/recipe_bench.py                    # ablation (ANI) + nnp vs peers
    .venv/bin/python benchmarks/recipe_bench.py --only ablation    # nnp's recipe, part by part
    .venv/bin/python benchmarks/recipe_bench.py --only peers --models ani schnet

Data: ``../shared/data/chno-gfn2.h5`` (GFN2-xTB, Hartree -> eV at load) split
by molecule (SMILES) with a fixed seed: ``--test-molecules`` (12) held out for
the errors, ``--val-molecules`` (8) for validation (best epoch, plateau
schedule), the rest for training; ``--train-per-molecule`` conformations of
each training molecule (the machine decides the size: see the README). Every
code trains on exactly these structures (cached as npz for the peers, which
run in their own venvs, benchmarks/.venvs) for ``--epochs`` epochs, batches
of 32, restores its best validation epoch and is evaluated on the held-out
molecules: force-component MAE (meV/Å) and energy MAE per atom (meV/atom),
with the median epoch wall time (training + validation).

The common loss (the issue's): 0.01 x MSE(energy per structure, eV) + 0.99 x
MSE(force components, eV/Å), written in each code's own convention (nnp:
loss.per_atom_energy=false, energy_weight=0.01, forces_weight=0.99). Peers
keep their documented optimizers (TorchANI: AdamW on weights + SGD on biases,
lr 1e-3; SchNetPack: AdamW lr 5e-4) and the same least-squares reference
energies. nnp runs through the same code path as ``nnp train`` (its config
composed by Hydra, nnp.train._fit).

Ablation: ANI from nnp's former defaults (lr 1e-3, no averaging, MSE per atom
1:10) through the common loss and the parts of the recipe added in turn, then
the shipped defaults with one part switched off or one option switched on
(cosine decay with warmup, other EMA decays, a last stage with a larger energy
weight, force-RMS output scale, vector forces, Huber); the learning curves of
every run are written beside the results (``recipe_curves/ani_<k>.png``).
Results: benchmarks/results/recipe.json and tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "workers"))

DEFAULT_DATA = "/work/shared/data/chno-gfn2.h5"
COMMON_LOSS = ["loss.per_atom_energy=false", "loss.energy_weight=0.01", "loss.forces_weight=0.99"]
#: nnp as it was before this recipe (explicitly, whatever the defaults are now)
FORMER = ["ema.decay=0", "optim.lr=1e-3", "optim.warmup_steps=0", "optim.warmup_epochs=0", "energy_scale=residual_rms",
          "loss.kind=mse", "loss.stages=[]", "optim.scheduler.name=plateau"]
COSINE = ["optim.scheduler.name=cosine", "optim.scheduler.min_lr=0", "optim.warmup_epochs=1"]

# (name, overrides, what it tests). Every run but the first has
# the common loss; "defaults" is the shipped recipe, the rows below it switch one part of it off or on.
ABLATION = [
    ("former defaults", FORMER + ["loss.per_atom_energy=true", "loss.energy_weight=1", "loss.forces_weight=10"],
     "nnp before: MSE(E/atom) + 10 MSE(F), lr 1e-3, no averaging"),
    ("common loss, former recipe", FORMER + COMMON_LOSS, "0.01 MSE(E) + 0.99 MSE(F), the loss every code uses below"),
    ("+ EMA 0.99", FORMER + COMMON_LOSS + ["ema.decay=0.99"], "averaged weights for validation and the model"),
    ("defaults", COMMON_LOSS, "the shipped recipe: EMA 0.99, peak LR 3e-3, energy weight x10 over the last third"),
    ("defaults - stage", COMMON_LOSS + ["loss.stages=[]"], "without the last stage"),
    ("defaults - EMA", COMMON_LOSS + ["ema.decay=0"], "without averaging"),
    ("defaults, lr 1e-3", COMMON_LOSS + ["optim.lr=1e-3"], "the former learning rate"),
    ("defaults, lr 1e-2", COMMON_LOSS + ["optim.lr=1e-2"], "a higher learning rate"),
    ("defaults + cosine", COMMON_LOSS + COSINE, "cosine decay to 0 at the last step, one epoch of warmup"),
    ("defaults + EMA 0.95", COMMON_LOSS + ["ema.decay=0.95"], "a faster average"),
    ("defaults + EMA 0.999", COMMON_LOSS + ["ema.decay=0.999"], "a slower average"),
    ("defaults, stage from 0.8", COMMON_LOSS + ["loss.stages=[{from_fraction: 0.8, energy_factor: 10}]"],
     "the last stage over the last fifth"),
    ("defaults + force-RMS scale", COMMON_LOSS + ["energy_scale=force_rms"], "output scaled by the force RMS"),
    ("defaults + vector forces", COMMON_LOSS + ["loss.force_error=vector"], "force MSE per atom vector (3x the component term)"),
    ("defaults + huber", COMMON_LOSS + ["loss.kind=huber", "loss.huber_delta=0.1"], "Huber (delta 0.1) instead of MSE"),
]


def log(msg: str) -> None:
    print(msg, flush=True)


# -------------------------------------------------------------------- data
def prepare(args) -> dict:
    """Open the data, split it by molecule, subsample, fit reference energies; write the peers' npz."""
    from nnp.data import open_dataset
    from nnp.data.statistics import fit_atomref

    data = open_dataset({
        "format": "hdf5", "path": args.data, "energy_key": "gfn2.energy", "forces_key": "gfn2.forces",
        "group_key": "smiles", "units": {"energy": "hartree", "length": "angstrom"},
    })
    groups = data.groups()
    molecules = np.unique(groups)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(molecules)
    test_m = order[: args.test_molecules]
    val_m = order[args.test_molecules : args.test_molecules + args.val_molecules]
    train_m = order[args.test_molecules + args.val_molecules :]

    def pick(mols, per_molecule):
        idx = []
        for m in sorted(mols):
            rows = np.flatnonzero(groups == m)
            idx.extend(rng.choice(rows, size=min(per_molecule, len(rows)), replace=False).tolist())
        return np.sort(np.array(idx, dtype=np.int64))

    split = {"train": pick(train_m, args.train_per_molecule), "val": pick(val_m, args.val_per_molecule),
             "test": pick(test_m, args.test_per_molecule)}
    species = data.elements()
    atomref, rms = fit_atomref(data, split["train"], species)
    names = data.group_names()
    cache = Path(args.out) / "cache"
    for part, idx in split.items():
        _save_npz(cache / f"recipe_{part}.npz", [data[int(i)] for i in idx])
    meta = {"atomref": {str(z): float(e) for z, e in zip(species, atomref)}, "energy_weight": 0.01,
            "forces_weight": 0.99, "per_atom_energy": False}
    (cache / "recipe_meta.json").write_text(json.dumps(meta))
    info = {part: len(idx) for part, idx in split.items()}
    info["molecules"] = {"train": len(train_m), "val": len(val_m), "test": len(test_m)}
    info["test_molecules"] = [names[int(m)] if isinstance(m, (int, np.integer)) else str(m) for m in sorted(test_m)]
    info["residual_rms_eV_per_atom"] = rms
    log(f"data: {len(data)} conformations of {len(molecules)} molecules -> train {info['train']} "
        f"({len(train_m)} molecules x {args.train_per_molecule}), val {info['val']} ({len(val_m)} molecules), "
        f"held out {info['test']} ({len(test_m)} molecules: {', '.join(info['test_molecules'])})")
    return {"dataset": data, "split": split, "species": species, "atomref": atomref, "rms": rms, "info": info,
            "cache": cache}


def _save_npz(path: Path, samples: list[dict]) -> None:
    from nnp import keys

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        Z=np.concatenate([s[keys.Z] for s in samples]).astype(np.int64),
        R=np.concatenate([s[keys.R] for s in samples]).astype(np.float64),
        n_atoms=np.array([len(s[keys.Z]) for s in samples], dtype=np.int64),
        energy=np.array([float(s[keys.ENERGY]) for s in samples]),
        forces=np.concatenate([s[keys.FORCES] for s in samples]).astype(np.float64),
    )


# -------------------------------------------------------------------- nnp
def nnp_run(prep: dict, model: str, overrides: list[str], epochs: int, out_dir: Path, seed: int) -> dict:
    """Train like ``nnp train`` (composed config, nnp.train._fit) and evaluate on the held-out molecules."""
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    from nnp.config.compose import compose
    from nnp.data.statistics import choose_energy_scale, force_rms
    from nnp.train import _fit, _quiet_lightning

    _quiet_lightning()
    dataset, split = prep["dataset"], prep["split"]
    cfg = compose("train", ROOT / "conf", [f"model={model}", "trainer=cpu", f"trainer.max_epochs={epochs}",
                                           "early_stopping.patience=1000", "data.batch_size=32", f"seed={seed}",
                                           f"data.path={dataset.path}",
                                           *overrides])
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    kind = str(cfg.energy_scale)
    scale = choose_energy_scale(kind, prep["rms"], force_rms(dataset, split["train"]) if kind == "force_rms" else None)
    pl.seed_everything(seed, verbose=False)
    t0 = time.perf_counter()
    pot, info = _fit(cfg, dataset, split, model_cfg, loss_cfg, prep["species"], prep["atomref"], scale,
                     torch.float32, out_dir)
    wall = time.perf_counter() - t0
    res = {**nnp_errors(pot, dataset, split["test"]), "epoch_s": wall / epochs, "energy_scale_eV": scale,
           "n_parameters": info["n_parameters"]}
    metrics = out_dir / "csv" / "metrics.csv"
    if metrics.is_file():
        from nnp.training.curves import read_epochs

        series = read_epochs(metrics)
        res["curve"] = {k: series.get(k) for k in ("val_forces_mae", "val_energy_per_atom_mae", "train_loss_epoch")}
    return res


def nnp_errors(pot, dataset, indices) -> dict:

    from common import heldout_errors

    from nnp import keys
    from nnp.data.collate import collate

    pot.eval()
    energies, forces, structures = [], [], []
    for b in range(0, len(indices), 64):
        samples = [dataset[int(i)] for i in indices[b : b + 64]]
        batch = {k: (v.float() if v.is_floating_point() else v) for k, v in collate(samples).items()}
        out = pot(batch, compute_forces=True)
        ends = np.cumsum(batch[keys.N_ATOMS].numpy())
        f = out[keys.FORCES].detach().double().numpy()
        for k, s in enumerate(samples):
            n = len(s[keys.Z])
            energies.append(float(out[keys.ENERGY][k].detach()))
            forces.append(f[ends[k] - n : ends[k]])
            structures.append({"Z": s[keys.Z], "energy": float(s[keys.ENERGY]), "forces": np.asarray(s[keys.FORCES])})
    return heldout_errors(energies, forces, structures)


# -------------------------------------------------------------------- peers
def peer_run(peer: str, model: str, epochs: int, cache: Path, threads: int, seed: int, timeout: float,
             venvs: str | None = None) -> dict:
    import envs

    python = Path(venvs) / peer / "bin" / "python" if venvs else envs.python_of(peer)
    if not python.is_file():
        return {"error": f"{peer} venv missing (python benchmarks/envs.py {peer})"}
    cmd = [str(python), str(HERE / "workers" / f"{peer}_worker.py"), "fit", "--threads", str(threads),
           "--params", json.dumps({"epochs": epochs, "model": model, "seed": seed})]
    env = dict(os.environ, NNP_BENCH_CACHE=str(cache), OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


PEER_OF = {"ani": "torchani", "schnet": "schnetpack", "painn": "schnetpack"}


# -------------------------------------------------------------------- report
def row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {r['error']} | | |"
    epoch_s = r.get("median_epoch_s", r.get("epoch_s"))
    return f"| {name} | {r['force_mae_mev_per_A']:.0f} | {r['energy_mae_mev_per_atom']:.1f} | {epoch_s:.1f} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--only", nargs="*", default=["ablation", "peers"], choices=["ablation", "peers"])
    p.add_argument("--models", nargs="+", default=["ani", "schnet", "painn"])
    p.add_argument("--recipe", nargs="*", default=None, help="nnp overrides of the recipe compared with the peers "
                   "(default: the shipped defaults with the common loss)")
    p.add_argument("--ablation", nargs="*", type=int, default=None, help="indices of ABLATION entries (default: all)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--test-molecules", type=int, default=12)
    p.add_argument("--val-molecules", type=int, default=8)
    p.add_argument("--train-per-molecule", type=int, default=4)
    p.add_argument("--val-per-molecule", type=int, default=6)
    p.add_argument("--test-per-molecule", type=int, default=30)
    p.add_argument("--seed", type=int, default=0, help="the split's seed (and the training seed unless --train-seed)")
    p.add_argument("--train-seed", type=int, default=None, help="initialization and shuffling (repeat with others for the noise)")
    p.add_argument("--venvs", default=None, help="folder of the peers' venvs (default benchmarks/.venvs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peer-timeout", type=float, default=1800)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--results", default=str(HERE / "results" / "recipe.json"))
    args = p.parse_args(argv)
    args.train_seed = args.seed if args.train_seed is None else args.train_seed
    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="nnp-recipe-") if args.out is None else None
    args.out = args.out or tmp.name
    out = Path(args.out)
    prep = prepare(args)
    results: dict = {"info": {**prep["info"], "epochs": args.epochs, "batch_size": 32, "threads": args.threads,
                              "train_seed": args.train_seed, "torch": torch.__version__, "machine": platform.machine(),
                              "loadavg_start": os.getloadavg()}, "ablation": {}, "peers": {}}
    curves = Path(args.results).parent / "recipe_curves"
    if "ablation" in args.only:
        log("| ANI, nnp | held-out force MAE (meV/Å) | energy MAE (meV/atom) | s/epoch |\n|---|---|---|---|")
        for k, (name, overrides, what) in enumerate(ABLATION):
            if args.ablation is not None and k not in args.ablation:
                continue
            run_dir = out / f"ablation_{k}"
            r = nnp_run(prep, "ani", list(overrides), args.epochs, run_dir, args.train_seed)
            r.update(overrides=list(overrides), what=what)
            _keep_curve(run_dir, curves / f"ani_{k}.png")
            results["ablation"][name] = r
            log(row(name, r))
            _write(args.results, results)
    if "peers" in args.only:
        recipe = list(args.recipe) if args.recipe is not None else COMMON_LOSS
        log(f"nnp recipe: {' '.join(recipe)}")
        log("| model | held-out force MAE (meV/Å) | energy MAE (meV/atom) | s/epoch |\n|---|---|---|---|")
        for model in args.models:
            run_dir = out / f"nnp_{model}"
            r = nnp_run(prep, model, recipe, args.epochs, run_dir, args.train_seed)
            r["overrides"] = recipe
            _keep_curve(run_dir, curves / f"{model}_recipe.png")
            results["peers"][f"nnp {model}"] = r
            log(row(f"nnp {model}", r))
            _write(args.results, results)
            peer = PEER_OF[model]
            r = peer_run(peer, model, args.epochs, prep["cache"], args.threads, args.train_seed, args.peer_timeout, args.venvs)
            results["peers"][f"{peer} {model}"] = r
            log(row(f"{peer} {model}", r))
            _write(args.results, results)
    results["info"]["loadavg_end"] = os.getloadavg()
    _write(args.results, results)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _keep_curve(run_dir: Path, dest: Path) -> None:
    import shutil

    png = run_dir / "learning_curves.png"
    if png.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest)


def _write(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    raise SystemExit(main())

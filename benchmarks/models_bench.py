"""Model zoo benchmark: ANI, SchNet, PaiNN, HIP-NN on the same data and wall-clock budget.

Each model is built from its shipped config (conf/model/<name>.yaml, the
papers' default sizes) and trained with one plain loop on the CHNO GFN2-xTB
set (ANI-1x layout, Hartree -> eV at load): 90/10 split grouped by molecule
(SMILES), so held-out molecules are never seen in training; atom reference
energies fitted by least squares on the training part; Adam, lr 1e-3,
batches of 32; loss = MSE(energy per atom, eV) + 10 MSE(forces, eV/Å).
Every model gets the same training budget in seconds (not epochs), then is
evaluated on the held-out split.

Reported per model: parameters, held-out energy MAE (meV/atom) and force MAE
(meV/Å), training throughput (conformations/s) and inference throughput
(atoms/s, energy + forces, batches of 64). Results go to
benchmarks/results/models.json and a table on stdout.

    .venv/bin/python benchmarks/models_bench.py --budget 300
    .venv/bin/python benchmarks/models_bench.py --budget 60 --models schnet painn

Timings are CPU wall-clock on whatever machine runs this, with one torch
thread by default: on a machine shared with other jobs, multi-threaded
OpenMP kernels stall on descheduled threads and timings swing by 10x
(``--threads 0`` uses torch's default). The JSON records threads and torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnp import keys  # noqa: E402
from nnp.data import collate, open_dataset  # noqa: E402
from nnp.data.splits import make_split  # noqa: E402
from nnp.data.statistics import fit_atomref  # noqa: E402
from nnp.potential import Potential  # noqa: E402

DEFAULT_DATA = "/work/shared/data/chno-gfn2.h5"
MODELS = ["ani", "schnet", "painn", "hipnn"]
ENERGY_WEIGHT = 1.0  # per-atom energy MSE, eV^2
FORCE_WEIGHT = 10.0  # force MSE, (eV/Å)^2


def to_dtype(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.items()}


def loss_of(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    de = (out[keys.ENERGY] - batch[keys.ENERGY]) / batch[keys.N_ATOMS]
    df = out[keys.FORCES] - batch[keys.FORCES]
    return ENERGY_WEIGHT * (de**2).mean() + FORCE_WEIGHT * (df**2).mean()


def train(pot: Potential, samples: list[dict], budget: float, batch_size: int, lr: float, seed: int) -> dict:
    """Adam on shuffled mini-batches until ``budget`` seconds have passed."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(pot.parameters(), lr=lr)
    pot.train()
    n_conf = n_steps = 0
    losses: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        order = rng.permutation(len(samples))
        for b in range(0, len(order), batch_size):
            batch = to_dtype(collate([samples[i] for i in order[b : b + batch_size]]), torch.float32)
            opt.zero_grad(set_to_none=True)
            loss = loss_of(pot(batch, create_graph=True), batch)
            loss.backward()
            opt.step()
            n_conf += len(batch[keys.N_ATOMS])
            n_steps += 1
            losses.append(float(loss.detach()))
            if time.perf_counter() - start >= budget:
                break
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "steps": n_steps,
        "conformations": n_conf,
        "epochs": n_conf / len(samples),
        "conformations_per_s": n_conf / elapsed,
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
    }


def evaluate(pot: Potential, samples: list[dict], batch_size: int) -> dict:
    """Held-out MAEs and inference throughput (energy + forces)."""
    pot.eval()
    e_err, f_err, n_atoms_total, seconds = [], [], 0, 0.0
    for b in range(0, len(samples), batch_size):
        batch = to_dtype(collate(samples[b : b + batch_size]), torch.float32)
        t0 = time.perf_counter()
        out = pot(batch)
        seconds += time.perf_counter() - t0
        n = batch[keys.N_ATOMS]
        e_err.append(((out[keys.ENERGY].detach() - batch[keys.ENERGY]).abs() / n).double().numpy())
        f_err.append((out[keys.FORCES].detach() - batch[keys.FORCES]).abs().double().numpy().ravel())
        n_atoms_total += int(n.sum())
    return {
        "energy_mae_mev_per_atom": 1000.0 * float(np.concatenate(e_err).mean()),
        "force_mae_mev_per_A": 1000.0 * float(np.concatenate(f_err).mean()),
        "inference_atoms_per_s": n_atoms_total / seconds,
        "n_conformations": len(samples),
        "n_atoms": n_atoms_total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="ANI-1x layout HDF5 with gfn2.energy/gfn2.forces (Hartree)")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: stable timings on a shared machine; 0: torch's default)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = open_dataset(
        {
            "format": "hdf5",
            "path": args.data,
            "energy_key": "gfn2.energy",
            "forces_key": "gfn2.forces",
            "group_key": "smiles",
            "units": {"energy": "hartree", "length": "angstrom"},
        }
    )
    split = make_split(len(data), {"train": 0.9, "val": 0.1}, groups=data.groups(), seed=args.seed)
    train_idx, test_idx = split["train"], split["val"]
    species = data.elements()
    atomref, rms = fit_atomref(data, train_idx, species)
    train_samples = [data[int(i)] for i in train_idx]  # read once, outside the timed loops
    test_samples = [data[int(i)] for i in test_idx]
    n_test_groups = len(set(data.groups()[test_idx]))
    # what the models must beat: reference energies only, zero forces
    composition = data.composition_matrix(test_idx, species)
    baseline = {
        "energy_mae_mev_per_atom": 1000.0
        * float(np.mean(np.abs(data.energies()[test_idx] - composition @ atomref) / composition.sum(1))),
        "force_mae_mev_per_A": 1000.0 * float(np.mean(np.concatenate([np.abs(s[keys.FORCES]).ravel() for s in test_samples]))),
    }
    print(
        f"data: {len(data)} conformations, {len(train_idx)} train / {len(test_idx)} held out "
        f"({n_test_groups} held-out molecules), elements {species}, per-atom residual RMS {rms * 1000:.1f} meV "
        f"({time.perf_counter() - t0:.0f} s to load)",
        flush=True,
    )

    results = {}
    for name in args.models:
        config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), resolve=True)
        torch.manual_seed(args.seed)
        pot = Potential.build(config, species, atomref=atomref, energy_scale=rms)
        n_params = sum(p.numel() for p in pot.parameters())
        print(f"[{name}] {n_params:,} parameters, training {args.budget:.0f} s ...", flush=True)
        fit = train(pot, train_samples, args.budget, args.batch_size, args.lr, args.seed)
        scores = evaluate(pot, test_samples, args.eval_batch_size)
        results[name] = {"parameters": n_params, "config": config, "training": fit, "test": scores}
        print(
            f"[{name}] {fit['steps']} steps ({fit['epochs']:.2f} epochs); E MAE {scores['energy_mae_mev_per_atom']:.1f} "
            f"meV/atom, F MAE {scores['force_mae_mev_per_A']:.0f} meV/Å",
            flush=True,
        )

    report = {
        "benchmark": "nnp model zoo, equal wall-clock training budget",
        "data": {
            "path": args.data,
            "n_conformations": len(data),
            "n_train": len(train_idx),
            "n_test": len(test_idx),
            "split": "90/10 grouped by molecule (SMILES)",
            "elements": species,
        },
        "training": {
            "budget_s": args.budget,
            "optimizer": f"Adam lr={args.lr}",
            "batch_size": args.batch_size,
            "loss": f"{ENERGY_WEIGHT} * MSE(E/atom, eV) + {FORCE_WEIGHT} * MSE(F, eV/Å)",
            "dtype": "float32",
        },
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "baseline": {"description": "atom reference energies only, zero forces", **baseline},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(results, baseline))
    print(f"wrote {out}")
    return 0


def table(results: dict, baseline: dict) -> str:
    head = f"{'model':<8} {'params':>9} {'E MAE meV/atom':>15} {'F MAE meV/Å':>12} {'train conf/s':>13} {'infer atoms/s':>14} {'epochs':>7}"
    lines = [head, "-" * len(head)]
    lines.append(
        f"{'atomref':<8} {0:>9} {baseline['energy_mae_mev_per_atom']:>15.1f} {baseline['force_mae_mev_per_A']:>12.0f} "
        f"{'-':>13} {'-':>14} {'-':>7}   (reference energies only, zero forces)"
    )
    for name, r in results.items():
        t, s = r["training"], r["test"]
        lines.append(
            f"{name:<8} {r['parameters']:>9,} {s['energy_mae_mev_per_atom']:>15.1f} {s['force_mae_mev_per_A']:>12.0f} "
            f"{t['conformations_per_s']:>13.1f} {s['inference_atoms_per_s']:>14.0f} {t['epochs']:>7.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

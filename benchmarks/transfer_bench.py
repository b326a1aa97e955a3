"""Transfer learning to another level of theory: fine-tune vs train from scratch.

    OMP_NUM_THREADS=1 python benchmarks/transfer_bench.py [--pretrain-minutes 6] [--epochs 100]

1. Hold out whole molecules of ``../shared/data/chno-gfn2.h5`` (GFN2-xTB) for testing.
2. Pretrain ANI (default config) on every GFN2 conformation of the other molecules.
3. Relabel 200 conformations spread over the training molecules with GFN1-xTB
   (tblite, one thread, verbosity 0), and conformations of the held-out molecules
   for the test set.
4. On those 200 GFN1 labels (80/20 train/validation), with the same settings
   (epochs, optimizer, batch size): train ANI from scratch, and fine-tune the
   pretrained model (``finetune.from``) with nothing, the first layer, or every
   layer but the last frozen; atom reference energies refitted to GFN1.
5. Energy and force errors of each on the held-out molecules against GFN1; beside
   them the pretrained GFN2 model as it is, and GFN2's own labels, against GFN1.

Every step runs the shipped commands (``nnp train``, ``nnp evaluate``) in a
subprocess; results in ``benchmarks/results/transfer.json``. Needs tblite
(``pip install tblite``) and the shared data; sized for ~15 minutes on a loaded
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = REPO.parent / "shared" / "data" / "chno-gfn2.h5"
sys.path.insert(0, str(REPO))

from nnp.units import energy_factor  # noqa: E402

HARTREE = energy_factor("hartree")


def nnp(*args: str, log: Path) -> float:
    """Run an nnp command (one thread), its output appended to ``log``; wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), COLUMNS="120")
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ nnp {' '.join(args)}\n")
        f.flush()
        res = subprocess.run([sys.executable, "-m", "nnp.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        raise SystemExit(f"nnp {args[0]} failed (exit {res.returncode}); see {log}")
    return time.time() - t0


def read_source(source: Path) -> list[dict]:
    """One record per (formula group, molecule): numbers, coordinates (n, a, 3), GFN2 labels."""
    out = []
    with h5py.File(source, "r") as f:
        for formula in sorted(f):
            g = f[formula]
            smiles = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in g["smiles"][()]])
            for smi in sorted(set(smiles.tolist())):
                rows = np.flatnonzero(smiles == smi)
                out.append({
                    "formula": formula, "smiles": smi, "numbers": g["atomic_numbers"][()],
                    "coordinates": g["coordinates"][rows], "energy": g["gfn2.energy"][rows], "forces": g["gfn2.forces"][rows],
                })
    return out


def write_h5(path: Path, records: list[dict], key: str) -> int:
    """ANI-1x layout (Hartree, Hartree/Å): records grouped by formula under ``key``.energy/forces."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["formula"], []).append(r)
    n = 0
    with h5py.File(path, "w") as f:
        for formula, rs in groups.items():
            g = f.create_group(formula)
            g["atomic_numbers"] = rs[0]["numbers"]
            g["coordinates"] = np.concatenate([r["coordinates"] for r in rs]).astype(np.float32)
            g[f"{key}.energy"] = np.concatenate([r["energy"] for r in rs]).astype(np.float64)
            g[f"{key}.forces"] = np.concatenate([r["forces"] for r in rs]).astype(np.float32)
            g["smiles"] = np.concatenate([[r["smiles"].encode()] * len(r["energy"]) for r in rs])
            n += len(g[f"{key}.energy"])
    return n


def gfn1(records: list[dict]) -> tuple[list[dict], float, int]:
    """The same conformations relabeled with GFN1-xTB (Hartree, Hartree/Å); failures dropped."""
    from ase import Atoms
    from tblite.ase import TBLite

    calc = TBLite(method="GFN1-xTB", verbosity=0)
    out, failed, t0, n = [], 0, time.time(), 0
    for r in records:
        energies, forces, coords, gfn2 = [], [], [], []
        for xyz, f2 in zip(r["coordinates"], r["forces"]):
            atoms = Atoms(numbers=r["numbers"], positions=xyz.astype(np.float64))
            atoms.calc = calc
            try:
                e, f = atoms.get_potential_energy(), atoms.get_forces()
            except Exception:  # SCF not converged: skip the structure, as active learning would
                failed += 1
                continue
            energies.append(e / HARTREE)
            forces.append(f / HARTREE)
            coords.append(xyz)
            gfn2.append(f2)
            n += 1
        if energies:
            out.append({**r, "coordinates": np.array(coords), "energy": np.array(energies), "forces": np.array(forces),
                        "gfn2_forces": np.array(gfn2)})
    return out, (time.time() - t0) / max(n, 1), failed


def evaluate(model: Path, test: Path, out: Path, log: Path) -> dict:
    nnp("evaluate", f"ckpt={model}", "data=ani1x", f"data.path={test}", "data.energy_key=gfn1.energy",
        "data.forces_key=gfn1.forces", "data.num_workers=0", f"output={out}", "overwrite=true", "plot=false", log=log)
    report = json.loads(out.read_text())
    return {"energy_mae_meV_atom": 1000 * report["energy_per_atom_mae"], "energy_mae_meV": 1000 * report["energy_mae"],
            "forces_mae_meV_A": 1000 * report["forces_mae"], "forces_rmse_meV_A": 1000 * report["forces_rmse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(HERE / ".cache" / "transfer"))
    parser.add_argument("--source", default=str(SOURCE), help="chno-gfn2.h5 (default: ../shared/data)")
    parser.add_argument("--pretrain-minutes", type=float, default=6.0)
    parser.add_argument("--epochs", type=int, default=100, help="epochs of each fine-tune / scratch run")
    parser.add_argument("--n-finetune", type=int, default=200)
    parser.add_argument("--test-molecules", type=int, default=12)
    parser.add_argument("--test-per-molecule", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-pretrained", action="store_true", help="keep WORK/pretrain/model.pt if it exists")
    parser.add_argument("--output", default=str(HERE / "results" / "transfer.json"))
    args = parser.parse_args()
    source = Path(args.source)
    if not source.is_file():
        raise SystemExit(f"{source} not found (the shared reference data; --source FILE)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    molecules = read_source(source)
    order = rng.permutation(len(molecules))
    test_mols = [molecules[i] for i in order[: args.test_molecules]]
    train_mols = [molecules[i] for i in order[args.test_molecules:]]
    n_pretrain = write_h5(work / "pretrain_gfn2.h5", train_mols, "gfn2")

    # 200 conformations spread over the training molecules: round robin, random conformations
    picks: dict[int, list[int]] = {}
    k = 0
    while sum(len(v) for v in picks.values()) < args.n_finetune:
        m = k % len(train_mols)
        free = sorted(set(range(len(train_mols[m]["energy"]))) - set(picks.get(m, [])))
        picks.setdefault(m, []).append(int(rng.choice(free)))
        k += 1
    ft_src = [{**train_mols[m], "coordinates": train_mols[m]["coordinates"][rows], "energy": train_mols[m]["energy"][rows],
               "forces": train_mols[m]["forces"][rows]} for m, rows in picks.items()]
    test_src = []
    for r in test_mols:
        rows = np.sort(rng.choice(len(r["energy"]), size=min(args.test_per_molecule, len(r["energy"])), replace=False))
        test_src.append({**r, "coordinates": r["coordinates"][rows], "energy": r["energy"][rows], "forces": r["forces"][rows]})
    ft_gfn1, t_label, failed_ft = gfn1(ft_src)
    test_gfn1, _, failed_test = gfn1(test_src)
    n_ft = write_h5(work / "finetune_gfn1.h5", ft_gfn1, "gfn1")
    n_test = write_h5(work / "test_gfn1.h5", test_gfn1, "gfn1")
    print(f"data: pretrain {n_pretrain} GFN2 conformations of {len(train_mols)} molecules; fine-tune {n_ft} GFN1 "
          f"({len(picks)} molecules); test {n_test} GFN1 of {len(test_mols)} held-out molecules; "
          f"GFN1 labels {1000 * t_label:.0f} ms each, {failed_ft + failed_test} failed")

    base_dir = work / "pretrain"
    reuse = args.reuse_pretrained and (base_dir / "model.pt").is_file()
    t_pre = 0.0 if reuse else nnp("train", "data=ani1x", f"data.path={work / 'pretrain_gfn2.h5'}", "data.energy_key=gfn2.energy",
                "data.forces_key=gfn2.forces", "data.num_workers=0", "data.split.by=group", "data.split.train=0.9",
                "data.split.val=0.1", "data.split.test=0", "trainer=cpu", "trainer.max_epochs=1000",
                f"trainer.max_time=00:00:{int(args.pretrain_minutes):02d}:{int(60 * (args.pretrain_minutes % 1)):02d}",
                "evaluate_test=false", "overwrite=true", f"hydra.run.dir={base_dir}", log=log)
    base = base_dir / "model.pt"
    results: dict = {"sizes": {"pretrain_gfn2": n_pretrain, "pretrain_molecules": len(train_mols), "finetune_gfn1": n_ft,
                               "finetune_molecules": len(picks), "test_gfn1": n_test, "test_molecules": len(test_mols),
                               "epochs": args.epochs, "pretrain_minutes": args.pretrain_minutes},
                     "gfn1_label_ms": 1000 * t_label, "pretrain_seconds": t_pre, "runs": {}}
    import torch

    results["pretrain_epochs"] = torch.load(base, weights_only=True)["metadata"].get("epochs")
    results["runs"]["pretrained GFN2 model, as it is"] = evaluate(base, work / "test_gfn1.h5", work / "eval_base.json", log)
    common = ["data=ani1x", f"data.path={work / 'finetune_gfn1.h5'}", "data.energy_key=gfn1.energy", "data.forces_key=gfn1.forces",
              "data.num_workers=0", "data.batch_size=16", "data.split.train=0.8", "data.split.val=0.2", "data.split.test=0",
              "trainer=cpu", f"trainer.max_epochs={args.epochs}", "early_stopping.patience=1000", "evaluate_test=false",
              "overwrite=true"]
    variants = {
        "from scratch": [],
        "fine-tuned, nothing frozen": [f"finetune.from={base}"],
        "fine-tuned, layer1 frozen": [f"finetune.from={base}", "finetune.freeze=[layer1]"],
        "fine-tuned, hidden frozen (output layer only)": [f"finetune.from={base}", "finetune.freeze=[hidden]"],
    }
    for k, (name, extra) in enumerate(variants.items()):
        run = work / f"run{k}"
        seconds = nnp("train", *common, *extra, f"hydra.run.dir={run}", log=log)
        results["runs"][name] = {**evaluate(run / "model.pt", work / "test_gfn1.h5", work / f"eval{k}.json", log), "train_seconds": seconds}
        print(name, results["runs"][name], flush=True)
    # the two levels of theory against each other on the test conformations (forces: energies
    # differ by per-element offsets)
    f1 = np.concatenate([r["forces"].reshape(-1, 3) for r in test_gfn1])
    f2 = np.concatenate([r["gfn2_forces"].reshape(-1, 3) for r in test_gfn1])
    results["gfn2_labels_vs_gfn1_forces_mae_meV_A"] = float(1000 * HARTREE * np.abs(f2 - f1).mean())
    results["total_seconds"] = time.time() - t_start
    results["machine"] = "shared 2-core VM, loaded by other jobs; one torch thread per process"
    results["date"] = time.strftime("%Y-%m-%d")
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

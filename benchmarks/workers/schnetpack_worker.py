"""SchNetPack side of the benchmarks (runs in benchmarks/.venvs/schnetpack).

SchNet and PaiNN sized exactly like nnp's (conf/model/{schnet,painn}.yaml with
128 features, 3 interactions, 5 Å): SchNet with 50 Gaussians and a cosine
cutoff, shifted softplus; PaiNN with 20 Bessel functions, a cosine cutoff and
SiLU; both read out by SchNetPack's Atomwise (one hidden layer of 64), forces
by its Forces module. Neighbor lists come from SchNetPack's fastest CPU
backend (matscipy), as in its data pipeline and its ASE calculator.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import schnetpack as spk  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import (  # noqa: E402
    batches,
    common_loss,
    epoch_case,
    fit_epochs,
    heldout_errors,
    load_npz,
    main,
    md_case,
    recipe_split,
    reference_energy,
    split_structures,
    to_atoms,
)
from schnetpack import properties as P  # noqa: E402
from schnetpack.data.loader import _atoms_collate_fn  # noqa: E402
from schnetpack.interfaces import SpkCalculator  # noqa: E402

CUTOFF = 5.0


def build(model: str):
    cutoff_fn = spk.nn.CosineCutoff(CUTOFF)
    if model == "schnet":
        rep = spk.representation.SchNet(
            n_atom_basis=128, n_interactions=3,
            radial_basis=spk.nn.GaussianRBF(n_rbf=50, cutoff=CUTOFF), cutoff_fn=cutoff_fn,
        )
        act = spk.nn.shifted_softplus
    elif model == "painn":
        rep = spk.representation.PaiNN(
            n_atom_basis=128, n_interactions=3,
            radial_basis=spk.nn.BesselRBF(n_rbf=20, cutoff=CUTOFF), cutoff_fn=cutoff_fn,
        )
        act = F.silu
    else:
        raise ValueError(f"schnetpack has no {model} model here")
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=128, output_key="energy", activation=act),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    )


def neighbor_list():
    return spk.transform.MatScipyNeighborList(cutoff=CUTOFF)


def to_inputs(structures, nbl=None) -> dict[str, torch.Tensor]:
    """SchNetPack's data path: per-structure dict -> neighbor list -> float32 -> collate."""
    nbl = nbl or neighbor_list()
    cast = spk.transform.CastTo32()
    samples = []
    for k, s in enumerate(structures):
        d = {
            P.idx: torch.tensor([k]),
            P.n_atoms: torch.tensor([len(s["Z"])]),
            P.Z: torch.from_numpy(s["Z"].astype(np.int64)),
            P.R: torch.from_numpy(s["R"]),
            P.cell: torch.from_numpy(s["cell"]).view(1, 3, 3),
            P.pbc: torch.from_numpy(s["pbc"]).view(1, 3),
        }
        if "energy" in s:
            d["energy"] = torch.tensor([s["energy"]])
            d["forces"] = torch.from_numpy(s["forces"])
        samples.append(cast(nbl(d)))
    return _atoms_collate_fn(samples)


# ------------------------------------------------------------------ cases
def train(dataset: str, batch_size: int, model: str = "schnet", jit: bool = False) -> dict:
    """Training steps on batches whose neighbor lists its data pipeline computed beforehand (not
    timed; its cost is ``pipeline_s_per_batch``): forward + force loss + backward + AdamW."""
    if model not in ("schnet", "painn"):
        return {"error": f"schnetpack has no {model} here"}
    structures = split_structures(load_npz(dataset))
    net = build(model)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    run = torch.jit.script(net) if jit else net
    t0 = time.perf_counter()
    data = [to_inputs(b) for b in batches(structures, batch_size)]
    pipeline_s = (time.perf_counter() - t0) / len(data)
    state = {"k": 0}

    def step():
        batch = data[state["k"] % len(data)]
        state["k"] += 1
        inputs = {k: v for k, v in batch.items()}
        inputs[P.R] = batch[P.R].detach().clone()  # the model marks it requires_grad in place
        out = run(inputs)
        n = batch[P.n_atoms].to(out["energy"].dtype)
        loss = ((out["energy"] - batch["energy"]) / n).pow(2).mean()
        loss = loss + 10.0 * (out["forces"] - batch["forces"]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"call": step, "items": batch_size, "unit": "conformations/s", "measure": {"warmup": 3},
            "info": {"pipeline_s_per_batch": pipeline_s,
                     "variant": f"{'jit' if jit else 'eager'}, neighbor lists precomputed (not timed)"}}


def single_point(system: str, model: str = "schnet", jit: bool = False) -> dict:
    """One structure from its arrays: neighbor list (matscipy) + collate + energy + forces."""
    if model not in ("schnet", "painn"):
        return {"error": f"schnetpack has no {model} here"}
    (structure,) = split_structures(load_npz(system))
    net = build(model).eval()
    run = torch.jit.script(net) if jit else net
    nbl = neighbor_list()
    n = len(structure["Z"])
    return {"call": lambda: run(to_inputs([structure], nbl)), "items": n, "unit": "atoms/s",
            "measure": {"warmup": 0, "min_time": 0},
            "info": {"n_atoms": n, "variant": f"{'jit' if jit else 'eager'}, matscipy neighbor list included"}}


def md(system: str, steps: int, model: str = "schnet", jit: bool = False, skin: float = 0.0) -> dict:
    """SpkCalculator with matscipy neighbors; ``skin`` > 0: its SkinNeighborList (rebuilt when an atom
    moved more than skin / 2); ``jit``: the loaded model scripted, as schnetpack.md's calculator does."""
    if model not in ("schnet", "painn"):
        return {"error": f"schnetpack has no {model} here"}
    (structure,) = split_structures(load_npz(system))
    nbl = spk.transform.SkinNeighborList(neighbor_list(), cutoff_skin=skin) if skin else neighbor_list()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(build(model), path)
        calc = SpkCalculator(str(path), neighbor_list=nbl, energy_unit="eV",
                             position_unit="Angstrom", dtype=torch.float32)
    if jit:
        calc.model = torch.jit.script(calc.model)
    variant = f"SpkCalculator, {'jit' if jit else 'eager'}, matscipy" + (f", skin {skin:g} Å" if skin else "")
    return md_case(to_atoms(structure), calc, steps, variant)


def train_command(model: str, dataset: str, epochs: int, batch_size: int = 32, structures: int = 320) -> dict:
    """SchNetPack's own training loop as its tutorials write it: ASEAtomsData + AtomsDataModule
    (matscipy neighbor lists in the data loader, CastTo32), AtomisticTask (MSE energy 0.01 +
    forces 0.99, AdamW 5e-4), Lightning Trainer with ModelCheckpoint and a TensorBoard logger;
    same structures and 80/10/10 split sizes as ``nnp train``; epochs timed by a callback."""
    import torchmetrics
    from ase.io import read
    from common import cached_extxyz, epoch_timer
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    if model not in ("schnet", "painn"):
        return {"error": f"schnetpack has no {model} here"}
    frames = read(cached_extxyz(dataset, structures), index=":")
    n_train, n_val = int(0.8 * structures), int(0.1 * structures)

    def one_training() -> dict:
        here = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp, epoch_timer() as timer:
            os.chdir(tmp)  # AtomsDataModule writes its splitting.lock in the working directory
            db = spk.data.ASEAtomsData.create(
                f"{tmp}/data.db", distance_unit="Ang", property_unit_dict={"energy": "eV", "forces": "eV/Ang"})
            db.add_systems([{"energy": np.array([a.get_potential_energy()]), "forces": a.get_forces()}
                            for a in frames], frames)
            data = spk.data.AtomsDataModule(
                f"{tmp}/data.db", batch_size=batch_size, num_train=n_train, num_val=n_val,
                num_test=structures - n_train - n_val, split_file=f"{tmp}/split.npz",
                transforms=[neighbor_list(), spk.transform.CastTo32()], num_workers=0, pin_memory=False)
            data.prepare_data()
            data.setup()
            outputs = [
                spk.task.ModelOutput(name=name, loss_fn=torch.nn.MSELoss(), loss_weight=weight,
                                     metrics={"MAE": torchmetrics.MeanAbsoluteError()})
                for name, weight in (("energy", 0.01), ("forces", 0.99))
            ]
            task = spk.task.AtomisticTask(model=build(model), outputs=outputs,
                                          optimizer_cls=torch.optim.AdamW, optimizer_args={"lr": 5e-4})
            trainer = Trainer(max_epochs=epochs, default_root_dir=tmp, accelerator="cpu", devices=1,
                              logger=TensorBoardLogger(tmp), enable_progress_bar=False,
                              callbacks=[ModelCheckpoint(dirpath=f"{tmp}/ckpt", monitor="val_loss")])
            trainer.fit(task, datamodule=data)
            os.chdir(here)
        return timer.result(n_train)

    return epoch_case(one_training, batch_size, f"AtomsDataModule + AtomisticTask + Trainer, {epochs} epochs")


def fit(repeats: int, epochs: int = 15, batch_size: int = 32, model: str = "schnet", seed: int = 0) -> dict:
    """Accuracy on held-out molecules (recipe_bench.py): SchNetPack's SchNet/PaiNN trained by its
    documented recipe (AdamW, lr 5e-4, RemoveOffsets of reference energies: its MD17 tutorial, whose
    loss weights 0.01 energy / 0.99 forces on MSE per structure and per component are the
    benchmark's common loss), neighbor lists precomputed by its pipeline (timed apart)."""
    if model not in ("schnet", "painn"):
        return {"error": f"schnetpack has no {model} here"}
    torch.manual_seed(seed)
    train_s, val_s, test_s, meta = recipe_split()
    ew, fw, per_atom = meta["energy_weight"], meta["forces_weight"], meta["per_atom_energy"]
    net = build(model)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4)
    nbl = neighbor_list()

    def prepared(structures):
        out = []
        for b in range(0, len(structures), batch_size):
            chunk = structures[b : b + batch_size]
            batch = to_inputs(chunk, nbl)
            ref = torch.tensor([reference_energy(s, meta["atomref"]) for s in chunk], dtype=batch["energy"].dtype)
            batch["energy"] = batch["energy"] - ref
            out.append((batch, ref))
        return out

    def run(batch):
        inputs = dict(batch)
        inputs[P.R] = batch[P.R].detach().clone()  # the model marks it requires_grad in place
        return net(inputs)

    def loss_of(item):
        batch, _ = item
        out = run(batch)
        n = batch[P.n_atoms].to(out["energy"].dtype)
        return common_loss(out["energy"] - batch["energy"], n, out["forces"] - batch["forces"], ew, fw, per_atom)

    def train_step(item, epoch):
        loss = loss_of(item)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    train_b, val_b, test_b = prepared(train_s), prepared(val_s), prepared(test_s)
    pipeline_s = time.perf_counter() - t0
    res = fit_epochs(
        epochs, train_b, val_b, train_step, lambda b: float(loss_of(b).detach()),
        lambda: {k: v.clone() for k, v in net.state_dict().items()}, net.load_state_dict, seed,
    )
    energies, forces = [], []
    for batch, ref in test_b:
        out = run(batch)
        ends = np.cumsum(batch[P.n_atoms].numpy())
        f = out["forces"].detach().double().numpy()
        for k in range(len(ref)):
            energies.append(float(out["energy"][k].detach() + ref[k]))
            forces.append(f[ends[k] - int(batch[P.n_atoms][k]) : ends[k]])
    return {**res, **heldout_errors(energies, forces, test_s), "n_train": len(train_s),
            "pipeline_s": pipeline_s, "variant": f"SchNetPack {model}, AdamW lr 5e-4, common loss"}


if __name__ == "__main__":
    main({"train": train, "single_point": single_point, "md": md, "train_command": train_command,
          "fit": lambda **kw: {"result": fit(0, **kw)}})

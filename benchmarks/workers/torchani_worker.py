"""TorchANI side of the benchmarks (runs in benchmarks/.venvs/torchani).

The model is TorchANI's own ANI-1x architecture, assembled untrained from the
same constants nnp uses (AEV ``ani1x``, cosine cutoff, ANI-1x network sizes,
CELU(0.1)), one network per element, zero self energies. Inputs are TorchANI's
padded (molecules, atoms) layout with -1 for padding, as its docs recommend.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchani  # noqa: E402
from ase.data import chemical_symbols  # noqa: E402
from common import (  # noqa: E402
    batches,
    common_loss,
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
from torchani.arch import Assembler  # noqa: E402


def build(symbols: list[str], neighborlist: str = "all_pairs", jit: bool = False):
    asm = Assembler(periodic_table_index=True)
    asm.set_symbols(symbols)
    asm.set_global_cutoff_fn("cosine")
    asm.set_aev_computer(angular="ani1x", radial="ani1x", strategy="pyaev")
    asm.set_atomic_networks(ctor="ani1x")
    asm.set_neighborlist(neighborlist)
    asm.set_zeros_as_self_energies()
    model = asm.assemble(1)
    return torch.jit.script(model) if jit else model


def symbols_of(structures) -> list[str]:
    zs = sorted({int(z) for s in structures for z in s["Z"]})
    return [chemical_symbols[z] for z in zs]


def padded(structures, dtype=torch.float32):
    """list of structures -> species (M, A) with -1 padding, coords (M, A, 3), forces, energies."""
    m = len(structures)
    a = max(len(s["Z"]) for s in structures)
    species = torch.full((m, a), -1, dtype=torch.long)
    coords = torch.zeros((m, a, 3), dtype=dtype)
    forces = torch.zeros((m, a, 3), dtype=dtype)
    energies = torch.zeros(m, dtype=dtype)
    for k, s in enumerate(structures):
        n = len(s["Z"])
        species[k, :n] = torch.from_numpy(s["Z"].astype(np.int64))
        coords[k, :n] = torch.from_numpy(s["R"]).to(dtype)
        if "forces" in s:
            forces[k, :n] = torch.from_numpy(s["forces"]).to(dtype)
        energies[k] = s.get("energy", 0.0)
    return species, coords, forces, energies


def energy_forces(model, species, coords, cell=None, pbc=None):
    coords = coords.detach().requires_grad_(True)
    energies = model((species, coords), cell, pbc).energies
    forces = -torch.autograd.grad(energies.sum(), coords)[0]
    return energies, forces


# ------------------------------------------------------------------ cases
def ani_batch(batch_size: int = 256, jit: bool = False) -> dict:
    """Energy + forces of padded batches built beforehand (model only)."""
    structures = split_structures(load_npz("chno"))
    model = build(symbols_of(structures), "all_pairs", jit)
    inputs = [padded(b)[:2] for b in batches(structures, batch_size)]
    state = {"k": 0}

    def step():
        species, coords = inputs[state["k"] % len(inputs)]
        state["k"] += 1
        energy_forces(model, species, coords)

    return {"call": step, "items": batch_size, "unit": "molecules/s", "info": {"variant": "jit" if jit else "eager"}}


def single_point(system: str, neighborlist: str = "cell_list", jit: bool = False, model: str = "ani") -> dict:
    """One structure from its arrays: padding + neighbor list + energy + forces."""
    if model != "ani":
        return {"error": "torchani provides ANI only"}
    (structure,) = split_structures(load_npz(system))
    net = build(symbols_of([structure]), neighborlist, jit)
    n = len(structure["Z"])
    cell = pbc = None
    if structure["pbc"].any():
        cell = torch.from_numpy(structure["cell"]).float()
        pbc = torch.from_numpy(structure["pbc"])

    def call():
        species, coords, _, _ = padded([structure])
        return energy_forces(net, species, coords, cell, pbc)

    return {"call": call, "items": n, "unit": "atoms/s", "measure": {"warmup": 0, "min_time": 0},
            "info": {"n_atoms": n, "variant": f"{'jit' if jit else 'eager'}, {neighborlist}"}}


def _optimizers(model):
    """TorchANI's force-training recipe: AdamW on weights (small decay on the middle
    layers), SGD on biases (examples/nnp_training_force.py)."""
    weights, decayed, biases = [], [], []
    for net in model.neural_networks.atomics.values():
        layers = list(net.layers) + [net.final_layer]
        for k, layer in enumerate(layers):
            (decayed if k in (1, 2) else weights).append(layer.weight)
            biases.append(layer.bias)
    adamw = torch.optim.AdamW([{"params": weights}, {"params": decayed, "weight_decay": 1e-5}], lr=1e-3)
    sgd = torch.optim.SGD(biases, lr=1e-3)
    return adamw, sgd


def train(dataset: str, batch_size: int, model: str = "ani", jit: bool = False) -> dict:
    """TorchANI's force-training recipe on padded batches built beforehand."""
    if model != "ani":
        return {"error": "torchani provides ANI only"}
    structures = split_structures(load_npz(dataset))
    net = build(symbols_of(structures), "all_pairs")
    net.train()
    adamw, sgd = _optimizers(net)
    run = torch.jit.script(net) if jit else net
    data = [padded(b) for b in batches(structures, batch_size)]
    mse = torch.nn.MSELoss(reduction="none")
    state = {"k": 0}

    def step():
        species, coords, true_forces, true_energies = data[state["k"] % len(data)]
        state["k"] += 1
        coords = coords.detach().requires_grad_(True)
        num_atoms = (species >= 0).sum(dim=1, dtype=true_energies.dtype)
        energies = run((species, coords)).energies
        forces = -torch.autograd.grad(energies.sum(), coords, create_graph=True, retain_graph=True)[0]
        energy_loss = (mse(energies, true_energies) / num_atoms.sqrt()).mean()
        force_loss = (mse(true_forces, forces).sum(dim=(1, 2)) / num_atoms).mean()
        loss = energy_loss + 0.1 * force_loss
        adamw.zero_grad()
        sgd.zero_grad()
        loss.backward()
        adamw.step()
        sgd.step()

    return {"call": step, "items": batch_size, "unit": "conformations/s", "measure": {"warmup": 3},
            "info": {"variant": f"examples/nnp_training_force.py recipe, {'jit' if jit else 'eager'}"}}


def md(system: str, steps: int, model: str = "ani", jit: bool = False) -> dict:
    if model != "ani":
        return {"error": "torchani provides ANI only"}
    (structure,) = split_structures(load_npz(system))
    atoms = to_atoms(structure)
    neighborlist = "cell_list" if atoms.pbc.any() or len(atoms) > 500 else "all_pairs"
    net = build(symbols_of([structure]), neighborlist, jit=False)
    return md_case(atoms, net.ase(jit=jit), steps, f"{'jit' if jit else 'eager'}, {neighborlist}")


def fit(repeats: int, epochs: int = 15, batch_size: int = 32, model: str = "ani", seed: int = 0) -> dict:
    """Accuracy on held-out molecules (recipe_bench.py): TorchANI's ANI-1x trained by its documented
    force recipe (AdamW on weights with decay on the middle layers + SGD on biases, lr 1e-3,
    examples/nnp_training_force.py) on the benchmark's common loss, in eV, with the same
    least-squares reference energies as every code (TorchANI's EnergyShifter does the same fit)."""
    if model != "ani":
        return {"error": "torchani provides ANI only"}
    torch.manual_seed(seed)
    train_s, val_s, test_s, meta = recipe_split()
    ew, fw, per_atom = meta["energy_weight"], meta["forces_weight"], meta["per_atom_energy"]
    net = build(symbols_of(train_s + val_s + test_s), "all_pairs")
    adamw, sgd = _optimizers(net)

    def prepared(structures):
        out = []
        for b in range(0, len(structures), batch_size):
            chunk = structures[b : b + batch_size]
            species, coords, forces, energies = padded(chunk)
            ref = torch.tensor([reference_energy(s, meta["atomref"]) for s in chunk], dtype=energies.dtype)
            out.append((species, coords, forces, energies - ref, ref))
        return out

    def loss_of(batch, create_graph):
        species, coords, true_forces, true_energies, _ = batch
        coords = coords.detach().requires_grad_(True)
        n = (species >= 0).sum(dim=1).to(true_energies.dtype)
        energies = net((species, coords)).energies
        forces = -torch.autograd.grad(energies.sum(), coords, create_graph=create_graph)[0]
        mask = species >= 0
        return common_loss(energies - true_energies, n, (forces - true_forces)[mask], ew, fw, per_atom)

    def train_step(batch, epoch):
        loss = loss_of(batch, True)
        adamw.zero_grad()
        sgd.zero_grad()
        loss.backward()
        adamw.step()
        sgd.step()

    train_b, val_b, test_b = prepared(train_s), prepared(val_s), prepared(test_s)
    res = fit_epochs(
        epochs, train_b, val_b, train_step, lambda b: float(loss_of(b, False).detach()),
        lambda: {k: v.clone() for k, v in net.state_dict().items()}, net.load_state_dict, seed,
    )
    energies, forces = [], []
    for batch in test_b:
        species, coords, _, _, ref = batch
        e, f = energy_forces(net, species, coords)
        for k in range(len(ref)):
            n = int((species[k] >= 0).sum())
            energies.append(float(e[k].detach() + ref[k]))
            forces.append(f[k, :n].detach().double().numpy())
    return {**res, **heldout_errors(energies, forces, test_s), "n_train": len(train_s),
            "variant": "TorchANI ANI-1x, examples/nnp_training_force.py optimizers, common loss"}


if __name__ == "__main__":
    assert torchani.__version__
    main({"ani_batch": ani_batch, "single_point": single_point, "train": train, "md": md,
          "fit": lambda **kw: {"result": fit(0, **kw)}})

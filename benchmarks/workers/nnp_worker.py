"""nnp side of the benchmarks (runs in the project's own .venv).

Models are built from the shipped configs (conf/model/<name>.yaml), so the ANI
constants are exactly the ones users get; SchNet and PaiNN are sized like the
SchNetPack models they are compared with (128 features, 3 interactions, 5 Å).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    batches,
    load_npz,
    main,
    md_run,
    measure,
    peak_memory,
    split_structures,
    to_atoms,
)
from omegaconf import OmegaConf  # noqa: E402

from nnp import keys  # noqa: E402
from nnp.calculator import NNPCalculator, batch_to  # noqa: E402
from nnp.data.collate import collate  # noqa: E402
from nnp.potential import Potential  # noqa: E402
from nnp.training.backward import backward_to_parameters  # noqa: E402
from nnp.training.loss import EnergyForceLoss  # noqa: E402

# Sizes shared with the SchNetPack models (see schnetpack_worker.py).
SIZES = {"schnet": {"n_features": 128, "n_interactions": 3, "cutoff": 5.0},
         "painn": {"n_features": 128, "n_interactions": 3, "cutoff": 5.0}}


def model_config(name: str) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), resolve=True)
    cfg.update(SIZES.get(name, {}))
    return cfg


def build(name: str, structures, dtype=torch.float32) -> Potential:
    species = sorted({int(z) for s in structures for z in s["Z"]})
    return Potential.build(model_config(name), species).to(dtype)


def to_batch(structures, dtype=torch.float32) -> dict[str, torch.Tensor]:
    samples = []
    for k, s in enumerate(structures):
        sample = {keys.Z: s["Z"].astype(np.int64), keys.R: s["R"], keys.CELL: s["cell"],
                  keys.PBC: s["pbc"], keys.STRUCTURE_ID: k}
        if "energy" in s:
            sample[keys.ENERGY] = s["energy"]
            sample[keys.FORCES] = s["forces"]
        samples.append(sample)
    return batch_to(collate(samples), "cpu", dtype)


# ------------------------------------------------------------------ cases
def ani_batch(repeats: int, batch_size: int = 256, model: str = "ani", fused: bool = True) -> dict:
    """``fused=False``: ANI's reference descriptor path (autograd through the AEV's ops)."""
    structures = split_structures(load_npz("chno"))
    pot = build(model, structures).eval()
    set_fused(pot, fused)
    inputs = [to_batch(b) for b in batches(structures, batch_size)]
    state = {"k": 0}

    def step():
        pot(inputs[state["k"] % len(inputs)], compute_forces=True)
        state["k"] += 1

    t = measure(step, repeats)
    return {**t, "items_per_s": batch_size / t["median_s"], "unit": "molecules/s"}


def single_point(repeats: int, system: str, model: str = "ani") -> dict:
    (structure,) = split_structures(load_npz(system))
    pot = build(model, [structure]).eval()
    batch = to_batch([structure])
    n = len(structure["Z"])
    mem = peak_memory(lambda: pot(batch, compute_forces=True))  # first call, fresh process
    t = measure(lambda: pot(batch, compute_forces=True), repeats, warmup=1, min_time=0)
    return {**t, **mem, "n_atoms": n, "items_per_s": n / t["median_s"], "unit": "atoms/s"}


def set_fused(pot: Potential, fused: bool) -> None:
    if hasattr(pot.model, "aev"):
        pot.model.aev.fused = bool(fused)


def train(repeats: int, dataset: str, batch_size: int, model: str = "ani", fused: bool = True) -> dict:
    structures = split_structures(load_npz(dataset))
    pot = build(model, structures).train()
    set_fused(pot, fused)
    loss_fn = EnergyForceLoss()
    opt = torch.optim.AdamW(pot.parameters(), lr=1e-3)
    data = [to_batch(b) for b in batches(structures, batch_size)]
    state = {"k": 0}

    def step():
        batch = data[state["k"] % len(data)]
        state["k"] += 1
        pred = pot(batch, compute_forces=True, create_graph=True)
        loss, _ = loss_fn(pred, batch)
        opt.zero_grad(set_to_none=True)
        backward_to_parameters(loss, pot)  # as nnp train's Lightning module does
        opt.step()

    t = measure(step, repeats, warmup=3)
    return {**t, "items_per_s": batch_size / t["median_s"], "unit": "conformations/s"}


def md(repeats: int, system: str, steps: int, model: str = "ani", jit: bool = False) -> dict:
    (structure,) = split_structures(load_npz(system))
    atoms = to_atoms(structure)
    calc = NNPCalculator(build(model, [structure]), jit=jit)
    res = md_run(atoms, calc, steps, repeats)
    return {**res, "n_atoms": len(atoms), "variant": "TorchScript" if jit else "eager"}


if __name__ == "__main__":
    main({"ani_batch": ani_batch, "single_point": single_point, "train": train, "md": md})

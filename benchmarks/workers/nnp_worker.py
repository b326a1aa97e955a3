"""nnp side of the benchmarks (runs in the project's own .venv).

Models are built from the shipped configs (conf/model/<name>.yaml), so the ANI
constants are exactly the ones users get; SchNet and PaiNN are sized like the
SchNetPack models they are compared with (128 features, 3 interactions, 5 Å).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    batches,
    epoch_case,
    load_npz,
    main,
    md_case,
    split_structures,
    to_atoms,
)
from omegaconf import OmegaConf  # noqa: E402

from nnp import keys  # noqa: E402
from nnp.calculator import NNPCalculator, batch_to  # noqa: E402
from nnp.data.collate import collate  # noqa: E402
from nnp.nn.alloc import keep_freed_memory  # noqa: E402
from nnp.potential import Potential  # noqa: E402
from nnp.training.backward import backward_to_parameters  # noqa: E402
from nnp.training.loss import EnergyForceLoss  # noqa: E402

keep_freed_memory()  # what every nnp command does first (nnp/cli.py): freed memory stays in the heap

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
def ani_batch(batch_size: int = 256, model: str = "ani", fused: bool = True) -> dict:
    """Energy + forces of batches of small molecules, collated beforehand (model only).
    ``fused=False``: ANI's reference descriptor path (autograd through the AEV's ops)."""
    structures = split_structures(load_npz("chno"))
    pot = build(model, structures).eval()
    set_fused(pot, fused)
    inputs = [to_batch(b) for b in batches(structures, batch_size)]
    state = {"k": 0}

    def step():
        pot(inputs[state["k"] % len(inputs)], compute_forces=True)
        state["k"] += 1

    return {"call": step, "items": batch_size, "unit": "molecules/s", "info": {"variant": "eager"}}


def single_point(system: str, model: str = "ani") -> dict:
    """One structure from its arrays: collate + neighbor list + energy + forces (the same
    boundaries as SchNetPack's neighbor list + collate and TorchANI's padding)."""
    (structure,) = split_structures(load_npz(system))
    pot = build(model, [structure]).eval()
    n = len(structure["Z"])
    return {"call": lambda: pot(to_batch([structure]), compute_forces=True), "items": n, "unit": "atoms/s",
            "measure": {"warmup": 0, "min_time": 0}, "info": {"n_atoms": n, "variant": "collate included"}}


def set_fused(pot: Potential, fused: bool) -> None:
    if hasattr(pot.model, "aev"):
        pot.model.aev.fused = bool(fused)


def train(dataset: str, batch_size: int, model: str = "ani", fused: bool = True) -> dict:
    """Training steps on batches collated beforehand: forward + force loss + backward + AdamW."""
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

    return {"call": step, "items": batch_size, "unit": "conformations/s", "measure": {"warmup": 3},
            "info": {"variant": "neighbors searched in the step"}}


def md(system: str, steps: int, model: str = "ani", jit: bool = False, skin: float = 0.0) -> dict:
    (structure,) = split_structures(load_npz(system))
    calc = NNPCalculator(build(model, [structure]), jit=jit, skin=skin)
    variant = ("TorchScript" if jit else "eager") + (f", skin {skin:g} Å" if skin else "")
    return md_case(to_atoms(structure), calc, steps, variant)


def train_command(model: str, dataset: str, epochs: int, batch_size: int = 32, structures: int = 320) -> dict:
    """The shipped ``nnp train`` (Hydra config, data loader, Lightning, EMA, checkpoints, logs), in
    this process, on the first ``structures`` structures of a cached set written as extxyz (80/10/10
    split); the time of each epoch (training + validation + checkpoints) from a Lightning callback."""
    from common import cached_extxyz, epoch_timer

    from nnp.cli import main as nnp_main

    data = cached_extxyz(dataset, structures)
    size = SIZES.get(model, {})

    def one_training() -> dict:
        with tempfile.TemporaryDirectory() as tmp, epoch_timer() as timer:
            argv = ["train", f"model={model}", "trainer=cpu", f"trainer.max_epochs={epochs}",
                    "data.format=ase", f"data.path={data}", "data.energy_key=energy", "data.forces_key=forces", "data.units.energy=eV", "data.units.length=angstrom",
                    f"data.batch_size={batch_size}", "evaluate_test=false", "early_stopping.patience=1000",
                    f"hydra.run.dir={tmp}/run", *[f"model.{k}={v}" for k, v in size.items()]]
            rc = nnp_main(argv)
            if rc != 0:
                raise RuntimeError(f"nnp train exited {rc}")
        return timer.result(int(0.8 * structures))

    return epoch_case(one_training, batch_size, f"nnp train, {epochs} epochs")


if __name__ == "__main__":
    main({"ani_batch": ani_batch, "single_point": single_point, "train": train, "md": md,
          "train_command": train_command})

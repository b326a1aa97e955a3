"""Schedules of a training run: learning-rate warmup and loss-weight stages.

Warmup (``optim.warmup_steps``) multiplies the learning rate of the first
optimizer steps by ``(step + 1) / (warmup_steps + 1)``; it scales the rate the
named schedule (``optim.scheduler``, plateau/cosine/none from
:data:`nnp.registry.SCHEDULERS`) has set, only for the duration of the step,
so the two combine without either overwriting the other.

Loss stages (``loss.stages``) change the loss weights from an epoch on, the
way the best recipes end a run (e.g. a last stage with a larger energy
weight). Each stage is a mapping with ``from_epoch`` (0-based) and any of
``energy_weight`` / ``forces_weight`` (values) or ``energy_factor`` /
``forces_factor`` (multipliers of ``loss.energy_weight`` /
``loss.forces_weight``). The weights in force are logged every epoch
(``loss_energy_weight``, ``loss_forces_weight`` in csv/metrics.csv). The
validation loss keeps the base weights, so checkpoints, early stopping and
the plateau schedule compare epochs of different stages on one scale.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch

from nnp.errors import NNPError

STAGE_KEYS = ("from_epoch", "energy_weight", "forces_weight", "energy_factor", "forces_factor")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier of 0-based optimizer step ``step``: linear up to 1 over ``warmup_steps`` steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / (warmup_steps + 1)


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """The optimizer's learning rates times ``factor`` inside the block, restored after it."""
    if factor == 1.0:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


def parse_stages(stages: Sequence[Mapping[str, Any]] | None) -> list[dict[str, float]]:
    """Checked stages sorted by ``from_epoch``; NNPError naming ``loss.stages[i].key`` otherwise."""
    out = []
    for i, stage in enumerate(stages or []):
        if not isinstance(stage, Mapping):
            raise NNPError(f"loss.stages[{i}]={stage!r}: a mapping such as {{from_epoch: 10, energy_factor: 10}}")
        for key, value in stage.items():
            if key not in STAGE_KEYS:
                raise NNPError(f"loss.stages[{i}].{key}: not a stage setting (settings: {', '.join(STAGE_KEYS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise NNPError(f"loss.stages[{i}].{key}={value!r}: a number >= 0")
        if "from_epoch" not in stage or int(stage["from_epoch"]) != stage["from_epoch"]:
            raise NNPError(f"loss.stages[{i}]: needs from_epoch, a whole number (the 0-based epoch it starts at)")
        for term in ("energy", "forces"):
            if f"{term}_weight" in stage and f"{term}_factor" in stage:
                raise NNPError(f"loss.stages[{i}]: give {term}_weight or {term}_factor, not both")
        out.append({k: float(v) for k, v in stage.items()})
    return sorted(out, key=lambda s: s["from_epoch"])


def weights_at(epoch: int, base: Mapping[str, float], stages: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The loss weights in force at 0-based ``epoch``: the base, then each stage started by then, in order."""
    weights = {"energy_weight": float(base["energy_weight"]), "forces_weight": float(base["forces_weight"])}
    for stage in stages:
        if stage["from_epoch"] > epoch:
            break
        for term in ("energy", "forces"):
            if f"{term}_weight" in stage:
                weights[f"{term}_weight"] = stage[f"{term}_weight"]
            elif f"{term}_factor" in stage:
                weights[f"{term}_weight"] = float(base[f"{term}_weight"]) * stage[f"{term}_factor"]
    return weights


class LossStages(pl.Callback):
    """Sets the training loss's weights at the start of every epoch (``loss.stages``); the module logs them."""

    def __init__(self, stages: Sequence[Mapping[str, Any]] | None):
        self.stages = parse_stages(stages)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss_fn = pl_module.loss_fn
        base = {"energy_weight": pl_module.val_loss_fn.energy_weight, "forces_weight": pl_module.val_loss_fn.forces_weight}
        weights = weights_at(trainer.current_epoch, base, self.stages)
        loss_fn.energy_weight = weights["energy_weight"]
        loss_fn.forces_weight = weights["forces_weight"]

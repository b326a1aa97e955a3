"""Schedules of a training run: learning-rate warmup and loss-weight stages.

Warmup (``optim.warmup_steps``) multiplies the learning rate of the first
optimizer steps by ``(step + 1) / (warmup_steps + 1)``; it scales the rate the
named schedule (``optim.scheduler``, plateau/cosine/none from
:data:`nnp.registry.SCHEDULERS`) has set, only for the duration of the step,
so the two combine without either overwriting the other.

Cosine (``optim.scheduler.name=cosine``) decays the rate once per optimizer
step, from ``optim.lr`` down to ``min_lr`` at the last step of the run
(``trainer.max_epochs`` x steps per epoch; ``t_max`` epochs when set), so a
15-epoch run ends as close to zero as a 500-epoch one. ``optim.warmup_epochs``
gives the warmup in epochs (any data size); ``optim.warmup_steps`` > 0 wins.

Loss stages (``loss.stages``) change the loss weights from an epoch on, the
way the best recipes end a run (e.g. a last stage with a larger energy
weight). Each stage is a mapping with ``from_epoch`` (0-based) or
``from_fraction`` (of ``trainer.max_epochs``: 0.8 = the last fifth of any run,
rounded to the nearest epoch) and any of
``energy_weight`` / ``forces_weight`` (values) or ``energy_factor`` /
``forces_factor`` (multipliers of ``loss.energy_weight`` /
``loss.forces_weight``). The weights in force are logged every epoch
(``loss_energy_weight``, ``loss_forces_weight`` in csv/metrics.csv). The
validation loss keeps the base weights, so checkpoints, early stopping and
the plateau schedule compare epochs of different stages on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch

from nnp.config.stages import STAGE_KEYS, parse_stages  # noqa: F401  (re-exported: the loss-stage settings)
from nnp.report import console


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier of 0-based optimizer step ``step``: linear up to 1 over ``warmup_steps`` steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / (warmup_steps + 1)


def run_steps(total_steps: float | int | None, max_epochs: int | None) -> tuple[int | None, float | None]:
    """(optimizer steps of the run, steps per epoch) from Lightning's ``estimated_stepping_batches``;
    (None, None) when the run has no step limit (``max_epochs=-1``)."""
    if total_steps is None or not math.isfinite(float(total_steps)) or total_steps <= 0:
        return None, None
    per_epoch = float(total_steps) / max_epochs if max_epochs and max_epochs > 0 else None
    return int(total_steps), per_epoch


def resolve_warmup(optim: Mapping[str, Any], steps_per_epoch: float | None) -> int:
    """Warmup steps: ``optim.warmup_steps`` when > 0, else ``optim.warmup_epochs`` x steps per epoch."""
    steps = int(optim.get("warmup_steps") or 0)
    if steps > 0:
        return steps
    epochs = float(optim.get("warmup_epochs") or 0.0)
    return int(round(epochs * steps_per_epoch)) if epochs > 0 and steps_per_epoch else 0


def cosine_schedule(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], max_epochs: int | None,
                    total_steps: float | int | None = None) -> dict[str, Any]:
    """Lightning's lr_scheduler dict of a cosine decay to ``min_lr`` over the run (``t_max`` epochs when set).

    Stepped per optimizer step when the run's length in steps is known (``total_steps``), per epoch
    otherwise; a run without an epoch limit decays over 100 epochs."""
    steps, per_epoch = run_steps(total_steps, max_epochs)
    epochs = int(cfg.get("t_max") or 0) or (max_epochs if max_epochs and max_epochs > 0 else 100)
    min_lr = float(cfg.get("min_lr", 1e-6))
    if per_epoch:
        t_max = max(1, int(round(epochs * per_epoch)))
        return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=min_lr),
                "interval": "step"}
    return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=min_lr),
            "interval": "epoch"}


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


_noted: set[int] = set()


def resolve_stages(stages: Sequence[Mapping[str, float]], max_epochs: int | None) -> list[dict[str, float]]:
    """Stages with ``from_fraction`` turned into ``from_epoch`` = round(fraction x ``max_epochs``), sorted.

    A run without an epoch limit (``max_epochs`` -1 or None: ``trainer.max_time`` only) has no
    fraction: those stages are left out, with a warning (the default stage must not stop such a run)."""
    out = []
    for i, stage in enumerate(stages):
        stage = dict(stage)
        if "from_fraction" in stage:
            if not max_epochs or max_epochs < 0:
                if i not in _noted:  # said once per stage, not every epoch
                    _noted.add(i)
                    console.print(f"[yellow]note:[/] loss.stages[{i}] (from_fraction) left out: the run has no "
                                  "trainer.max_epochs; give from_epoch instead")
                continue
            stage["from_epoch"] = float(round(stage.pop("from_fraction") * max_epochs))
        out.append(stage)
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
        weights = weights_at(trainer.current_epoch, base, resolve_stages(self.stages, trainer.max_epochs))
        loss_fn.energy_weight = weights["energy_weight"]
        loss_fn.forces_weight = weights["forces_weight"]

"""Lightning module: a Potential, the loss, the optimizer and LR schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from nnp import keys
from nnp.calculator import batch_to
from nnp.potential import Potential
from nnp.registry import OPTIMIZERS, SCHEDULERS
from nnp.training.loss import EnergyForceLoss


class PotentialModule(pl.LightningModule):
    """Trains a :class:`~nnp.potential.Potential` on energies and forces.

    Forces are -dE/dR by autograd; training on them needs the graph of the
    gradient (``create_graph``), validation only needs the gradient itself.
    """

    def __init__(self, potential: Potential, loss: Mapping[str, Any], optim: Mapping[str, Any]):
        super().__init__()
        self.potential = potential
        potential.fitting = True  # leaves out terms the labels do not contain (nnp.terms)
        self.loss_fn = EnergyForceLoss(**dict(loss))
        self.optim_cfg = dict(optim)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        batch = batch_to(batch, self.device, self.potential.atomref.dtype)
        has_forces = keys.FORCES in batch
        train_forces = stage == "train" and has_forces and self.loss_fn.uses_forces
        has_stress = keys.STRESS in batch and getattr(self.loss_fn, "uses_stress", False)
        with torch.enable_grad():  # validation needs dE/dR too
            pred = self.potential(batch, compute_forces=has_forces, compute_stress=has_stress,
                                  create_graph=train_forces or (stage == "train" and has_stress))
        loss, metrics = self.loss_fn(pred, batch)
        n = int(batch[keys.N_ATOMS].shape[0])
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss.detach(), batch_size=n, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=not on_step)
        for name, value in metrics.items():
            self.log(f"{stage}_{name}", value, batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def configure_optimizers(self):
        # Optimizers and schedules are named choices (nnp.registry), like every `name:` in the configs.
        cfg = self.optim_cfg
        # frozen parameters (fine-tuning: requires_grad=False) stay out of the optimizer
        params = [p for p in self.potential.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS.get(cfg.get("name") or "adamw")(params, cfg)
        sched = dict(cfg.get("scheduler") or {})
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        schedule = SCHEDULERS.get(sched.get("name") or "none")(optimizer, sched, max_epochs)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}

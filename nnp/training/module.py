"""Lightning module: a Potential, the loss, the optimizer and LR schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from nnp import keys
from nnp.calculator import batch_to
from nnp.errors import NNPError
from nnp.potential import Potential
from nnp.training.loss import EnergyForceLoss


class PotentialModule(pl.LightningModule):
    """Trains a :class:`~nnp.potential.Potential` on energies and forces.

    Forces are -dE/dR by autograd; training on them needs the graph of the
    gradient (``create_graph``), validation only needs the gradient itself.
    """

    def __init__(self, potential: Potential, loss: Mapping[str, Any], optim: Mapping[str, Any]):
        super().__init__()
        self.potential = potential
        self.loss_fn = EnergyForceLoss(**dict(loss))
        self.optim_cfg = dict(optim)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        batch = batch_to(batch, self.device, self.potential.atomref.dtype)
        has_forces = keys.FORCES in batch
        train_forces = stage == "train" and has_forces and self.loss_fn.uses_forces
        with torch.enable_grad():  # validation needs dE/dR too
            pred = self.potential(batch, compute_forces=has_forces, create_graph=train_forces)
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
        cfg = self.optim_cfg
        name = str(cfg.get("name", "adamw")).lower()
        params = self.potential.parameters()
        lr = float(cfg.get("lr", 1e-3))
        wd = float(cfg.get("weight_decay", 0.0))
        if name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        elif name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
        elif name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd)
        else:
            raise NNPError(f"optim.name={name!r}: choose adamw, adam or sgd")
        sched = dict(cfg.get("scheduler") or {})
        kind = str(sched.get("name", "none")).lower()
        if kind in ("none", "null", ""):
            return opt
        if kind == "plateau":
            s = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=float(sched.get("factor", 0.5)),
                patience=int(sched.get("patience", 10)), min_lr=float(sched.get("min_lr", 1e-6)),
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "monitor": "val_loss", "interval": "epoch"}}
        if kind == "cosine":
            t_max = int(sched.get("t_max", 0)) or int(self.trainer.max_epochs or 100)
            s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=float(sched.get("min_lr", 1e-6)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "epoch"}}
        raise NNPError(f"optim.scheduler.name={kind!r}: choose plateau, cosine or none")

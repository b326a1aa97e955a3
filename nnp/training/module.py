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
from nnp.training.backward import backward_to_parameters
from nnp.training.loss import EnergyForceLoss
from nnp.training.schedules import resolve_warmup, run_steps, scaled_lr, warmup_factor


class PotentialModule(pl.LightningModule):
    """Trains a :class:`~nnp.potential.Potential` on energies and forces.

    Forces are -dE/dR by autograd; training on them needs the graph of the
    gradient (``create_graph``), validation only needs the gradient itself.
    ``loss_fn`` (training) takes the weights of the current ``loss.stages``
    stage; ``val_loss_fn`` keeps the configured weights, so ``val_loss`` is
    comparable across stages.
    """

    def __init__(self, potential: Potential, loss: Mapping[str, Any], optim: Mapping[str, Any]):
        super().__init__()
        self.potential = potential
        potential.fitting = True  # leaves out terms the labels do not contain (nnp.terms)
        self.loss_fn = EnergyForceLoss.from_config(loss)
        self.val_loss_fn = EnergyForceLoss.from_config(loss)
        self.optim_cfg = dict(optim)
        self.warmup_steps = int(self.optim_cfg.get("warmup_steps") or 0)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        batch = batch_to(batch, self.device, self.potential.atomref.dtype)
        has_forces = keys.FORCES in batch
        loss_fn = self.loss_fn if stage == "train" else self.val_loss_fn
        train_forces = stage == "train" and has_forces and loss_fn.uses_forces
        has_stress = keys.STRESS in batch and getattr(loss_fn, "uses_stress", False)
        with torch.enable_grad():  # validation needs dE/dR too
            # training with forces_weight=0 skips forces: computed without create_graph, they would
            # free the graph the energy loss backpropagates through
            pred = self.potential(batch, compute_forces=has_forces and (stage != "train" or train_forces), compute_stress=has_stress,
                                  create_graph=train_forces or (stage == "train" and has_stress))
        loss, metrics = loss_fn(pred, batch)
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

    def on_train_epoch_end(self) -> None:
        # the loss weights in force this epoch (loss.stages), beside the losses in csv/metrics.csv
        self.log("loss_energy_weight", float(self.loss_fn.energy_weight), on_epoch=True)
        self.log("loss_forces_weight", float(self.loss_fn.forces_weight), on_epoch=True)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # into the parameters only, not d loss / d positions (nnp.training.backward)
        backward_to_parameters(loss, self, *args, **kwargs)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # optim.warmup_steps: the first steps run at a fraction of the scheduled LR (nnp.training.schedules)
        with scaled_lr(optimizer, warmup_factor(int(self.trainer.global_step), self.warmup_steps)):
            optimizer.step(closure=optimizer_closure)

    def configure_optimizers(self):
        # Optimizers and schedules are named choices (nnp.registry), like every `name:` in the configs.
        cfg = self.optim_cfg
        # frozen parameters (fine-tuning: requires_grad=False) stay out of the optimizer
        params = [p for p in self.potential.parameters() if p.requires_grad]
        if self._trainer is not None and "mixed" in str(self.trainer.precision) and self.trainer.gradient_clip_val:
            # Lightning refuses to clip gradients a fused optimizer unscales itself (AMP)
            cfg = {**cfg, "fused": False}
        optimizer = OPTIMIZERS.get(cfg.get("name") or "adamw")(params, cfg)
        sched = dict(cfg.get("scheduler") or {})
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        # the run's length in optimizer steps: cosine decays over it, optim.warmup_epochs counts in it
        total_steps = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        self.warmup_steps = resolve_warmup(cfg, run_steps(total_steps, max_epochs)[1])
        schedule = SCHEDULERS.get(sched.get("name") or "none")(optimizer, sched, max_epochs, total_steps)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}

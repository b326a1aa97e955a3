"""Exponential moving average (EMA) of the weights, through Lightning's ``WeightAveraging``.

``ema.decay`` = d > 0 keeps, after every optimizer step k (1-based),

    a_1 = w_1,    a_k = d_k a_{k-1} + (1 - d_k) w_k,    d_k = min(d, k / (k + 9))

(w_k: the weights after step k). The ramp d_k (as in ``torch_ema`` and
MACE) lets the average follow the fast early changes instead of remembering
the first steps' weights for ~1/(1-d) steps; from step 9 d/(1-d) on it is d.

Lightning's callback does the rest: validation runs on the averaged weights
(so ``val_loss``, the best checkpoint, early stopping and the plateau schedule
all judge the average), a checkpoint's ``state_dict`` holds the average (the
raw weights go to ``current_model_state``, the count to ``averaging_state``),
so ``model.pt`` - written from the best checkpoint's ``state_dict`` - holds
the average, and resuming from a checkpoint restores both. Buffers (species
table, reference energies, scale) are constants: copied, not averaged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning.callbacks import WeightAveraging


def ema_decay_at(n_averaged: int, decay: float) -> float:
    """The decay used when the ``n_averaged + 1``-th weights enter the average (n_averaged >= 1)."""
    return min(float(decay), (1.0 + n_averaged) / (10.0 + n_averaged))


class _EMAUpdate:
    """``avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel` (a picklable class, not a closure)."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, n_averaged: torch.Tensor) -> torch.Tensor:
        d = ema_decay_at(int(n_averaged), self.decay)
        return averaged + (current - averaged) * (1.0 - d)


class EMA(WeightAveraging):
    """Lightning's weight averaging with the EMA update above, after every optimizer step."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay={decay}: must be in (0, 1)")
        self.decay = float(decay)
        super().__init__(use_buffers=False, avg_fn=_EMAUpdate(decay))

    @property
    def averaged(self) -> torch.nn.Module | None:
        """The averaged copy of the LightningModule (None before fit starts)."""
        return None if self._average_model is None else self._average_model.module


def ema_callbacks(cfg: Mapping[str, Any] | None) -> list[EMA]:
    """[EMA] when ``ema.decay`` is set and > 0, [] otherwise (``ema.decay=0`` or ``ema=null``: off)."""
    decay = float((cfg or {}).get("decay") or 0.0)
    return [EMA(decay)] if decay > 0 else []

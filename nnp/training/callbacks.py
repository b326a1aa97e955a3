"""The Lightning callbacks of the training recipe, from the train config.

EMA of the weights (``ema.decay``, :mod:`nnp.training.averaging`), loss-weight
stages (``loss.stages``, :mod:`nnp.training.schedules`) and the learning-curve
plot (:mod:`nnp.training.curves`). Warmup (``optim.warmup_steps``) lives in
the module's optimizer step, not in a callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from nnp.training.averaging import ema_callbacks
from nnp.training.curves import LearningCurves
from nnp.training.schedules import LossStages, parse_stages, resolve_stages


def recipe_callbacks(cfg: Mapping[str, Any], run_dir: str | Path) -> list[pl.Callback]:
    """The callbacks ``cfg`` (the train config: ``ema``, ``loss.stages``) asks for, plus the curves of ``run_dir``.

    ``cfg`` may be a DictConfig: only ``ema`` and ``loss.stages`` are resolved (others may hold
    interpolations that resolve only inside Hydra's app)."""
    ema, stages = cfg.get("ema"), (cfg.get("loss") or {}).get("stages")
    if isinstance(ema, DictConfig) or isinstance(stages, ListConfig):
        ema, stages = (OmegaConf.to_container(v, resolve=True) if v is not None else None for v in (ema, stages))
    callbacks: list[pl.Callback] = list(ema_callbacks(ema))
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if resolve_stages(parse_stages(stages), max_epochs if isinstance(max_epochs, int) else None):  # checked before work
        callbacks.append(LossStages(stages))
    callbacks.append(LearningCurves(run_dir))
    return callbacks

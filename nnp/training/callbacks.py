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

from nnp.training.averaging import ema_callbacks
from nnp.training.curves import LearningCurves
from nnp.training.schedules import LossStages, parse_stages


def recipe_callbacks(cfg: Mapping[str, Any], run_dir: str | Path) -> list[pl.Callback]:
    """The callbacks ``cfg`` (the train config: ``ema``, ``loss.stages``) asks for, plus the curves of ``run_dir``."""
    callbacks: list[pl.Callback] = list(ema_callbacks(cfg.get("ema")))
    stages = (cfg.get("loss") or {}).get("stages")
    if parse_stages(stages):
        callbacks.append(LossStages(stages))
    callbacks.append(LearningCurves(run_dir))
    return callbacks

"""Which schema checks which config: each command's, and each group's by its folder in ``conf/``."""

from __future__ import annotations

from nnp.config.schema import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainCommand,
    TrainerConfig,
)
from nnp.config.schema_active import ActiveLearnCommand, LabelerConfig
from nnp.config.schema_dynamics import MDCommand, RelaxCommand
from nnp.config.schema_inference import EvaluateCommand, PredictCommand

#: Schema of each Hydra command's composed config.
COMMANDS: dict[str, type] = {
    "train": TrainCommand,
    "evaluate": EvaluateCommand,
    "predict": PredictCommand,
    "md": MDCommand,
    "relax": RelaxCommand,
    "active_learn": ActiveLearnCommand,
}

#: Schema of each config group, by the group's folder name in conf/ (a user's --config-dir too).
GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "labeler": LabelerConfig,
}

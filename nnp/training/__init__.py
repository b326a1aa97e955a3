"""Training: the loss, the Lightning module and data module."""

from nnp.training.loss import EnergyForceLoss
from nnp.training.module import PotentialModule

__all__ = ["EnergyForceLoss", "PotentialModule"]

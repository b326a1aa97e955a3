"""Loss stages (``loss.stages``): their settings and the check of a list of them.

Torch-free, so the config checker refuses a bad stage before any work starts;
:mod:`nnp.training.schedules` turns ``from_fraction`` into epochs and applies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nnp.errors import NNPError

STAGE_KEYS = ("from_epoch", "from_fraction", "energy_weight", "forces_weight", "energy_factor", "forces_factor")


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
        if ("from_epoch" in stage) == ("from_fraction" in stage):
            raise NNPError(f"loss.stages[{i}]: needs from_epoch (the 0-based epoch it starts at) or from_fraction "
                           "(of trainer.max_epochs), one of them")
        if "from_epoch" in stage and int(stage["from_epoch"]) != stage["from_epoch"]:
            raise NNPError(f"loss.stages[{i}].from_epoch={stage['from_epoch']!r}: a whole number")
        if "from_fraction" in stage and not stage["from_fraction"] <= 1:
            raise NNPError(f"loss.stages[{i}].from_fraction={stage['from_fraction']!r}: a fraction of the run in [0, 1]")
        for term in ("energy", "forces"):
            if f"{term}_weight" in stage and f"{term}_factor" in stage:
                raise NNPError(f"loss.stages[{i}]: give {term}_weight or {term}_factor, not both")
        out.append({k: float(v) for k, v in stage.items()})
    return sorted(out, key=lambda s: s.get("from_epoch", s.get("from_fraction", 0.0)))

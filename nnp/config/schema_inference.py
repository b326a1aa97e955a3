"""Schema of the commands that apply a model to structures: ``nnp evaluate`` and ``nnp predict``
(and what ``nnp md`` and ``nnp relax`` share with predict: :class:`StructuresCommand`).

See :mod:`nnp.config.schema` for how the classes steer the checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnp.config.fields import setting
from nnp.config.schema import CKPT, DTYPES, DataConfig


@dataclass
class EvaluateCommand:
    data: DataConfig | None = setting(None, hint="null: the data the model was trained on")
    ckpt: Any = setting(None, **CKPT)
    split: str | None = setting("all", choices=("all", "train", "val", "test"))
    split_file: str | None = setting(None)
    output: str = setting("report.json")
    overwrite: bool = setting(False)
    plot: bool = setting(True)
    calibrate: bool = setting(False)
    calibrate_data: str | None = setting(None)
    batch_size: int = setting(64, ge=1)
    device: str = setting("cpu")
    dtype: str | None = setting(None, choices=DTYPES, hint="null: the model's own")


@dataclass
class StructuresCommand:
    """What every command that runs a model on a structure file reads (predict, md, relax)."""

    ckpt: Any = setting(None, **CKPT)
    input: str = setting(None, required="input=structures.extxyz")
    output: str = setting(None, required="output=out.extxyz")
    overwrite: bool = setting(False)
    index: str | int = setting(":", hint='an ASE index: ":", "0", "-1", "::10"')
    device: str = setting("cpu")
    dtype: str | None = setting(None, choices=DTYPES, hint="null: the model's own")
    min_distance: float = setting(0.5, ge=0, hint="Å")


@dataclass
class PredictCommand(StructuresCommand):
    output: str = setting("predicted.extxyz")
    format: str | None = setting(None, hint="an ASE format or hdf5; null: from the file extension")
    batch_size: int = setting(64, ge=1)
    fast_io: bool = setting(True, hint="extxyz: the extxyz package's C reader (when installed) and a bulk writer; false: ASE's")

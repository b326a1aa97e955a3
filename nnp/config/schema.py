"""The schema of the config groups, the architectures and ``nnp train``: one dataclass each.

The other commands' schemas build on these (:mod:`nnp.config.commands` lists them all).

Every key of the YAML files in ``conf/`` is declared here with its type and
allowed values (:func:`~nnp.config.fields.setting`); defaults mirror the
shipped YAML (the YAML files stay the source of defaults, the schema says what
is allowed). Groups a user points to with ``--config-dir`` are checked with
the same classes: a model config by its ``name:``, the other groups by their
place in the config (``data``, ``loss``, ``optim``, ``trainer``).

Three class attributes steer the checker (:mod:`nnp.config.validate`):

``extra_keys``
    ``"error"`` (default): a key the schema does not declare is refused unless
    the user added it with ``+key=value``; ``"allowed"``: passed through
    (``trainer``: any ``pytorch_lightning.Trainer`` argument); ``"never"``:
    refused even with ``+`` (a model's keys are its constructor's arguments).
``variants`` / ``variant_key``
    the schema is chosen by a key of the value (``model.name``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from nnp.config.fields import Rule, group, setting
from nnp.registry import (
    OPTIMIZERS,
    SCHEDULERS,
)

# Names the models accept (nnp/nn: build_activation, build_radial_basis, build_cutoff);
# tests/test_config_schema.py checks that each one builds.
ACTIVATIONS = ("celu", "gelu", "shifted_softplus", "silu", "softplus", "ssp", "tanh")
RADIAL_BASES = ("bessel", "gaussian", "inverse_gaussian")
CUTOFF_FNS = ("cosine", "polynomial")
DTYPES = ("float32", "float64")
MD_ENSEMBLES = ("nve", "nvt", "langevin", "npt")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "ipu")

REQUIRED_CKPT = "ckpt=runs/.../model.pt, or a committee: ckpt=[a.pt,b.pt]"


def energy_units() -> list[str]:
    from nnp.units import ENERGY_UNITS  # imports ase: only when a data config is checked

    return sorted(ENERGY_UNITS)


def length_units() -> list[str]:
    from nnp.units import LENGTH_UNITS

    return sorted(LENGTH_UNITS)


def is_ckpt(value: Any) -> bool:
    """A model file, or a non-empty list of them (a committee)."""
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) and v for v in value)


def is_split_size(value: Any) -> bool:
    """A fraction in [0, 1] (a float) or a count (a whole number >= 0); null: the rest."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, float) and 0.0 <= value <= 1.0


def is_devices(value: Any) -> bool:
    """Lightning's ``devices``: a count (>= 1, or -1 for all), "auto", "0,1", or a list of indices."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        return value == "auto" or re.fullmatch(r"-1|\d+(\s*,\s*\d+)*,?", value.strip()) is not None
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


# ===================================================================== data


@dataclass
class UnitsConfig:
    energy: str | None = setting("eV", choices=energy_units, ignore_case=True, hint="null: as the file declares")
    length: str | None = setting("angstrom", choices=length_units, ignore_case=True, hint="null: as the file declares")


_SIZE = dict(check=is_split_size, allowed="a fraction in [0, 1] (0.1) or a whole count (1000), or null (the rest)")


@dataclass
class SplitConfig:
    train: Any = setting(0.8, **_SIZE)
    val: Any = setting(0.1, **_SIZE)
    test: Any = setting(0.1, **_SIZE)
    by: str = setting("random", choices=("random", "group"))
    seed: int = setting(42)


@dataclass
class DataConfig:
    format: str = setting("hdf5", choices=("hdf5", "ase"))
    path: str = setting(None, required="data.path=my_data.h5")
    energy_key: str = setting("energy")
    forces_key: str | None = setting("forces", hint="null: energy-only data")
    group_key: str | None = setting(None)
    stress_key: str | None = setting("stress", hint="format=ase: periodic structures' stress labels (eV/Å^3); null: none")
    units: UnitsConfig = group(UnitsConfig)
    skip_nan: bool = setting(True)
    min_distance: float = setting(0.5, ge=0)
    batch_size: int = setting(32, ge=1)
    num_workers: int = setting(0, ge=0)
    split: SplitConfig = group(SplitConfig)
    split_file: str | None = setting(None)
    charge_key: str | None = setting(None, hint="each structure's total charge (e), for terms=[coulomb]; null: neutral")
    dipole_key: str | None = setting(None, hint="each structure's dipole (3,) e Å, for loss.dipole_weight")
    cache_pairs: bool = setting(True, hint="training: each structure's neighbor pairs found once, kept across epochs")
    pair_cache_mb: float = setting(256, ge=0, hint="MiB per process for cached pairs; structures beyond it are searched every step")


# ===================================================================== model

_WIDTHS = dict(item=Rule(ge=1), hint="layer widths, e.g. [64,64]")


@dataclass
class ModelConfig:
    """Any model: the schema is chosen by ``name`` (see :data:`MODELS`)."""

    extra_keys: ClassVar[str] = "never"
    variant_key: ClassVar[str] = "name"
    variants: ClassVar[dict[str, type]] = {}

    name: str = setting("ani")


@dataclass
class AniModel(ModelConfig):
    name: str = setting("ani")
    radial_cutoff: float = setting(5.2, gt=0, hint="Å")
    angular_cutoff: float = setting(3.5, gt=0, hint="Å")
    radial_eta: float = setting(16.0, gt=0)
    radial_shifts: list[float] | None = setting(None, item=Rule(ge=0), min_items=1, hint="Å; null: 16 from 0.9 Å up to the cutoff")
    angular_eta: float = setting(8.0, gt=0)
    angular_zeta: float = setting(32.0, gt=0)
    angular_radial_shifts: list[float] | None = setting(None, item=Rule(ge=0), min_items=1, hint="Å; null: 4 from 0.9 Å up to the cutoff")
    angular_sections: int = setting(8, ge=1)
    activation: str = setting("celu", choices=ACTIVATIONS)
    hidden: list[int] = setting([160, 128, 96], **_WIDTHS)
    hidden_per_element: dict[str, list[int]] | None = setting(
        None, item=Rule(item=Rule(ge=1)), hint="element symbol: layer widths, e.g. {H: [64,64]}; null: hidden for all")


@dataclass
class SchNetModel(ModelConfig):
    name: str = setting("schnet")
    n_features: int = setting(128, ge=1)
    n_interactions: int = setting(3, ge=1)
    cutoff: float = setting(5.0, gt=0, hint="Å")
    cutoff_fn: str = setting("cosine", choices=CUTOFF_FNS)
    radial_basis: str = setting("gaussian", choices=RADIAL_BASES)
    n_rbf: int = setting(50, ge=1)
    activation: str = setting("ssp", choices=ACTIVATIONS)
    n_filters: int | None = setting(None, ge=1, hint="null: n_features")
    readout_hidden: list[int] | None = setting(None, **_WIDTHS)


@dataclass
class PaiNNModel(ModelConfig):
    name: str = setting("painn")
    n_features: int = setting(128, ge=1)
    n_interactions: int = setting(3, ge=1)
    cutoff: float = setting(5.0, gt=0, hint="Å")
    radial_basis: str = setting("bessel", choices=RADIAL_BASES)
    n_rbf: int = setting(20, ge=1)
    cutoff_fn: str = setting("cosine", choices=CUTOFF_FNS)
    activation: str = setting("silu", choices=ACTIVATIONS)
    readout_hidden: list[int] | None = setting(None, **_WIDTHS)


@dataclass
class HipnnModel(ModelConfig):
    name: str = setting("hipnn")
    n_features: int = setting(80, ge=1)
    n_interactions: int = setting(2, ge=1)
    n_atom_layers: int = setting(3, ge=0)
    n_sensitivities: int = setting(20, ge=1)
    soft_min: float = setting(0.75, gt=0, hint="Å")
    soft_max: float = setting(5.5, gt=0, hint="Å")
    cutoff: float = setting(6.5, gt=0, hint="Å")
    activation: str = setting("softplus", choices=ACTIVATIONS)


#: Schema of each architecture, by the ``name:`` of its model config.
MODELS: dict[str, type] = {"ani": AniModel, "schnet": SchNetModel, "painn": PaiNNModel, "hipnn": HipnnModel}
ModelConfig.variants = MODELS


def register_model_schema(name: str, schema: type) -> None:
    """Declare the settings of a new architecture (beside :func:`nnp.models.register_model`)."""
    MODELS[name] = schema


# ===================================================================== terms
# terms=[coulomb,d3,zbl] (conf/terms/*.yaml, a Hydra multi-select group; nnp.terms)


@dataclass
class CoulombTerm:
    hidden: list[int] = setting([32], **_WIDTHS)
    activation: str = setting("silu", choices=ACTIVATIONS)
    damping: float = setting(1.0, gt=0, hint="Å: sigma of erf(r/sigma)/r")
    ewald_cutoff: float = setting(8.0, gt=0, hint="Å, real-space cutoff of the Ewald sum (periodic cells)")
    ewald_accuracy: float = setting(1.0e-6, gt=0, lt=1)


@dataclass
class D3Term:
    functional: str | None = setting("pbe", hint="dftd3's D3(BJ) table entry: pbe, b3lyp, wb97x, ...; null: give s8, a1, a2")
    in_labels: bool = setting(True, hint="true: the labels contain D3 (learn the rest); false: add it on top at inference")
    s6: float | None = setting(None, ge=0, hint="null: the functional's")
    s8: float | None = setting(None, ge=0, hint="null: the functional's")
    a1: float | None = setting(None, ge=0, hint="null: the functional's")
    a2: float | None = setting(None, ge=0, hint="bohr; null: the functional's")
    s9: float | None = setting(None, ge=0, hint="three-body ATM; null: the functional's")


@dataclass
class ZBLTerm:
    inner: float = setting(0.5, ge=0, hint="fraction of R_cov,i + R_cov,j: full repulsion below")
    outer: float = setting(0.8, gt=0, hint="fraction of R_cov,i + R_cov,j: none above")


@dataclass
class TermsConfig:
    coulomb: CoulombTerm | None = setting(None)
    d3: D3Term | None = setting(None)
    zbl: ZBLTerm | None = setting(None)


# ============================================================ loss, optim, trainer


@dataclass
class LossConfig:
    energy_weight: float = setting(1.0, ge=0)
    forces_weight: float = setting(10.0, ge=0)
    per_atom_energy: bool = setting(True)
    dipole_weight: float = setting(0.0, ge=0, hint="(e Å)^2 MSE of dipoles from the coulomb term's charges")
    stress_weight: float = setting(0.0, ge=0, hint="on MSE(stress) in eV/Å^3, periodic data with stress labels")
    # the recipe (nnp.training.loss, nnp.training.schedules): what each term means is in the README, "Loss"
    kind: str = setting("mse", choices=("mse", "huber"), ignore_case=True)
    huber_delta: float = setting(0.01, gt=0, hint="eV (per atom when per_atom_energy) and eV/Å")
    force_error: str = setting("component", choices=("component", "vector"), hint="MSE over force components or atoms' error vectors")
    stages: list[dict[str, float]] = setting(
        [{"from_fraction": 0.67, "energy_factor": 10.0}], item=Rule(item=Rule(ge=0)),
        hint="[{from_epoch: 10, energy_factor: 10}]: energy_/forces_weight (values) or energy_/forces_factor from an epoch on "
             "(or from_fraction of trainer.max_epochs)")


@dataclass
class SchedulerConfig:
    name: str | None = setting("plateau", choices=SCHEDULERS, ignore_case=True, hint="null: none")
    factor: float = setting(0.5, gt=0, lt=1, hint="plateau: LR multiplier")
    patience: int = setting(10, ge=0, hint="plateau: epochs without improvement")
    min_lr: float = setting(1.0e-6, ge=0)
    t_max: int = setting(0, ge=0, hint="cosine: period in epochs; 0: trainer.max_epochs")


@dataclass
class OptimConfig:
    name: str = setting("adamw", choices=OPTIMIZERS, ignore_case=True)
    lr: float = setting(1.0e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    momentum: float = setting(0.9, ge=0, le=1, hint="sgd")
    scheduler: SchedulerConfig | None = group(SchedulerConfig)
    warmup_steps: int = setting(0, ge=0, hint="optimizer steps of linear LR warmup; 0: none")
    warmup_epochs: float = setting(0.0, ge=0, hint="LR warmup in epochs (x steps per epoch) when warmup_steps is 0")
    fused: bool = setting(False, hint="adam, adamw: torch's fused kernel (4-5x faster steps; off: a kill -9 resume then drifted)")


@dataclass
class TrainerConfig:
    """Keyword arguments of ``pytorch_lightning.Trainer``; any other Trainer argument may be added."""

    extra_keys: ClassVar[str] = "allowed"

    accelerator: str = setting("auto", choices=ACCELERATORS)
    devices: Any = setting("auto", check=is_devices, allowed='a count >= 1, -1 (all), "auto", "0,1" or a list of device indices [0,1]')
    strategy: str = setting("auto")
    num_nodes: int = setting(1, ge=1)
    max_epochs: int = setting(100, ge=1, also=(-1,), allowed="a whole number >= 1, or -1 (no limit)")
    max_time: str | None = setting(None, pattern=r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", allowed='"DD:HH:MM:SS" (e.g. 00:12:00:00) or null')
    gradient_clip_val: float | None = setting(None, ge=0)
    log_every_n_steps: int = setting(10, ge=1)
    check_val_every_n_epoch: int = setting(1, ge=1)
    deterministic: Any = setting(False, check=lambda v: isinstance(v, bool) or v == "warn", allowed='true, false or "warn"')


# ================================================================= commands


@dataclass
class EnsembleConfig:
    size: int = setting(1, ge=1, hint="committee members")
    bootstrap: bool = setting(False)


@dataclass
class EMAConfig:
    decay: float = setting(0.99, ge=0, lt=1, hint="per optimizer step; 0: off (nnp.training.averaging)")


@dataclass
class EarlyStoppingConfig:
    monitor: str = setting("val_loss")
    patience: int = setting(30, ge=0)
    min_delta: float = setting(0.0, ge=0)


@dataclass
class FinetuneConfig:
    """``nnp train finetune.from=base.pt``: start from a trained model (see nnp/training/finetune.py)."""

    from_: str | None = setting(None, key="from", hint="a model or committee file; null: train from scratch")
    freeze: list[str] = setting([], hint="parameter groups of the base's architecture, e.g. [hidden]")
    refit_atomref: bool = setting(True, hint="refit the atom reference energies on the new data")


@dataclass
class FitConfig:
    """What every command that trains a model reads: ``nnp train`` and ``nnp active_learn``."""

    data: DataConfig = group(DataConfig)
    model: ModelConfig = group(AniModel)
    loss: LossConfig = group(LossConfig)
    optim: OptimConfig = group(OptimConfig)
    trainer: TrainerConfig = group(TrainerConfig)
    seed: int = setting(42)
    dtype: str = setting("float32", choices=DTYPES)
    verbose: bool = setting(False, hint="Lightning's model summary and messages")
    ensemble: EnsembleConfig = group(EnsembleConfig)
    early_stopping: EarlyStoppingConfig = group(EarlyStoppingConfig)


@dataclass
class TrainCommand(FitConfig):
    model_file: str = setting("model.pt")
    overwrite: bool = setting(False)
    evaluate_test: bool = setting(True)
    resume: Any = setting(None, check=lambda v: v is None or isinstance(v, bool) or (isinstance(v, str) and bool(v)),
                          allowed="null (continue a checkpoint of the same config in the run directory), "
                                  "a Lightning checkpoint file, true (must continue) or false (start over, with overwrite=true)")
    terms: TermsConfig | None = setting(None, hint="terms=[coulomb,d3,zbl]")
    finetune: FinetuneConfig = group(FinetuneConfig)
    ema: EMAConfig | None = group(EMAConfig)
    energy_scale: str = setting("residual_rms", choices=("residual_rms", "force_rms"), hint="network output scale (nnp.data.statistics)")


#: The ``ckpt=`` setting of every command that loads a model.
CKPT = dict(check=is_ckpt, allowed="a model file, or a list of model files [a.pt,b.pt]", required=REQUIRED_CKPT)

"""Schema of ``nnp active_learn``: the labelers, sampling and selection of each round.

See :mod:`nnp.config.schema` for how the classes steer the checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nnp.config.fields import Rule, group, setting
from nnp.config.schema import FitConfig
from nnp.config.schema_dynamics import DynamicsConfig
from nnp.registry import LABELERS


@dataclass
class SlurmLabelingConfig:
    """``labeler.executor=slurm``: a round's labels as one Slurm job array (submitit, :mod:`nnp.labeling.slurm`)."""

    cluster: str = setting("slurm", choices=("slurm", "local", "debug"),
                           hint="local/debug: submitit's stand-ins on this machine, to try it without Slurm")
    partition: str | None = setting(None, hint="null: the cluster's default")
    time_min: int = setting(60, ge=1, hint="minutes per array task")
    cpus_per_task: int = setting(1, ge=1, hint="also the labeler's OpenMP threads")
    mem: str | None = setting(None, pattern=r"\d+[KMGT]?", allowed='Slurm memory, e.g. "4G"', hint="null: the default")
    array_parallelism: int = setting(32, ge=1, hint="array tasks running at once")
    structures_per_task: int = setting(10, ge=1)
    folder: str | None = setting(None, hint="submitit's job files and logs; null: <round>/slurm")
    additional: dict[str, Any] = setting({}, hint="more sbatch options, e.g. {account: chem, qos: short}")
    poll_s: float = setting(5.0, gt=0, hint="s between checks of the jobs")


@dataclass
class LabelerConfig:
    """Any labeler: the schema is chosen by ``name`` (:data:`nnp.registry.LABELERS`)."""

    variant_key: ClassVar[str] = "name"
    variants: ClassVar[dict[str, type]] = {}

    name: str = setting("xtb", choices=LABELERS)
    kwargs: dict[str, Any] = setting({}, hint="keyword arguments of the calculator class")
    workers: int = setting(1, ge=0, hint="labeling processes; 0: in this process")
    executor: str = setting("local", choices=("local", "slurm"), hint="slurm: a job array, labeler.slurm.*")
    slurm: SlurmLabelingConfig = group(SlurmLabelingConfig)


@dataclass
class XtbLabeler(LabelerConfig):
    name: str = setting("xtb")
    method: str = setting("GFN2-xTB", choices=("GFN2-xTB", "GFN1-xTB"))


@dataclass
class AseLabeler(LabelerConfig):
    name: str = setting("ase")
    calculator: str = setting(None, pattern=r"[\w.]+:\w+", allowed="module:Class, e.g. ase.calculators.emt:EMT",
                              required="labeler.calculator=ase.calculators.emt:EMT")


LabelerConfig.variants = {"xtb": XtbLabeler, "ase": AseLabeler}


@dataclass
class SamplingConfig:
    temperatures_K: list[float] | None = setting([300], item=Rule(ge=0), min_items=1, hint="K; null: [md.temperature_K]")
    trajectories: int = setting(2, ge=1, hint="per round, over the seeds and temperatures in turn")


@dataclass
class SelectionConfig:
    mode: str = setting("top_k", choices=("top_k", "threshold", "random"),
                        hint="threshold: above md.uncertainty.threshold; random: the baseline, uniform picks")
    max_per_round: int = setting(20, ge=1)


@dataclass
class ActiveLearnCommand(FitConfig):
    labeler: LabelerConfig = group(XtbLabeler)
    seeds: str = setting(None, required="seeds=start.extxyz")
    rounds: int = setting(3, ge=1)
    test_data: str | None = setting(None, hint="a labeled file in data's format; null: none")
    md: DynamicsConfig = group(DynamicsConfig)
    sampling: SamplingConfig = group(SamplingConfig)
    selection: SelectionConfig = group(SelectionConfig)

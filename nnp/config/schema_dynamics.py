"""Schema of the commands that move atoms: ``nnp md`` (and its ``md.*`` group) and ``nnp relax``.

See :mod:`nnp.config.schema` for how the classes steer the checker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nnp.config.fields import group, setting
from nnp.config.schema import MD_ENSEMBLES
from nnp.config.schema_inference import StructuresCommand
from nnp.registry import BAROSTATS, MD_ENGINES, RELAX_OPTIMIZERS, THERMOSTATS


@dataclass
class UncertaintyConfig:
    threshold: float | None = setting(None, ge=0, hint="eV/Å; null: only log it")
    action: str = setting("flag", choices=("flag", "stop"))
    output: str | None = setting(None)
    min_interval: int = setting(10, ge=1)
    max_frames: int = setting(1000, ge=1)


@dataclass
class DynamicsConfig:
    ensemble: str = setting("nve", choices=MD_ENSEMBLES, ignore_case=True)
    steps: int = setting(1000, ge=1)
    timestep_fs: float = setting(0.5, gt=0)
    temperature_K: float = setting(300, ge=0)
    friction_per_ps: float = setting(10.0, ge=0)
    init_velocities: bool = setting(True)
    write_interval: int = setting(10, ge=1)
    log_interval: int = setting(10, ge=1)
    seed: int = setting(0)
    max_force: float | None = setting(50.0, ge=0, hint="eV/Å; null: off")
    max_temperature_K: float | None = setting(5000.0, ge=0, hint="null: off")
    min_distance: float | None = setting(0.5, ge=0, hint="Å; null: off")
    skin: float = setting(1.0, ge=0, hint="Å; 0: a new neighbor list every step")
    uncertainty: UncertaintyConfig = group(UncertaintyConfig)
    engine: str = setting("ase", choices=MD_ENGINES, ignore_case=True)
    thermostat: str = setting("langevin", choices=THERMOSTATS, ignore_case=True, hint="nvt; under npt the barostat's own")
    barostat: str = setting("mtk", choices=BAROSTATS, ignore_case=True, hint="npt")
    pressure_bar: float = setting(1.0, hint="npt target pressure (bar)")
    barostat_time_fs: float = setting(500.0, gt=0, hint="npt: the barostat's time constant (fs)")
    compressibility_per_bar: float = setting(4.6e-5, gt=0, hint="barostat=berendsen (1/bar; water 4.6e-5)")
    flexible_cell: bool = setting(False, hint="npt: every cell degree of freedom (else isotropic)")
    restart: bool = setting(False, hint="continue from OUTPUT.restart.npz when there is one")
    max_time: Any = setting(None, check=lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
                            or (isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None),
                            allowed='seconds > 0, "DD:HH:MM:SS" or null')


@dataclass
class MDCommand(StructuresCommand):
    input: str = setting(None, required="input=start.xyz")
    index: str | int = setting("0", hint="an ASE index")
    output: str = setting("md.extxyz")
    log: str | None = setting(None)
    threads: Any = setting("auto", check=lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                           allowed='"auto" or a whole number >= 1')
    md: DynamicsConfig = group(DynamicsConfig)


@dataclass
class RelaxCommand(StructuresCommand):
    output: str = setting("relaxed.extxyz")
    optimizer: str = setting("fire", choices=RELAX_OPTIMIZERS, ignore_case=True)
    fmax: float = setting(0.05, gt=0, hint="eV/Å")
    max_steps: int = setting(500, ge=1)
    cell: bool = setting(False, hint="relax periodic cells too (FrechetCellFilter)")
    pressure_bar: float = setting(0.0, hint="cell=true: target pressure (bar)")

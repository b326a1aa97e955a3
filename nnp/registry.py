"""Named choices: one mechanism for every ``name:`` a config picks.

A :class:`Registry` maps the short names users write (``optim.name=adamw``,
``optim.scheduler.name=cosine``) to builder functions. The config schema
(:mod:`nnp.config`) takes its allowed values from the registries, so a new
entry is accepted by the checks as soon as it is registered, and an unknown
name is refused with one line listing the choices.

The optimizer and LR-scheduler entries live here, not in the training code,
because the schema needs their names before any work starts: this module
imports neither torch nor Lightning (the builders import torch when called).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from nnp.errors import NNPError


class Registry:
    """Builders by name; names are matched case-insensitively.

    ``kind`` names the choice in messages ("optimizer"), ``key`` is the config
    key that selects it ("optim.name").
    """

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@OPTIMIZERS.register("adamw")`` above a builder function."""

        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            self._entries[name.lower()] = builder
            return builder

        return add

    def get(self, name: Any) -> Callable[..., Any]:
        """The builder registered as ``name``; NNPError listing the choices otherwise."""
        builder = self._entries.get(str(name).lower())
        if builder is None:
            raise NNPError(f"{self.key}={name}: unknown {self.kind}; one of {', '.join(self.names())}")
        return builder

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


# --------------------------------------------------------------- optimizers
# builder(params, cfg) -> torch.optim.Optimizer; cfg is the optim config (a dict)

OPTIMIZERS = Registry("optimizer", "optim.name")


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: Mapping[str, Any]):
    import torch

    return _fused_or_not(torch.optim.AdamW, params, cfg)


@OPTIMIZERS.register("adam")
def _adam(params, cfg: Mapping[str, Any]):
    import torch

    return _fused_or_not(torch.optim.Adam, params, cfg)


def _fused_or_not(kind, params, cfg: Mapping[str, Any]):
    """Adam(W), with torch's fused kernel when ``optim.fused`` is true: one pass over all parameters
    instead of the foreach loop, 4-5x faster steps on CPU (1.4 vs 5.4 ms for ANI's 327k parameters,
    1.9 vs 9.6 ms for PaiNN's 577k). Off by default: with it, a run killed (kill -9) and resumed
    ended 0.5% off an uninterrupted one in tests/test_resume.py, where the foreach loop matches
    exactly; the cause is not found. Where torch has no fused kernel for the parameters' device or
    dtype, the foreach one."""
    params = list(params)
    kwargs = {"lr": float(cfg.get("lr", 1e-3)), "weight_decay": float(cfg.get("weight_decay", 0.0))}
    if bool(cfg.get("fused", False)):
        try:
            return kind(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # e.g. a device without the fused kernel
            pass
    return kind(params, **kwargs)


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: Mapping[str, Any]):
    import torch

    return torch.optim.SGD(
        params, lr=float(cfg.get("lr", 1e-3)), momentum=float(cfg.get("momentum", 0.9)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
    )


# ------------------------------------------------------------- LR schedules
# builder(optimizer, cfg, max_epochs, total_steps) -> Lightning's lr_scheduler dict, or None (no schedule);
# total_steps: the run's optimizer steps (Lightning's estimated_stepping_batches; inf without a limit);
# cfg is optim.scheduler (a dict)

SCHEDULERS = Registry("LR scheduler", "optim.scheduler.name")


@SCHEDULERS.register("none")
def _no_schedule(optimizer, cfg: Mapping[str, Any], max_epochs: int | None, total_steps: float | None = None):
    return None


@SCHEDULERS.register("plateau")
def _plateau(optimizer, cfg: Mapping[str, Any], max_epochs: int | None, total_steps: float | None = None):
    import torch

    s = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=float(cfg.get("factor", 0.5)),
        patience=int(cfg.get("patience", 10)), min_lr=float(cfg.get("min_lr", 1e-6)),
    )
    return {"scheduler": s, "monitor": "val_loss", "interval": "epoch"}


@SCHEDULERS.register("cosine")
def _cosine(optimizer, cfg: Mapping[str, Any], max_epochs: int | None, total_steps: float | None = None):
    from nnp.training.schedules import cosine_schedule

    # per optimizer step down to min_lr at the run's last step (t_max: epochs; 0: trainer.max_epochs)
    return cosine_schedule(optimizer, cfg, max_epochs, total_steps)


# ------------------------------------------------------------- energy terms
# builder(settings, model_info) -> nnp.terms.EnergyTerm; settings: terms.<name> (a dict),
# model_info: {"species": [Z...], "cutoff": Å, "n_atom_features": int}

TERMS = Registry("energy term", "terms")


@TERMS.register("coulomb")
def _coulomb(settings: Mapping[str, Any], model_info: Mapping[str, Any]):
    from nnp.terms.coulomb import Coulomb

    return Coulomb(len(model_info["species"]), int(model_info["n_atom_features"]), **dict(settings))


@TERMS.register("d3")
def _d3(settings: Mapping[str, Any], model_info: Mapping[str, Any]):
    from nnp.terms.d3 import D3

    return D3(**dict(settings))


@TERMS.register("zbl")
def _zbl(settings: Mapping[str, Any], model_info: Mapping[str, Any]):
    from nnp.terms.zbl import ZBL

    return ZBL(model_info["species"], float(model_info["cutoff"]), **dict(settings))


# --------------------------------------------------------------- MD engines
# builder() -> None for nnp md's own ASE integrators, or a class taking (atoms, md config)
# with ASE's dynamics interface (attach, run, nsteps) that drives another engine (nnp/engines)

MD_ENGINES = Registry("MD engine", "md.engine")


@MD_ENGINES.register("ase")
def _ase_engine():
    return None


@MD_ENGINES.register("openmm")
def _openmm_engine():
    from nnp.engines.openmm import OpenMMDynamics

    return OpenMMDynamics


@MD_ENGINES.register("lammps")
def _lammps_engine():
    from nnp.engines.lammps import LammpsDynamics

    return LammpsDynamics


# ------------------------------------------------------- MD thermostats, barostats
# ASE integrators by the names ``md.thermostat`` and ``md.barostat`` take (every engine
# maps the same names to its own). builder(atoms, md, timestep) -> an ASE MolecularDynamics;
# md is the ``md`` config, timestep in ASE units. A thermostat's time constant is
# 1 / md.friction_per_ps (Langevin's friction; 10/ps: 100 fs).

THERMOSTATS = Registry("thermostat", "md.thermostat")
BAROSTATS = Registry("barostat", "md.barostat")


def _tdamp(md) -> float:
    from ase import units

    friction = float(md.get("friction_per_ps", 10.0))
    if friction <= 0:
        raise NNPError(f"md.friction_per_ps={friction}: a thermostat needs a positive rate (1/ps)")
    return 1000.0 / friction * units.fs


@THERMOSTATS.register("langevin")
def _langevin(atoms, md, timestep: float):
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin

    # fixcm=False: ASE's centre-of-mass correction adds too much noise to light atoms
    # (measured: aspirin at a 300 K target ran at ~345 K, its hydrogens at ~410 K);
    # the initial velocities have no centre-of-mass motion (Stationary) anyway.
    return Langevin(
        atoms, timestep=timestep, temperature_K=float(md.temperature_K),
        friction=float(md.friction_per_ps) / 1000.0 / units.fs, rng=np.random.default_rng(int(md.seed)), fixcm=False,
    )


@THERMOSTATS.register("nose_hoover")
def _nose_hoover(atoms, md, timestep: float):
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(atoms, timestep=timestep, temperature_K=float(md.temperature_K), tdamp=_tdamp(md))


@THERMOSTATS.register("berendsen")
def _berendsen_nvt(atoms, md, timestep: float):
    from ase.md.nvtberendsen import NVTBerendsen

    return NVTBerendsen(atoms, timestep=timestep, temperature_K=float(md.temperature_K), taut=_tdamp(md), fixcm=False)


def _pressure(md) -> tuple[float, float]:
    """(target pressure, barostat time constant) in ASE units."""
    from ase import units

    return float(md.get("pressure_bar", 1.0)) * units.bar, float(md.get("barostat_time_fs", 500.0)) * units.fs


@BAROSTATS.register("mtk")
def _mtk(atoms, md, timestep: float):
    """Martyna-Tobias-Klein: Nose-Hoover chains on atoms and cell (isotropic, or a flexible cell)."""
    try:
        from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT
    except ImportError:
        raise NNPError("md.barostat=mtk needs ASE's MTK integrators: pip install -U 'ase>=3.26'") from None
    pressure, pdamp = _pressure(md)
    cls = MTKNPT if md.get("flexible_cell", False) else IsotropicMTKNPT
    return cls(atoms, timestep=timestep, temperature_K=float(md.temperature_K), pressure_au=pressure,
               tdamp=_tdamp(md), pdamp=pdamp)


@BAROSTATS.register("berendsen")
def _berendsen_npt(atoms, md, timestep: float):
    """Berendsen weak coupling of temperature and pressure (isotropic, or each cell axis on its own)."""
    from ase import units
    from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen

    pressure, taup = _pressure(md)
    cls = Inhomogeneous_NPTBerendsen if md.get("flexible_cell", False) else NPTBerendsen
    return cls(atoms, timestep=timestep, temperature_K=float(md.temperature_K), pressure_au=pressure, taut=_tdamp(md),
               taup=taup, compressibility_au=float(md.get("compressibility_per_bar", 4.6e-5)) / units.bar, fixcm=False)


@BAROSTATS.register("montecarlo")
def _montecarlo(atoms, md, timestep: float):
    """OpenMM's MonteCarloBarostat: only through ``md.engine=openmm`` (nnp/engines/openmm.py)."""
    raise NNPError("md.barostat=montecarlo is OpenMM's Monte Carlo barostat: use it with md.engine=openmm; "
                   "nnp's own (ASE) integrators offer mtk or berendsen")


#: The thermostat each barostat integrates with (ASE couples them): md.thermostat must be this one,
#: or the default (langevin), which then means "the barostat's own".
BAROSTAT_THERMOSTAT = {"mtk": "nose_hoover", "berendsen": "berendsen", "montecarlo": "langevin"}


# ------------------------------------------------------- structure optimizers (nnp relax)
# builder(target, logfile) -> an ASE Optimizer; target is the atoms or a cell filter around them

RELAX_OPTIMIZERS = Registry("structure optimizer", "optimizer")


@RELAX_OPTIMIZERS.register("fire")
def _fire(target, logfile=None):
    from ase.optimize import FIRE

    return FIRE(target, logfile=logfile)


@RELAX_OPTIMIZERS.register("bfgs")
def _bfgs(target, logfile=None):
    from ase.optimize import BFGS

    return BFGS(target, logfile=logfile)


@RELAX_OPTIMIZERS.register("lbfgs")
def _lbfgs(target, logfile=None):
    from ase.optimize import LBFGS

    return LBFGS(target, logfile=logfile)
# ------------------------------------------------------------------ labelers
# builder(cfg) -> an ASE Calculator instance; cfg is the labeler config (a dict).
# Used by `nnp active-learn` (nnp.labeling) to label the structures it selects.

LABELERS = Registry("labeler", "labeler.name")


@LABELERS.register("xtb")
def _xtb(cfg: Mapping[str, Any]):
    try:
        from tblite.ase import TBLite
    except ImportError:
        raise NNPError("labeler=xtb needs the tblite package: pip install 'nnp[xtb]' (or pip install tblite)") from None
    # verbosity 0: no SCF output per structure
    return TBLite(method=str(cfg.get("method", "GFN2-xTB")), verbosity=0, **dict(cfg.get("kwargs") or {}))


@LABELERS.register("ase")
def _ase_calculator(cfg: Mapping[str, Any]):
    cls = calculator_class(cfg.get("calculator"))
    try:
        return cls(**dict(cfg.get("kwargs") or {}))
    except Exception as err:  # the class's own refusal of its arguments
        raise NNPError(f"labeler.kwargs: {cfg.get('calculator')} does not accept them ({err})") from None


def calculator_class(spec: Any) -> type:
    """The class ``module:Class`` names (``labeler.calculator``), which must be an ASE Calculator."""
    import importlib

    from ase.calculators.calculator import BaseCalculator

    text = str(spec or "")
    if not text or text == "???" or ":" not in text:
        raise NNPError(f"labeler.calculator={spec!r}: give an ASE calculator class as module:Class, e.g. ase.calculators.emt:EMT")
    module_name, _, name = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise NNPError(f"labeler.calculator={text}: cannot import module {module_name!r} ({err})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise NNPError(f"labeler.calculator={text}: module {module_name!r} has no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseCalculator)):
        raise NNPError(f"labeler.calculator={text}: {name} is not an ASE calculator class (a subclass of ase.calculators.calculator.Calculator)")
    return cls

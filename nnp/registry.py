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

    return torch.optim.AdamW(params, lr=float(cfg.get("lr", 1e-3)), weight_decay=float(cfg.get("weight_decay", 0.0)))


@OPTIMIZERS.register("adam")
def _adam(params, cfg: Mapping[str, Any]):
    import torch

    return torch.optim.Adam(params, lr=float(cfg.get("lr", 1e-3)), weight_decay=float(cfg.get("weight_decay", 0.0)))


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: Mapping[str, Any]):
    import torch

    return torch.optim.SGD(
        params, lr=float(cfg.get("lr", 1e-3)), momentum=float(cfg.get("momentum", 0.9)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
    )


# ------------------------------------------------------------- LR schedules
# builder(optimizer, cfg, max_epochs) -> Lightning's lr_scheduler dict, or None (no schedule);
# cfg is optim.scheduler (a dict)

SCHEDULERS = Registry("LR scheduler", "optim.scheduler.name")


@SCHEDULERS.register("none")
def _no_schedule(optimizer, cfg: Mapping[str, Any], max_epochs: int | None):
    return None


@SCHEDULERS.register("plateau")
def _plateau(optimizer, cfg: Mapping[str, Any], max_epochs: int | None):
    import torch

    s = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=float(cfg.get("factor", 0.5)),
        patience=int(cfg.get("patience", 10)), min_lr=float(cfg.get("min_lr", 1e-6)),
    )
    return {"scheduler": s, "monitor": "val_loss", "interval": "epoch"}


@SCHEDULERS.register("cosine")
def _cosine(optimizer, cfg: Mapping[str, Any], max_epochs: int | None):
    import torch

    # t_max 0 (or absent): one cosine over the whole run; max_epochs -1 (no limit) falls back to 100
    t_max = int(cfg.get("t_max") or 0) or (max_epochs if max_epochs and max_epochs > 0 else 100)
    s = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=float(cfg.get("min_lr", 1e-6)))
    return {"scheduler": s, "interval": "epoch"}


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


# ------------------------------------------------------------ model imports
# builder(path, options) -> a Potential or Committee; options: the checked ``nnp import`` options

IMPORTERS = Registry("model format", "nnp import")


@IMPORTERS.register("torchani")
def _torchani(path, options: Mapping[str, Any]):
    import torch

    from nnp.interop.torchani import convert

    return convert(
        path, elements=options.get("elements"), activation=options.get("activation") or "celu",
        radial_cutoff=options.get("radial_cutoff"), angular_cutoff=options.get("angular_cutoff"),
        dtype=getattr(torch, options.get("dtype") or "float32"),
    )

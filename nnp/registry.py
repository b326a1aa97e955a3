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

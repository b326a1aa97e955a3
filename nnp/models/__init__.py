"""Architectures, built by name from a plain config dict.

``build_model({"name": "ani", ...}, species)`` is the one place a name is
turned into a class; saved models store that dict and are rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nnp.errors import NNPError
from nnp.models.ani import ANI
from nnp.models.base import AtomisticModel
from nnp.models.hipnn import HIPNN
from nnp.models.painn import PaiNN
from nnp.models.schnet import SchNet

MODELS: dict[str, Callable[..., AtomisticModel]] = {"ani": ANI, "schnet": SchNet, "painn": PaiNN, "hipnn": HIPNN}


def register_model(name: str, factory: Callable[..., AtomisticModel]) -> None:
    """Add an architecture to the registry (for plugins and new models)."""
    MODELS[name] = factory


def build_model(config: Mapping[str, Any], species: Sequence[int]) -> AtomisticModel:
    """Build an architecture from ``config`` (``name`` plus its keyword arguments).

    ``species``: the sorted atomic numbers the model handles; an atom's species
    index (what models see) is its position in this list.
    """
    options = dict(config)
    name = options.pop("name", None)
    if name not in MODELS:
        raise NNPError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](species=list(species), **options)
    except (TypeError, ValueError) as err:  # unknown keyword, or a bad value (activation, cutoff, ...)
        raise NNPError(f"model {name!r}: {err}") from None


__all__ = ["MODELS", "AtomisticModel", "build_model", "register_model"]

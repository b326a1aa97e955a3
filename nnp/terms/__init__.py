"""Physics terms added to the learned energy: ``terms=[coulomb,d3,zbl]`` for any model.

- :mod:`nnp.terms.coulomb`: learned charges (a head on the model's per-atom
  features) and their damped Coulomb / Ewald energy (:mod:`nnp.terms.ewald`)
- :mod:`nnp.terms.d3`: D3(BJ) dispersion (the dftd3 package)
- :mod:`nnp.terms.zbl`: screened nuclear repulsion at short range

Terms are named choices of :data:`nnp.registry.TERMS`; each is an
:class:`~nnp.terms.base.EnergyTerm` that :class:`~nnp.potential.Potential`
adds to the model's energy, so forces and stress need nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nnp.errors import NNPError
from nnp.registry import TERMS
from nnp.terms.base import EnergyTerm

#: The order terms are built and summed in (stable, so saved files and energies agree).
ORDER = ("zbl", "coulomb", "d3")


def build_terms(config: Mapping[str, Any] | None, model_info: Mapping[str, Any]) -> list[EnergyTerm]:
    """``config``: term name -> its settings (the ``terms`` config, or a model file's entry).

    ``model_info``: ``species`` (sorted Z), ``cutoff`` (Å), ``n_atom_features``.
    An unknown name is one line listing the valid terms; a bad setting one line naming it.
    """
    terms = []
    config = dict(config or {})
    for name in sorted(config, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        builder = TERMS.get(name)
        settings = dict(config[name] or {})
        try:
            terms.append(builder(settings, model_info))
        except TypeError as err:  # an unknown keyword in the settings
            raise NNPError(f"terms.{name}: {err}") from None
    return terms


def check_scriptable(model: torch.nn.Module) -> None:
    """Refuse (one line) a model with an energy term that does not compile to TorchScript
    (d3: the dftd3 package): it is never exported without its term."""
    members = getattr(model, "members", None) or [model]
    for member in members:
        for term in getattr(member, "terms", []):
            if not term.scriptable:
                raise NNPError(
                    f"this model has the {term.name} term, which runs the dftd3 package outside TorchScript: "
                    "it cannot be exported (use the model file with nnp md, nnp predict or the ASE calculator)"
                )


__all__ = ["EnergyTerm", "build_terms", "check_scriptable", "TERMS"]

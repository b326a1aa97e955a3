"""Checks that a training run's terms, data keys and loss fit together (before any data is read),
and the one note about structures without a total charge."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from nnp.errors import NNPError
from nnp.registry import TERMS
from nnp.report import console


def check_terms_setup(cfg: Any, data_cfg: Mapping[str, Any], loss_cfg: Mapping[str, Any]) -> None:
    """One line for a term name that does not exist, a dipole loss without
    charges or dipole labels; a note (once) when coulomb has no total charges (then neutral)."""
    terms = dict(cfg.get("terms") or {})
    for name in terms:
        TERMS.get(name)  # unknown: one line listing the valid terms
    if "d3" in terms:  # the functional's name, before any data is read
        from nnp.terms.d3 import PARAMETERS, damping_parameters

        d3 = dict(terms["d3"] or {})
        damping_parameters(d3.get("functional"), {k: d3.get(k) for k in PARAMETERS})
    if float(loss_cfg.get("dipole_weight", 0.0) or 0.0) > 0:
        if "coulomb" not in terms:
            raise NNPError("loss.dipole_weight > 0 needs charges: add terms=[coulomb]")
        if not data_cfg.get("dipole_key"):
            raise NNPError("loss.dipole_weight > 0 needs dipole labels: set data.dipole_key")
    if "coulomb" in terms and not data_cfg.get("charge_key"):
        note_neutral("terms=[coulomb] without data.charge_key: every structure is taken as neutral")


_said: set[str] = set()
_with_coulomb: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def note_neutral(text: str) -> None:
    """Say once per process that structures without a total charge are taken as neutral."""
    if "neutral" not in _said:
        console.print(f"[yellow]note:[/] {text}")
        _said.add("neutral")


def note_missing_charge(model: Any, batch: Mapping[str, Any]) -> None:
    """:func:`note_neutral` for a batch without total charges run through a model with coulomb."""
    from nnp import keys

    if "neutral" in _said or keys.TOTAL_CHARGE in batch:
        return
    if model not in _with_coulomb:  # looked up once per model: MD calls this every step
        members = getattr(model, "members", None) or [model]  # a committee: its members' terms
        _with_coulomb[model] = any(getattr(t, "name", "") == "coulomb" for m in members for t in getattr(m, "terms", []))
    if _with_coulomb[model]:
        note_neutral("no total charge given (atoms.info['charge']): structures are taken as neutral")

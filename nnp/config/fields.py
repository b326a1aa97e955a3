"""How a config key is declared: its type (the dataclass annotation) and a :class:`Rule`.

``setting(default, gt=0)`` is ``dataclasses.field`` with the rule in its
metadata; the checker (:mod:`nnp.config.validate`) reads both and builds the
"what is allowed" text of an error from them, so the declaration is the only
place a range is written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """Constraints on one value, beyond its type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    #: allowed names: a tuple, a Registry, or a function returning names (called when checking)
    choices: Any = None
    #: compare names after strip().lower() (units, registry names)
    ignore_case: bool = False
    #: literal values allowed besides the type and range (-1: no limit, "auto")
    also: tuple = ()
    #: a text value must match this regular expression (fullmatch)
    pattern: str | None = None
    #: rule for each list item or mapping value
    item: Rule | None = None
    #: a list needs at least this many items
    min_items: int = 0
    #: a custom test of the whole value (for unions the type system cannot say, e.g. ckpt)
    check: Callable[[Any], bool] | None = None
    #: the "what is allowed" text, when the generated one would not say it well
    allowed: str = ""
    #: what the value means, shown after the allowed values: "(no limit)", "(layer widths)"
    hint: str = ""
    #: ??? (Hydra's "must be set") is refused, and this example shown
    required: str = ""
    #: the config key, where it cannot be the field's name (a Python keyword: ``finetune.from``)
    key: str = ""

    def names(self) -> list[str]:
        """The allowed names, sorted as given (a Registry lists its own)."""
        choices = self.choices() if callable(self.choices) and not isinstance(self.choices, Iterable) else self.choices
        return [str(c) for c in choices]


def setting(default: Any = None, **rule: Any) -> Any:
    """A dataclass field with a :class:`Rule` (``setting(100, ge=1)``)."""
    meta = {"rule": Rule(**rule)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type, **rule: Any) -> Any:
    """A nested group of settings (``data.split``), defaulting to the class's defaults."""
    return field(default_factory=cls, metadata={"rule": Rule(**rule)})


def rule_of(f: Any) -> Rule:
    return f.metadata.get("rule") or Rule()


def key_of(f: Any) -> str:
    """The config key of a declared field (its name, unless the rule names another key)."""
    return rule_of(f).key or f.name

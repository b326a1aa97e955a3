"""Output for people (rich console, tables) and scripts (JSON), in one place."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (:func:`nnp.outputs.atomic_path`): an interrupted run loses nothing.

    Non-finite floats become ``null``. Existing files are replaced: commands
    refuse them beforehand (:func:`nnp.outputs.check_writable`) unless ``overwrite=true``.
    """
    from nnp.outputs import atomic_path

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    text = json.dumps(clean(dict(data)), indent=2) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for k, c in enumerate(columns):
        t.add_column(c, justify="left" if k == 0 else "right")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    return t


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)

"""Progress bars for long data jobs (downloads, conversions, scans), on stderr.

Shown only on a terminal, so logs, pipes and tests stay clean.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False)


def progress(kind: str = "items") -> Progress:
    """A transient rich progress bar; ``kind`` "bytes" shows sizes and speed."""
    columns = [TextColumn("{task.description}"), BarColumn()]
    if kind == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)

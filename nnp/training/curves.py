"""Learning curves of a run: ``learning_curves.png`` from ``csv/metrics.csv``.

Four panels per epoch: validation force MAE (eV/Å), validation energy MAE
(meV/atom), training and validation loss, learning rate (and the loss weights
of ``loss.stages`` when they change). Drawn at every checkpoint and at the
end of training by :class:`LearningCurves`; ``plot_learning_curves`` also
works on a finished run's csv.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytorch_lightning as pl

PNG_NAME = "learning_curves.png"


def read_epochs(metrics_csv: str | Path) -> dict[str, list[float]]:
    """Per-epoch series from Lightning's CSV log: column -> values by epoch (NaN where absent).

    The log has one sparse row per logging call; each epoch keeps a column's
    last value (``lr-*`` is logged at the epoch's start, the rest at its end).
    """
    by_epoch: dict[int, dict[str, float]] = {}
    pending: list[dict[str, str]] = []  # rows without an epoch (the LR monitor's): they belong to the next one
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                pending.append(row)
                continue
            epoch = int(float(row["epoch"]))
            slot = by_epoch.setdefault(epoch, {})
            for r in (*pending, row):
                for key, value in r.items():
                    if key in ("epoch", "step") or value in ("", None):
                        continue
                    try:
                        slot[key] = float(value)
                    except ValueError:
                        continue
            pending = []
    epochs = sorted(by_epoch)
    columns = sorted({k for slot in by_epoch.values() for k in slot})
    out = {"epoch": [float(e) for e in epochs]}
    for key in columns:
        out[key] = [by_epoch[e].get(key, math.nan) for e in epochs]
    return out


def plot_learning_curves(metrics_csv: str | Path, png: str | Path, title: str = "") -> Path | None:
    """Draw the curves of ``metrics_csv`` into ``png`` (written atomically); None when there is no epoch yet."""
    # the object-oriented API without pyplot: no global figure state, no GUI backend, cheaper
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from nnp.outputs import atomic_path

    series = read_epochs(metrics_csv)
    epochs = series["epoch"]
    if not epochs:
        return None
    fig = Figure(figsize=(10, 7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        (axes[0, 0], [("val_forces_mae", "validation", 1.0)], "force MAE (eV/Å)", True),
        (axes[0, 1], [("val_energy_per_atom_mae", "validation", 1000.0)], "energy MAE (meV/atom)", True),
        (axes[1, 0], [("train_loss_epoch", "training", 1.0), ("val_loss", "validation", 1.0)], "loss", True),
        (axes[1, 1], [(k, k.removeprefix("lr-"), 1.0) for k in series if k.startswith("lr-")], "learning rate", True),
    ]
    for ax, lines, ylabel, log in panels:
        drawn = []
        for key, label, factor in lines:
            values = [v * factor for v in series.get(key, [])]
            points = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v) and (v > 0 or not log)]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
                drawn += [v for _, v in points]
        if drawn and log and max(drawn) > 10 * min(drawn):  # a log axis only when the values span a decade
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # minor tick labels cost most of the drawing time
        if len(lines) > 1 and drawn:
            ax.legend(fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    weights = [(k, series[k]) for k in ("loss_energy_weight", "loss_forces_weight") if k in series]
    if any(len({v for v in vals if math.isfinite(v)}) > 1 for _, vals in weights):
        twin = axes[1, 0].twinx()
        for key, vals in weights:
            twin.step(epochs, vals, where="post", ls="--", lw=1, label=key.removeprefix("loss_"))
        twin.set_ylabel("loss weight")
        twin.legend(fontsize=8, loc="lower left")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(title or str(Path(metrics_csv).parent.parent))
    fig.subplots_adjust(left=0.08, right=0.92, bottom=0.08, top=0.93, wspace=0.3, hspace=0.1)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return Path(png)


class LearningCurves(pl.Callback):
    """Redraws ``<run_dir>/learning_curves.png`` when a checkpoint is saved and when training ends.

    Drawing takes ~0.3 s (seconds on a loaded machine): at checkpoints it is skipped while less than
    ``20 x`` the last drawing's time has passed since it, so the figure costs at most ~5% of the
    run's wall time however short the epochs; the end of training always draws.
    """

    def __init__(self, run_dir: str | Path, max_share: float = 0.05):
        self.run_dir = Path(run_dir)
        self.max_share = float(max_share)
        self._drawn_step = -1
        self._next_draw = 0.0  # time.monotonic() before which a checkpoint does not redraw

    def _draw(self, trainer: pl.Trainer) -> None:
        from pytorch_lightning.loggers import CSVLogger

        if not trainer.is_global_zero:
            return
        start = time.monotonic()
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush the rows logged so far
                path = Path(logger.log_dir) / "metrics.csv"
                if path.is_file():
                    try:
                        plot_learning_curves(path, self.run_dir / PNG_NAME)
                    except (OSError, ValueError, RuntimeError) as err:  # a figure is not worth a failed run
                        from nnp.report import console

                        console.print(f"[yellow]note:[/] learning curves not drawn: {err}")
                done = time.monotonic()
                self._next_draw = done + (done - start) / self.max_share
                return

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # best and last are saved at the same step: draw once
        if trainer.global_step != self._drawn_step and time.monotonic() >= self._next_draw:
            self._drawn_step = trainer.global_step
            self._draw(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer)

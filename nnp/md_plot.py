"""The PNG ``nnp md`` writes beside its CSV log: what a run did, at a glance.

Panels against time (ps): total, potential and kinetic energy (eV/atom, each
relative to its first value, so that a drift of meV shows beside kinetic swings);
temperature (K); the volume (Å^3) when the log has one (NPT); the committee's
``max_forces_std`` (eV/Å) when the log has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnp.outputs import save_figure


def plot_log(rows: Sequence[Sequence[float]], columns: Sequence[str], path: str | Path, title: str = "",
             n_atoms: int | None = None) -> None:
    """Plot the MD log ``rows`` (one list per row, ``columns`` their names) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(rows, dtype=float)
    col = {name: k for k, name in enumerate(columns)}
    t = data[:, col["time_ps"]]
    panels = ["energy", "temperature"] + [p for p in ("volume_A3", "max_forces_std_eV_A") if p in col]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    per = 1.0 / n_atoms if n_atoms else 1.0
    unit = "eV/atom" if n_atoms else "eV"
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "energy":
            for name, label in (("etot_eV", "total"), ("epot_eV", "potential"), ("ekin_eV", "kinetic")):
                y = data[:, col[name]]
                ax.plot(t, (y - y[0]) * per, label=label, lw=1.0)
            ax.set_ylabel(f"E − E(0) ({unit})")
            ax.legend(loc="best", fontsize=8)
        elif panel == "temperature":
            ax.plot(t, data[:, col["temperature_K"]], lw=1.0, color="tab:red")
            ax.set_ylabel("temperature (K)")
        elif panel == "volume_A3":
            ax.plot(t, data[:, col[panel]], lw=1.0, color="tab:green")
            ax.set_ylabel("volume (Å$^3$)")
        else:
            ax.plot(t, data[:, col[panel]], lw=1.0, color="tab:purple")
            ax.set_ylabel("committee\nmax_forces_std (eV/Å)")
    axes[-1, 0].set_xlabel("time (ps)")
    save_figure(fig, path, dpi=100, title=title)

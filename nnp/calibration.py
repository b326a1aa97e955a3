"""Uncertainty calibration of committee models.

A committee's spread ``std`` is meant to estimate its error. These metrics say
how well it does, for one quantity at a time (energies, forces, ...):

- :func:`spearman` of ``std`` against ``|error|``: does the spread *rank* the
  errors (large spread, large error)? Scale-free.
- :func:`miscalibration_area`: is ``std`` the right *size* for Gaussian errors?
  0 when calibrated, up to 0.5.
- :func:`gaussian_nll`: both at once, as a proper scoring rule.
- :func:`fit_scale`: the single factor ``s`` that makes ``s * std`` calibrated
  (in the maximum-likelihood sense); committees are usually over-confident,
  so ``s > 1`` is typical.
- :func:`calibration_curve` / :func:`calibration_plot`: predicted vs observed
  error in bins of predicted std.

Inputs: ``std`` and ``error`` are array-likes of the same shape (or shapes that
broadcast), flattened to pairs; ``error`` is the signed (or absolute) error
``prediction - reference`` in the same unit as ``std`` — whatever the caller
uses (eV for energies, eV/Å for forces). The committee gives one force std per
atom, so pair it with a per-atom error defined the same way as that std (the
pairing is the caller's choice; these functions only see pairs). Pairs where
either value is not
finite, or ``std`` is negative (not a spread), are dropped, so one bad entry
does not turn every metric into NaN. Results are plain Python floats; NaN
where a metric is undefined (too few points).

Pure numpy; matplotlib only for the plot (imported there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

# Smallest sigma the NLL uses: a zero spread with a non-zero error is infinitely
# over-confident; flooring keeps the value finite (and very large) instead of inf/NaN.
STD_FLOOR = 1e-12

__all__ = [
    "spearman",
    "fit_scale",
    "gaussian_nll",
    "calibration_curve",
    "miscalibration_area",
    "calibration_metrics",
    "calibration_plot",
]


def _pairs(std, error) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 (std, error) pairs with the invalid ones dropped (see the module doc)."""
    s, e = np.broadcast_arrays(np.asarray(std, dtype=np.float64), np.asarray(error, dtype=np.float64))
    s, e = s.ravel(), e.ravel()
    ok = np.isfinite(s) & np.isfinite(e) & (s >= 0)
    return s[ok], e[ok]


def _rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-d array, ties given the average of the ranks they span."""
    order = np.argsort(a, kind="mergesort")
    srt = a[order]
    first = np.r_[True, srt[1:] != srt[:-1]]  # start of each run of equal values
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(srt)]  # exclusive
    avg = (starts + ends - 1) / 2.0 + 1.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[np.cumsum(first) - 1]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation of ``x`` and ``y`` (same length, any unit).

    The Pearson correlation of the ranks, ties given average ranks (as
    ``scipy.stats.spearmanr``). Pairs with a NaN in either are dropped. NaN for
    fewer than 2 points or when either input is constant (no ranking to
    correlate).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: x and y differ in size ({x.size} vs {y.size})")
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan
    rx, ry = _rankdata(x), _rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denom == 0.0:  # a constant input: every rank equal
        return math.nan
    # Clip: rounding can put a perfect correlation a hair outside [-1, 1].
    return float(np.clip(float(rx @ ry) / denom, -1.0, 1.0))


def fit_scale(std, error) -> float:
    """Maximum-likelihood scale ``s`` for ``error ~ N(0, (s * std)^2)``.

    ``std``, ``error``: matching arrays in the same unit (``error`` signed or
    absolute: it is squared). Setting the derivative of the Gaussian
    log-likelihood in ``s`` to zero gives ``s^2 = mean(error^2 / std^2)``.
    Entries with ``std <= 0`` are ignored: a zero spread says nothing about the
    size of the error and would divide by zero. Dimensionless; NaN when no
    entry is left.
    """
    s, e = _pairs(std, error)
    ok = s > 0
    if not ok.any():
        return math.nan
    return float(math.sqrt(np.mean((e[ok] / s[ok]) ** 2)))


def gaussian_nll(std, error, scale: float = 1.0) -> float:
    """Mean Gaussian negative log-likelihood of ``error`` under ``N(0, sigma^2)``.

    ``sigma = scale * std``, floored at :data:`STD_FLOOR` so a zero spread gives
    a huge but finite value. Per entry ``0.5 * log(2 pi sigma^2) +
    error^2 / (2 sigma^2)``; lower is better. It depends on the unit (a shift of
    ``log`` of the unit factor), so compare values for one quantity and unit
    only. NaN for no data.
    """
    s, e = _pairs(std, error)
    if len(s) == 0:
        return math.nan
    sigma = np.maximum(scale * s, STD_FLOOR)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * sigma**2) + e**2 / (2.0 * sigma**2)))


def calibration_curve(std, error, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Observed error against predicted std, in bins of predicted std.

    Pairs are sorted by ``std`` and cut into ``n_bins`` consecutive groups of
    (nearly) equal size — quantile bins, so every bin has about ``n / n_bins``
    points even when ``std`` spans decades; equal ``std`` values at a boundary
    may fall in adjacent bins. Fewer bins when there are fewer points.

    Per bin (arrays of length ``n_bins``, the caller's unit):

    - ``std_rms``: root mean square of the predicted std. For Gaussian errors
      ``E[error^2] = std^2`` entry by entry, so the RMS (not the mean) of the
      std is what the RMSE should equal in a calibrated bin.
    - ``rmse``: observed root mean square error.
    - ``std_lo``, ``std_hi``: smallest and largest std in the bin.
    - ``count``: number of pairs (int).
    """
    if n_bins < 1:
        raise ValueError(f"calibration_curve: n_bins={n_bins}, need at least 1")
    s, e = _pairs(std, error)
    order = np.argsort(s, kind="mergesort")
    groups = [g for g in np.array_split(order, min(n_bins, len(s))) if len(g)] if len(s) else []
    return {
        "std_rms": np.array([math.sqrt(np.mean(s[g] ** 2)) for g in groups], dtype=np.float64),
        "rmse": np.array([math.sqrt(np.mean(e[g] ** 2)) for g in groups], dtype=np.float64),
        "std_lo": np.array([s[g].min() for g in groups], dtype=np.float64),
        "std_hi": np.array([s[g].max() for g in groups], dtype=np.float64),
        "count": np.array([len(g) for g in groups], dtype=np.int64),
    }


def miscalibration_area(std, error, n_quantiles: int = 101) -> float:
    """Area between expected and observed coverage of centered Gaussian intervals.

    For a confidence level ``p`` the interval ``|error| <= z_p * std``, with
    ``z_p`` the ``(1 + p) / 2`` quantile of the standard normal, should hold a
    fraction ``p`` of the errors if they are ``N(0, std^2)``. The observed
    fraction is compared with ``p`` on ``n_quantiles`` evenly spaced levels
    from 0 to 1 (ends included: there the two agree exactly) and ``|observed -
    p|`` is integrated over ``p`` with the trapezoid rule (Tran et al. 2020,
    as in uncertainty-toolbox). Dimensionless: 0 for perfect calibration, up to
    0.5 (all errors far outside every interval, or all exactly zero). It
    measures size, not ranking, and does not say over- vs under-confident: look
    at :func:`fit_scale` for that. NaN for no data.
    """
    if n_quantiles < 2:
        raise ValueError(f"miscalibration_area: n_quantiles={n_quantiles}, need at least 2")
    s, e = _pairs(std, error)
    if len(s) == 0:
        return math.nan
    p = np.linspace(0.0, 1.0, n_quantiles)
    inv_cdf = NormalDist().inv_cdf  # stdlib: no scipy needed
    # inv_cdf is undefined at 0 and 1; the interval limits there are 0 and inf.
    z = np.array([0.0 if q <= 0 else math.inf if q >= 1 else inv_cdf((1.0 + q) / 2.0) for q in p])
    # |e| <= z * s  <=>  |e| / s <= z; a zero std covers only a zero error.
    a = np.abs(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(s > 0, a / np.where(s > 0, s, 1.0), np.where(a == 0, 0.0, math.inf))
    # One sort, then a binary search per level: O(n log n), not O(n * levels).
    ratio.sort()
    observed = np.searchsorted(ratio, z, side="right") / len(ratio)
    if np.isinf(z[-1]):
        observed[-1] = 1.0  # an infinite ratio is inside no finite interval, but p = 1 is the limit
    gap = np.abs(observed - p)
    # Trapezoid rule by hand: np.trapz was renamed np.trapezoid in numpy 2.
    return float(np.sum((gap[1:] + gap[:-1]) * np.diff(p)) / 2.0)


def calibration_metrics(std, error, scale: float = 1.0) -> dict[str, float]:
    """All calibration metrics of one quantity, as JSON-ready plain values.

    The uncertainty evaluated is ``scale * std`` (e.g. a scale fitted on the
    validation set, applied to the test set). Keys:

    - ``n``: number of valid pairs (int).
    - ``spearman``: rank correlation of ``std`` with ``|error|`` (unchanged by ``scale``).
    - ``miscalibration_area``: of ``scale * std`` (dimensionless).
    - ``nll``: mean Gaussian NLL at ``scale``.
    - ``rmse``: of the errors (caller's unit).
    - ``mean_std``: mean of ``scale * std`` (caller's unit).
    - ``scale``: the ``scale`` given.
    - ``fit_scale``: :func:`fit_scale` of the *unscaled* std, so it is directly
      comparable with (and usable as) ``scale``.
    """
    s, e = _pairs(std, error)
    n = len(s)
    return {
        "n": int(n),
        "spearman": spearman(s, np.abs(e)),
        "miscalibration_area": miscalibration_area(scale * s, e),
        "nll": gaussian_nll(s, e, scale=scale),
        "rmse": float(math.sqrt(np.mean(e**2))) if n else math.nan,
        "mean_std": float(scale * np.mean(s)) if n else math.nan,
        "scale": float(scale),
        "fit_scale": fit_scale(s, e),
    }


def _curve_panel(ax, name: str, std, error, unit: str) -> None:
    s, e = _pairs(std, error)
    unit_txt = f" ({unit})" if unit else ""
    ax.set_xlabel(f"predicted std{unit_txt}")
    ax.set_ylabel(f"observed RMSE{unit_txt}")
    if len(s) == 0:
        ax.set_title(f"{name}: no data")
        return
    curve = calibration_curve(s, e)
    x, y = curve["std_rms"], curve["rmse"]
    pos = np.concatenate([x[x > 0], y[y > 0]])
    # Log axes only when the values span more than a decade (and all are
    # positive: a log axis cannot show zero); otherwise linear is easier to read.
    log = bool(len(pos)) and (x > 0).all() and (y > 0).all() and pos.max() > 10 * pos.min()
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = float(pos.min()), float(pos.max())
    else:
        both = np.concatenate([x, y])
        lo, hi = float(min(0.0, both.min())), float(both.max())
    if hi <= lo:
        hi = lo + 1.0 if lo == 0 else lo * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x (calibrated)")
    ax.plot(x, y, "o-", ms=4, label=f"{len(x)} bins of ~{int(round(curve['count'].mean()))}")
    ax.legend(loc="upper left", fontsize=8)
    rho, area = spearman(s, np.abs(e)), miscalibration_area(s, e)
    ax.set_title(f"{name}: Spearman {rho:.2f}, miscal. area {area:.3f}", fontsize=10)


def calibration_plot(panels: Mapping[str, tuple[Any, Any, str]], path: str | os.PathLike, title: str = "") -> None:
    """PNG of calibration curves, one panel per quantity.

    ``panels``: name -> ``(std, error, unit)``, e.g. ``{"energy": (e_std,
    e_err, "eV"), "forces": (f_std, f_err, "eV/Å")}``. Each panel shows the
    binned :func:`calibration_curve` (predicted std on x, observed RMSE on y;
    log-log when the values span more than a decade), the ``y = x`` line of
    perfect calibration, and the Spearman correlation and miscalibration area in
    its title. Points above the line: the committee is over-confident.

    Written atomically: to a temporary file in the same folder, then renamed,
    so a reader never sees half a PNG and a failure leaves no stray file.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed (batch jobs, CI)
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("calibration_plot: no panels")
    k = len(panels)
    fig, axes = plt.subplots(1, k, figsize=(4.8 * k, 4.4), squeeze=False)
    try:
        for ax, (name, (std, error, unit)) in zip(axes[0], panels.items()):
            _curve_panel(ax, str(name), std, error, unit)
    except BaseException:
        plt.close(fig)
        raise
    from nnp.outputs import save_figure

    save_figure(fig, path, dpi=120, title=title)

"""Statistics of the benchmark suite: paired ratios over interleaved rounds, their 90% intervals,
the stopping rule, fitted cost exponents, goals judged by the interval's conservative end.

A round runs every framework once (alternating order), so round r's nnp/peer ratio pairs two
runs made under the same machine load. Over n rounds the log-ratios give a Student-t interval:
exp(mean ± t(0.95, n-1) · sd / √n), the 90% interval of the geometric-mean ratio. The suite
repeats rounds until that interval lies within ±10% of the ratio (:func:`narrow`) or a cap ends
the case. No scipy: the t quantiles are tabulated.
"""

from __future__ import annotations

import math
import random
import statistics

# one-sided 95% quantiles of Student's t (two-sided 90% interval), by degrees of freedom
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833,
       10: 1.812, 12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697}
TOLERANCE = 0.10  # a ratio is settled when its 90% interval lies within ±10% of it


def t95(df: int) -> float:
    if df <= 0:
        return math.inf
    return T95[max(d for d in T95 if d <= df)]  # between tabulated dfs: the smaller df (wider)


def ratio_stats(values: list[float]) -> dict | None:
    """Per-round ratios -> median, geometric mean, 90% interval (None below 2 rounds)."""
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not values:
        return None
    logs = [math.log(v) for v in values]
    out = {"median": statistics.median(values), "geomean": math.exp(statistics.fmean(logs)),
           "n": len(values), "rounds": values, "lo": None, "hi": None, "half_log": None}
    if len(values) >= 2:
        half = t95(len(values) - 1) * statistics.stdev(logs) / math.sqrt(len(values))
        m = statistics.fmean(logs)
        out.update(lo=math.exp(m - half), hi=math.exp(m + half), half_log=half)
    return out


def narrow(stats: dict | None, tolerance: float = TOLERANCE) -> bool:
    """The interval lies within ±tolerance of the ratio (on the log scale: exp(half) - 1 ≤ tolerance)."""
    return bool(stats and stats["half_log"] is not None and math.exp(stats["half_log"]) - 1 <= tolerance)


def fit_exponent(points: list[tuple[float, float]], min_atoms: int = 1000) -> float | None:
    """Least-squares slope of log(time) against log(atoms) over n >= min_atoms (1 = linear)."""
    pts = [(math.log(n), math.log(t)) for n, t in points if n >= min_atoms and t > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def exponent_interval(series: dict[int, list[float]], draws: int = 2000, seed: int = 0) -> dict | None:
    """Exponent of the medians per size, with a 90% bootstrap interval: each draw resamples every
    size's round times (with replacement) and refits the slope of the draw's medians."""
    sizes = sorted(n for n, ts in series.items() if ts)
    k = fit_exponent([(n, statistics.median(series[n])) for n in sizes])
    if k is None:
        return None
    rng = random.Random(seed)
    fits = []
    for _ in range(draws):
        pts = [(n, statistics.median(rng.choices(series[n], k=len(series[n])))) for n in sizes]
        fits.append(fit_exponent(pts))
    fits = sorted(f for f in fits if f is not None)
    return {"exponent": k, "lo": fits[int(0.05 * len(fits))], "hi": fits[int(0.95 * len(fits)) - 1],
            "sizes": sizes, "rounds": {str(n): len(series[n]) for n in sizes}}


def goal_met(stats: dict | None, op: str, value: float) -> bool | None:
    """A goal ``ratio op value`` is met when the whole 90% interval meets it: the lower end for
    ``>=`` (throughput), the upper end for ``<=`` (memory, exponents). None: no interval."""
    if not stats or stats.get("lo") is None:
        return None
    return stats["lo"] >= value if op == ">=" else stats["hi"] <= value

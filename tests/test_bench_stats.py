"""The benchmark suite's statistics (benchmarks/stats.py): paired-ratio intervals, the ±10%
stopping rule, goals judged by the interval's conservative end, fitted cost exponents."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stats  # noqa: E402


def test_interval_is_students_t_of_the_log_ratios():
    values = [1.9, 2.1, 2.0, 2.2]
    s = stats.ratio_stats(values)
    logs = [math.log(v) for v in values]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = 2.353 * sd / 2  # t(0.95, df=3) * sd / sqrt(4)
    assert s["median"] == pytest.approx(2.05)
    assert s["lo"] == pytest.approx(math.exp(mean - half))
    assert s["hi"] == pytest.approx(math.exp(mean + half))
    assert s["lo"] < s["geomean"] < s["hi"]


def test_one_round_gives_no_interval_and_no_verdict():
    s = stats.ratio_stats([2.5])
    assert s["lo"] is None and not stats.narrow(s)
    assert stats.goal_met(s, ">=", 2.0) is None


def test_stopping_rule_needs_the_interval_within_ten_percent():
    assert stats.narrow(stats.ratio_stats([1.50, 1.52, 1.49, 1.51]))
    assert not stats.narrow(stats.ratio_stats([1.2, 1.8, 1.5]))


def test_goals_use_the_conservative_end():
    s = stats.ratio_stats([1.9, 2.3, 2.1])  # median 2.1, lower end below 2
    assert s["median"] > 2.0 and stats.goal_met(s, ">=", 2.0) is False
    assert stats.goal_met(stats.ratio_stats([2.2, 2.21, 2.19]), ">=", 2.0) is True
    memory = stats.ratio_stats([0.20, 0.21, 0.22])
    assert stats.goal_met(memory, "<=", 0.25) is True
    assert stats.goal_met(memory, "<=", 0.21) is False


def test_t_quantiles_between_tabulated_degrees_of_freedom_are_conservative():
    assert stats.t95(11) == stats.T95[10] > stats.T95[12]
    assert stats.t95(100) == stats.T95[30]


def test_fitted_exponent_and_its_bootstrap_interval():
    series = {n: [1e-4 * n ** 1.1 * f for f in (0.97, 1.0, 1.03)] for n in (1000, 3000, 10000, 30000)}
    fit = stats.exponent_interval(series)
    assert fit["exponent"] == pytest.approx(1.1, abs=1e-6)
    assert fit["lo"] <= 1.1 <= fit["hi"] and fit["hi"] - fit["lo"] < 0.1
    assert stats.fit_exponent([(100, 1.0), (300, 3.0)]) is None  # below 1,000 atoms: not fitted

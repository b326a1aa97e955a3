"""Uncertainty-calibration metrics (nnp.calibration): fast, seeded, numpy only."""

import json
import math

import numpy as np
import pytest

from nnp.calibration import (
    calibration_curve,
    calibration_metrics,
    calibration_plot,
    fit_scale,
    gaussian_nll,
    miscalibration_area,
    spearman,
)

N = 20_000


@pytest.fixture(scope="module")
def calibrated():
    """error ~ N(0, std^2) exactly, std log-uniform over two decades (eV-like sizes)."""
    rng = np.random.default_rng(12345)
    std = 10.0 ** rng.uniform(-3.0, -1.0, N)
    error = std * rng.standard_normal(N)
    return std, error


def test_calibrated_errors(calibrated):
    std, error = calibrated
    assert fit_scale(std, error) == pytest.approx(1.0, rel=0.03)
    assert miscalibration_area(std, error) < 0.02
    assert spearman(std, np.abs(error)) > 0.3


def test_overconfident_errors(calibrated):
    std, error = calibrated
    error2 = 2.0 * error  # the committee's spread is half the real error
    s = fit_scale(std, error2)
    assert s == pytest.approx(2.0, rel=0.03)
    assert miscalibration_area(std, error2) > 0.1
    assert miscalibration_area(std, error2) > miscalibration_area(std, error) + 0.08
    # Rescaling by the fitted factor restores calibration ...
    assert miscalibration_area(s * std, error2) < 0.02
    # ... and is the better model by likelihood.
    assert gaussian_nll(std, error2, scale=s) < gaussian_nll(std, error2, scale=1.0)
    # Absolute errors give the same scale (the error is squared).
    assert fit_scale(std, np.abs(error2)) == pytest.approx(s)


def test_fit_scale_ignores_nonpositive_std():
    std = np.array([1.0, 2.0, 0.0, -1.0])
    err = np.array([2.0, 4.0, 5.0, 5.0])
    assert fit_scale(std, err) == pytest.approx(2.0)
    assert math.isnan(fit_scale([0.0], [1.0]))


def test_miscalibration_area_bounds():
    rng = np.random.default_rng(0)
    std = np.full(1000, 1e-6)
    err = rng.standard_normal(1000)  # far outside every interval
    assert miscalibration_area(std, err) == pytest.approx(0.5, abs=0.01)
    # All errors exactly zero: inside every interval, also the worst case.
    assert miscalibration_area(np.ones(10), np.zeros(10)) == pytest.approx(0.5, abs=0.01)
    assert math.isnan(miscalibration_area([], []))


def test_spearman_hand_example_with_ties():
    x = [1, 2, 2, 3, 4]
    y = [10, 30, 20, 20, 40]
    # Average ranks: x -> [1, 2.5, 2.5, 4, 5], y -> [1, 4, 2.5, 2.5, 5]; both mean 3.
    # Deviations: dx = [-2, -.5, -.5, 1, 2], dy = [-2, 1, -.5, -.5, 2].
    # sum dx*dy = 4 - .5 + .25 - .5 + 4 = 7.25; sum dx^2 = sum dy^2 = 9.5.
    expected = 7.25 / 9.5
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert spearman(y, x) == pytest.approx(expected, abs=1e-12)


def test_spearman_matches_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")  # not a dependency: cross-check only
    rng = np.random.default_rng(7)
    x = rng.integers(0, 8, 200).astype(float)  # many ties
    y = x + rng.integers(0, 5, 200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_spearman_monotone_and_degenerate():
    x = np.linspace(0.1, 5.0, 50)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([], []))
    assert math.isnan(spearman(np.ones(5), x[:5]))
    # NaN pairs are dropped, not propagated.
    assert spearman([1, 2, np.nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)


def test_gaussian_nll_values():
    assert gaussian_nll([1.0], [0.0]) == pytest.approx(0.5 * math.log(2 * math.pi))
    assert gaussian_nll([2.0], [2.0]) == pytest.approx(0.5 * math.log(2 * math.pi * 4) + 0.5)
    assert gaussian_nll([1.0], [1.0], scale=2.0) == gaussian_nll([2.0], [1.0])
    big = gaussian_nll([0.0], [1e-3])  # zero spread: floored, finite and huge
    assert math.isfinite(big) and big > 1e6


def test_calibration_curve(calibrated):
    std, error = calibrated
    curve = calibration_curve(std, error, n_bins=10)
    counts = curve["count"]
    assert len(counts) == 10 and counts.sum() == N
    assert counts.max() - counts.min() <= 1
    assert np.all(np.diff(curve["std_rms"]) > 0)  # bins ordered by predicted std
    assert np.all(curve["std_lo"] <= curve["std_hi"])
    np.testing.assert_allclose(curve["rmse"], curve["std_rms"], rtol=0.08)
    # Fewer points than bins: one bin per point, none empty.
    small = calibration_curve([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], n_bins=10)
    assert small["count"].tolist() == [1, 1, 1]


def test_calibration_metrics_json_ready(calibrated):
    std, error = calibrated
    std = np.append(std, [np.nan, 1.0])
    error = np.append(error, [0.1, np.inf])  # two invalid pairs, dropped
    m = calibration_metrics(std, 2.0 * error, scale=2.0)
    assert set(m) == {"n", "spearman", "miscalibration_area", "nll", "rmse", "mean_std", "scale", "fit_scale"}
    assert m["n"] == N and type(m["n"]) is int
    assert all(type(v) is float for k, v in m.items() if k != "n")
    json.dumps(m)
    assert m["fit_scale"] == pytest.approx(2.0, rel=0.03)  # of the unscaled std
    assert m["miscalibration_area"] < 0.02  # evaluated at scale * std
    assert m["mean_std"] == pytest.approx(2.0 * np.mean(std[:N]))  # of scale * std
    assert m["rmse"] == pytest.approx(2.0 * math.sqrt(np.mean(std[:N] ** 2)), rel=0.03)
    empty = calibration_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["rmse"])


def test_calibration_plot(tmp_path, calibrated):
    std, error = calibrated
    rng = np.random.default_rng(3)
    f_std = rng.uniform(0.05, 0.1, 500)  # less than a decade: linear axes
    f_err = 1.5 * f_std * rng.standard_normal(500)
    out = tmp_path / "plots" / "calibration.png"
    calibration_plot(
        {"energy": (std, error, "eV"), "forces": (f_std, f_err, "eV/Å"), "empty": ([], [], "")},
        out,
        title="committee",
    )
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["calibration.png"]  # no temp file left
    calibration_plot({"energy": (std, error, "eV")}, out)  # overwrite in place
    assert [p.name for p in out.parent.iterdir()] == ["calibration.png"]

"""Metrics by hand, calibration that improves held-out log loss, plots that write PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from shoprec.churn.calibration import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    fit_calibrator,
)
from shoprec.churn.metrics import (
    brier,
    churn_metrics,
    expected_calibration_error,
    lift_at,
    log_loss,
    plot_calibration,
    save_plots,
)


def test_metrics_by_hand() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.7])
    m = churn_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert m["pr_auc"] == pytest.approx((1.0 + 2 / 3) / 2)  # AP: precision at each positive
    expected_ll = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.3)) / 4
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.16 + 0.49) / 4)
    # bins: 0.2 -> [0.2, 0.3): y 0; 0.6 -> [0.6, 0.7): y 1; 0.7 -> [0.7,0.8): y 0; 0.9: y 1
    assert m["ece"] == pytest.approx((0.2 + 0.4 + 0.7 + 0.1) / 4)
    assert m["lift_top_decile"] == pytest.approx(2.0)  # top 1 of 4 is a churner; rate 0.5
    assert m["churn_rate"] == 0.5 and m["n"] == 4


def test_ece_equal_width_bins_and_edge_values() -> None:
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    # one bin [0.5, 0.6) holds both rows: |0.5 - 0.545| = 0.045
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.59])) == pytest.approx(
        0.045
    )
    # 0.6 opens the next bin: 0.5 * |0 - 0.5| + 0.5 * |1 - 0.6|
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.6])) == pytest.approx(0.45)
    # separate bins: |0 - 0.05| and |1 - 0.95|
    assert expected_calibration_error(np.array([0, 1]), np.array([0.05, 0.95])) == pytest.approx(
        0.05
    )


def test_lift_and_single_class() -> None:
    y = np.array([0] * 90 + [1] * 10)
    p = np.arange(100) / 100.0
    assert lift_at(y, p) == pytest.approx(10.0)  # the top decile holds every churner
    assert lift_at(y, -p) == pytest.approx(0.0)
    m = churn_metrics(np.zeros(5), np.full(5, 0.1))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["lift_top_decile"])
    assert log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(1e-15))
    assert brier(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True churn probability q; the model reports an overconfident monotone distortion."""
    rng = np.random.default_rng(seed)
    q = rng.beta(2.0, 2.0, n)
    y = (rng.random(n) < q).astype(float)
    z = np.log(q / (1 - q))
    return 1.0 / (1.0 + np.exp(-3.0 * z + 0.8)), y


@pytest.mark.parametrize("method", ["platt", "isotonic", "auto"])
def test_calibration_improves_held_out_log_loss(method: str) -> None:
    p_fit, y_fit = _miscalibrated(4000, seed=1)
    p_new, y_new = _miscalibrated(4000, seed=2)  # held out: never seen by the calibrator
    cal, _ = fit_calibrator(p_fit, y_fit, method)
    after = cal.transform(p_new)
    assert log_loss(y_new, after) < log_loss(y_new, p_new) - 0.05
    assert (
        expected_calibration_error(y_new, after) < 0.03 < expected_calibration_error(y_new, p_new)
    )
    # monotone: the ranking (ROC-AUC) is kept, up to isotonic ties
    assert churn_metrics(y_new, after)["roc_auc"] == pytest.approx(
        churn_metrics(y_new, p_new)["roc_auc"], abs=0.01
    )


def test_auto_keeps_identity_for_calibrated_scores() -> None:
    rng = np.random.default_rng(0)
    q = rng.uniform(0.05, 0.95, 5000)
    y = (rng.random(5000) < q).astype(float)
    cal, scores = fit_calibrator(q, y, "auto")
    assert set(scores) == {"none", "platt", "isotonic"}
    assert log_loss(y, cal.transform(q)) <= log_loss(y, q) + 0.01


def test_calibrators_round_trip_through_json_dicts() -> None:
    p, y = _miscalibrated(500, seed=3)
    grid = np.linspace(0, 1, 101)
    for cal in (PlattCalibrator().fit(p, y), IsotonicCalibrator().fit(p, y)):
        again = calibrator_from_dict(cal.to_dict())
        np.testing.assert_array_equal(again.transform(grid), cal.transform(grid))
    iso = IsotonicCalibrator().fit(p, y).transform(grid)
    assert np.all(np.diff(iso) >= 0) and iso.min() >= 1e-3 and iso.max() <= 1 - 1e-3
    with pytest.raises(ValueError, match="unknown"):
        calibrator_from_dict({"method": "magic"})


def test_plots_return_figures_and_write_pngs(tmp_path: Path) -> None:
    p, y = _miscalibrated(300, seed=4)
    fig = plot_calibration(y, {"model": p})
    assert isinstance(fig, Figure)
    paths = save_plots(y, {"model": p, "random": np.random.default_rng(0).random(300)}, tmp_path)
    assert set(paths) == {"roc", "pr", "calibration", "lift"}
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

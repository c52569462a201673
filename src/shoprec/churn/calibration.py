"""Probability calibration fitted on validation rows, stored as plain JSON.

* Platt scaling (Platt 1999): ``p' = sigmoid(a * logit(p) + b)`` fitted by maximum
  likelihood with Platt's smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``.
* Isotonic regression (Zadrozny & Elkan 2002): a monotone step-wise-linear map, stored as its
  thresholds and applied with ``np.interp`` (what sklearn's ``IsotonicRegression.predict``
  does with ``out_of_bounds="clip"``); outputs are kept in ``[1e-3, 1 - 1e-3]`` so one wrong
  certain prediction cannot make the log loss infinite.
* ``auto``: Platt, isotonic or none, whichever has the lowest 5-fold cross-fitted log loss
  on the validation rows (so the choice is not made on the rows it was fitted on).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from shoprec.churn.metrics import log_loss

__all__ = [
    "Calibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "calibrator_from_dict",
    "fit_calibrator",
]

FloatArray = np.ndarray
_EPS = 1e-6
ISOTONIC_EPS = 1e-3


def _logit(p: FloatArray) -> FloatArray:
    out: FloatArray = logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS))
    return out


class Calibrator(Protocol):
    method: str

    def fit(self, p: FloatArray, y: FloatArray) -> Calibrator: ...

    def transform(self, p: FloatArray) -> FloatArray: ...

    def to_dict(self) -> dict[str, Any]: ...


class IdentityCalibrator:
    """No calibration."""

    method = "none"

    def fit(self, p: FloatArray, y: FloatArray) -> IdentityCalibrator:
        return self

    def transform(self, p: FloatArray) -> FloatArray:
        return np.asarray(p, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


class PlattCalibrator:
    """``sigmoid(a * logit(p) + b)`` (Platt 1999), fitted with smoothed targets."""

    method = "platt"

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        self.a = a
        self.b = b

    def fit(self, p: FloatArray, y: FloatArray) -> PlattCalibrator:
        s = _logit(p)
        y = np.asarray(y, dtype=np.float64)
        n_pos = float(y.sum())
        n_neg = float(y.size - n_pos)
        target = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

        def loss(theta: FloatArray) -> tuple[float, FloatArray]:
            z = theta[0] * s + theta[1]
            q = expit(z)
            # mean BCE against the smoothed targets, via log-sigmoid for stability
            nll = np.mean(np.logaddexp(0.0, z) - target * z)
            g = q - target
            return float(nll), np.array([np.mean(g * s), np.mean(g)])

        res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="BFGS")
        self.a, self.b = float(res.x[0]), float(res.x[1])
        return self

    def transform(self, p: FloatArray) -> FloatArray:
        out: FloatArray = expit(self.a * _logit(p) + self.b)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}


class IsotonicCalibrator:
    """Monotone map fitted by isotonic regression, stored as thresholds (no pickle)."""

    method = "isotonic"

    def __init__(self, x: list[float] | None = None, y: list[float] | None = None) -> None:
        self.x = np.asarray(x if x is not None else [0.0, 1.0], dtype=np.float64)
        self.y = np.asarray(y if y is not None else [0.0, 1.0], dtype=np.float64)

    def fit(self, p: FloatArray, y: FloatArray) -> IsotonicCalibrator:
        iso = IsotonicRegression(
            y_min=ISOTONIC_EPS, y_max=1.0 - ISOTONIC_EPS, out_of_bounds="clip", increasing=True
        )
        iso.fit(np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64))
        self.x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def transform(self, p: FloatArray) -> FloatArray:
        out: FloatArray = np.interp(np.asarray(p, dtype=np.float64), self.x, self.y)
        return np.clip(out, ISOTONIC_EPS, 1.0 - ISOTONIC_EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": self.x.tolist(), "y": self.y.tolist()}


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator from :meth:`Calibrator.to_dict` output."""
    method = data.get("method")
    if method == "none":
        return IdentityCalibrator()
    if method == "platt":
        return PlattCalibrator(float(data["a"]), float(data["b"]))
    if method == "isotonic":
        return IsotonicCalibrator(list(data["x"]), list(data["y"]))
    raise ValueError(f"unknown calibration method {method!r}")


def _new(method: str) -> Calibrator:
    if method == "platt":
        return PlattCalibrator()
    if method == "isotonic":
        return IsotonicCalibrator()
    if method == "none":
        return IdentityCalibrator()
    raise ValueError(f"unknown calibration method {method!r}")


def cross_fitted_log_loss(
    p: FloatArray, y: FloatArray, method: str, folds: int = 5, seed: int = 0
) -> float:
    """Log loss of ``method`` fitted on k-1 folds and applied to the held-out fold."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(p.size)
    out = np.empty_like(p)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test, assume_unique=True)
        if test.size == 0:
            continue
        if np.unique(y[train]).size < 2:
            out[test] = p[test]
            continue
        out[test] = _new(method).fit(p[train], y[train]).transform(p[test])
    return log_loss(y, out)


def fit_calibrator(
    p: FloatArray, y: FloatArray, method: str = "auto", seed: int = 0
) -> tuple[Calibrator, dict[str, float]]:
    """Fit the calibrator ``method`` on ``(p, y)``; with ``auto``, choose it by cross-fitting.

    Returns the calibrator and the cross-fitted log loss of each candidate (empty unless
    ``auto``). A single-class ``y`` cannot be calibrated: the identity is returned.
    """
    y = np.asarray(y, dtype=np.float64)
    if np.unique(y).size < 2:
        return IdentityCalibrator(), {}
    scores: dict[str, float] = {}
    chosen = method
    if method == "auto":
        for m in ("none", "platt", "isotonic"):
            scores[m] = cross_fitted_log_loss(p, y, m, seed=seed)
        chosen = min(scores, key=lambda m: scores[m])
    return _new(chosen).fit(p, y), scores

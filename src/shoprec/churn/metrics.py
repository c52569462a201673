"""Churn metrics and plots.

Metrics (``churned = 1`` is the positive class): ROC-AUC, PR-AUC (average precision), log
loss, Brier score, expected calibration error (ECE; Naeini, Cooper & Hauskrecht 2015; 10
equal-width bins, bin weight = share of rows) and lift in the top decile (churn rate among
the 10% highest scores / overall churn rate).

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend
switch), return :class:`matplotlib.figure.Figure` objects and can be written to PNG paths
(the lead logs them to MLflow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "brier",
    "churn_metrics",
    "expected_calibration_error",
    "lift_at",
    "log_loss",
    "plot_calibration",
    "plot_lift",
    "plot_pr",
    "plot_roc",
    "reliability_table",
    "save_figure",
    "save_plots",
]

FloatArray = np.ndarray
_CLIP = 1e-15


def _arrays(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray]:
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"labels {ya.shape} and probabilities {pa.shape} differ in shape")
    return ya, pa


def log_loss(y: FloatArray, p: FloatArray) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[1e-15, 1 - 1e-15]``.

    >>> round(log_loss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
    0.693147
    """
    ya, pa = _arrays(y, p)
    pa = np.clip(pa, _CLIP, 1.0 - _CLIP)
    return float(-np.mean(ya * np.log(pa) + (1.0 - ya) * np.log(1.0 - pa)))


def brier(y: FloatArray, p: FloatArray) -> float:
    """Mean squared error of the probabilities.

    >>> brier(np.array([1, 0]), np.array([1.0, 0.5]))
    0.125
    """
    ya, pa = _arrays(y, p)
    return float(np.mean((pa - ya) ** 2))


def _bin_index(p: FloatArray, bins: int) -> FloatArray:
    idx: FloatArray = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 -> last bin
    return idx


def reliability_table(
    y: FloatArray, p: FloatArray, bins: int = 10
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per equal-width bin: (row count, mean probability, observed rate); empty bins are NaN."""
    ya, pa = _arrays(y, p)
    idx = _bin_index(np.clip(pa, 0.0, 1.0), bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=pa, minlength=bins) / count
        rate = np.bincount(idx, weights=ya, minlength=bins) / count
    return count, conf, rate


def expected_calibration_error(y: FloatArray, p: FloatArray, bins: int = 10) -> float:
    """``sum_b n_b / N * |rate_b - mean_p_b|`` over ``bins`` equal-width bins of ``[0, 1]``.

    >>> expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.05, 0.95, 0.95, 0.95]))
    0.05
    """
    count, conf, rate = reliability_table(y, p, bins)
    used = count > 0
    if not used.any():
        return float("nan")
    return round(float(np.sum(count[used] * np.abs(rate[used] - conf[used])) / count.sum()), 12)


def lift_at(y: FloatArray, p: FloatArray, fraction: float = 0.1) -> float:
    """Churn rate among the top ``fraction`` scores divided by the overall churn rate.

    Ties at the boundary are broken by row order (stable sort), so the result is
    deterministic. ``nan`` when there is no positive.

    >>> lift_at(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1]), np.arange(10) / 10, 0.1)
    5.0
    """
    ya, pa = _arrays(y, p)
    base = ya.mean() if ya.size else float("nan")
    if not base > 0:
        return float("nan")
    k = max(1, math.ceil(fraction * ya.size))
    top = np.argsort(-pa, kind="stable")[:k]
    return float(ya[top].mean() / base)


def churn_metrics(y: FloatArray, p: FloatArray) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, Brier, ECE (10 bins), top-decile lift, rows, churn rate.

    AUCs are ``nan`` when ``y`` has a single class.
    """
    ya, pa = _arrays(y, p)
    two_classes = np.unique(ya).size == 2
    return {
        "roc_auc": float(roc_auc_score(ya, pa)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(ya, pa)) if two_classes else float("nan"),
        "log_loss": log_loss(ya, pa),
        "brier": brier(ya, pa),
        "ece": expected_calibration_error(ya, pa, 10),
        "lift_top_decile": lift_at(ya, pa, 0.1),
        "n": float(ya.size),
        "churn_rate": float(ya.mean()) if ya.size else float("nan"),
    }


# --- plots -------------------------------------------------------------------------------------


def _figure(title: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_roc(y: FloatArray, scores: Mapping[str, FloatArray]) -> Figure:
    """ROC curves of each model, with its AUC in the legend."""
    fig, ax = _figure("ROC (churned = positive)")
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr(y: FloatArray, scores: Mapping[str, FloatArray]) -> Figure:
    """Precision-recall curves, with average precision and the churn rate as reference."""
    fig, ax = _figure("Precision-recall (churned = positive)")
    for name, p in scores.items():
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    rate = float(np.mean(y))
    ax.axhline(rate, color="grey", linestyle=":", linewidth=1, label=f"churn rate {rate:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_calibration(y: FloatArray, scores: Mapping[str, FloatArray], bins: int = 10) -> Figure:
    """Reliability diagram (observed churn rate per equal-width bin) with ECE per model."""
    fig, ax = _figure(f"Calibration ({bins} equal-width bins)")
    for name, p in scores.items():
        count, conf, rate = reliability_table(y, p, bins)
        used = count > 0
        ece = expected_calibration_error(y, p, bins)
        ax.plot(conf[used], rate[used], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed churn rate")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_lift(y: FloatArray, scores: Mapping[str, FloatArray], deciles: int = 10) -> Figure:
    """Lift per decile of score (decile 1 = highest scores); 1.0 is random targeting."""
    fig, ax = _figure("Lift by score decile")
    ya = np.asarray(y, dtype=np.float64)
    base = ya.mean()
    xs = np.arange(1, deciles + 1)
    for name, p in scores.items():
        order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
        parts = np.array_split(ya[order], deciles)
        lift = [float(part.mean() / base) if part.size and base > 0 else np.nan for part in parts]
        ax.plot(xs, lift, marker="o", label=name)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(xs)
    ax.set_xlabel("score decile (1 = most likely to churn)")
    ax.set_ylabel("lift")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (Agg) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def save_plots(
    y: FloatArray, scores: Mapping[str, FloatArray], out_dir: str | Path, prefix: str = ""
) -> dict[str, Path]:
    """ROC, PR, calibration and lift PNGs in ``out_dir``: ``{kind: path}``."""
    d = Path(out_dir)
    return {
        "roc": save_figure(plot_roc(y, scores), d / f"{prefix}roc.png"),
        "pr": save_figure(plot_pr(y, scores), d / f"{prefix}pr.png"),
        "calibration": save_figure(plot_calibration(y, scores), d / f"{prefix}calibration.png"),
        "lift": save_figure(plot_lift(y, scores), d / f"{prefix}lift.png"),
    }

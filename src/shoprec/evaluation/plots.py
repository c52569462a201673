"""Plots a reviewer wants next to a run: curves, HR@K, how spread the recommendations are.

Figures only (matplotlib, Agg); :mod:`shoprec.tracking` logs them as run artifacts.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def hr_at_k(ranks: np.ndarray, k_max: int = 50) -> np.ndarray:
    """HR@K for K = 1..k_max from pessimistic ranks (inf = unscorable).

    >>> hr_at_k(np.array([1.0, 3.0, np.inf, 2.0]), k_max=3).tolist()
    [0.25, 0.5, 0.75]
    """
    if ranks.size == 0:
        return np.zeros(k_max)
    ks = np.arange(1, k_max + 1)
    return (ranks[None, :] <= ks[:, None]).mean(axis=1)


def plot_hr_at_k(ranks: np.ndarray, title: str, k_max: int = 50) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, k_max + 1)
    ax.plot(ks, hr_at_k(ranks, k_max), marker=".")
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict[str, Any]], title: str) -> Figure | None:
    """Training loss and validation metrics per epoch (None when there is no history)."""
    if not history:
        return None
    epochs = [int(row.get("epoch", i)) for i, row in enumerate(history)]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    keys = sorted({k for row in history for k in row if k.startswith(("train/", "val/"))})
    for key in keys:
        values = [row.get(key, np.nan) for row in history]
        (ax_loss if key.startswith("train/") else ax_val).plot(
            epochs, values, marker="o", label=key
        )
    ax_loss.set_title("training")
    ax_val.set_title("validation")
    for ax in (ax_loss, ax_val):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_coverage(metrics: dict[str, float], title: str, split: str = "test") -> Figure:
    """Catalogue coverage@20 and mean popularity of recommended items, side by side."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = [f"{split}/coverage@20", f"{split}/popularity@20"]
    values = [metrics.get(n, 0.0) for n in names]
    ax.bar(["coverage@20", "popularity@20"], values, color=["tab:blue", "tab:orange"])
    ax.set_ylim(0, 1)
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.3f}", ha="center")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def log_figures(
    tracker: Any,
    title: str,
    *,
    metrics: dict[str, float],
    ranks: np.ndarray | None,
    history: list[dict[str, Any]] | None = None,
    split: str = "test",
) -> None:
    """Log a run's figures to its tracker (a :class:`shoprec.tracking.RunTracker`): training
    curves (when there is a history), HR@K for K = 1..50 and coverage/popularity (when there
    are ranks). Building the figures exists only for the run, so it counts as tracking time."""
    with tracker.timed():
        figures: dict[str, Figure | None] = {}
        if history is not None:
            figures["plots/curves.png"] = plot_curves(history, title)
        if ranks is not None:
            figures["plots/hr_at_k.png"] = plot_hr_at_k(ranks, f"{title}: {split} HR@K")
            figures["plots/coverage.png"] = plot_coverage(metrics, title, split=split)
    for name, fig in figures.items():
        if fig is not None:
            tracker.log_figure(fig, name)
            with tracker.timed():
                plt.close(fig)

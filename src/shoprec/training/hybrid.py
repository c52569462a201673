"""Build and tune :class:`shoprec.models.hybrid.Hybrid` models (``shoprec hybrid``).

A hybrid is made from a trained neural bundle and a kNN model fitted on the same dataset's
train sessions. Its knobs (the neural share ``w``, the softmax temperature ``tau`` and the
reminder share ``r`` of the session's own items) are chosen by :func:`tune_hybrid` on a
dataset's VALIDATION cases; the chosen point is then built
once with :func:`build_hybrid` around the model retrained on the full train and evaluated on
test with ``shoprec evaluate`` like any other bundle. Test cases are never read here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoprec import schema
from shoprec.config import validate_config
from shoprec.data.dataset import PreparedDataset
from shoprec.errors import ShoprecError
from shoprec.evaluation.metrics import pessimistic_ranks
from shoprec.export import Bundle, load_bundle, save_bundle
from shoprec.models.base import NextItemModel, left_pad
from shoprec.models.hybrid import (
    Hybrid,
    HybridConfig,
    ReminderDecay,
    ensemble_log_probs,
    full_scores,
    member_votes,
    mix_parts,
    neural_log_probs,
    reminder_votes,
)

__all__ = ["TuneResult", "build_hybrid", "fit_knn", "knn_config", "refine_grid", "tune_hybrid"]

DEFAULT_WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
DEFAULT_TEMPERATURES = (0.25, 0.5, 1.0, 2.0)
DEFAULT_REMINDERS = (0.0,)

Point = tuple[float, float, float]  # (w, tau, r)


def knn_config(name: str, settings: dict[str, Any] | None = None) -> Any:
    """The kNN member's validated config: published defaults with ``settings`` on top
    (unknown keys and bad values are refused by the config model)."""
    from shoprec.models.sknn import SKNNConfig, VSKNNConfig

    classes: dict[str, Any] = {"vsknn": VSKNNConfig, "sknn": SKNNConfig}
    if name not in classes:
        raise ShoprecError(f"a hybrid's kNN member must be 'vsknn' or 'sknn', not {name!r}")
    return validate_config(classes[name], settings or {}, source=f"--knn-set ({name})")


def fit_knn(dataset: PreparedDataset, name: str = "vsknn", config: Any = None) -> NextItemModel:
    """A kNN member (``vsknn`` or ``sknn``) fitted on the train sessions; ``config``: its
    config model, a dict of settings over the published defaults, or None (the defaults)."""
    from shoprec.models import registry

    if registry.regime(name) != "counts" or name == "pop":
        raise ShoprecError(f"a hybrid's kNN member must be 'vsknn' or 'sknn', not {name!r}")
    if config is None or isinstance(config, dict):
        config = knn_config(name, config)
    model: NextItemModel = registry.model_class(name).fit(
        dataset.train_sessions(), dataset.n_items, config
    )
    return model


def _check_catalogue(bundle: Bundle, dataset: PreparedDataset) -> None:
    ids = dataset.items.sort(schema.ITEM_IDX).get_column(schema.ITEM_ID).to_list()
    if bundle.item_ids[1:] != ids:
        raise ShoprecError(
            f"{bundle.path}: the bundle's item index differs from {dataset.root}'s "
            f"({len(bundle.item_ids) - 1} vs {len(ids)} items): train the neural model on "
            "this dataset"
        )


@dataclass
class TuneResult:
    """Every grid point's validation HR@K / MRR@K, best (by MRR@K, then HR@K) first."""

    rows: list[dict[str, float]]
    n_cases: int
    cutoff: int
    split: str
    members: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reminder_decay: ReminderDecay = "div"

    @property
    def best(self) -> HybridConfig:
        top = self.rows[0]
        return HybridConfig(
            weight=top["weight"],
            temperature=top["temperature"],
            reminder=top.get("reminder", 0.0),
            reminder_decay=self.reminder_decay,
        )


def _neural_paths(neural_bundle: str | Path | Sequence[str | Path]) -> list[Path]:
    paths = (
        [Path(neural_bundle)]
        if isinstance(neural_bundle, str | Path)
        else [Path(p) for p in neural_bundle]
    )
    if not paths:
        raise ShoprecError("a hybrid needs at least one neural bundle")
    return paths


def _load_neurals(paths: list[Path], dataset: PreparedDataset) -> list[Bundle]:
    bundles = [load_bundle(p) for p in paths]
    for bundle in bundles:
        _check_catalogue(bundle, dataset)
    return bundles


def _grid_pass(
    neurals: list[NextItemModel],
    member: NextItemModel,
    prefixes: list[Any],
    targets: np.ndarray,
    grid: list[Point],
    cutoff: int,
    batch_size: int,
    decay: ReminderDecay = "div",
) -> dict[Point, tuple[float, float]]:
    """Hits and reciprocal ranks (summed over the cases) of every ``(w, tau, r)`` in ``grid``:
    each member scores a batch once, every grid point re-mixes those scores."""
    hits = dict.fromkeys(grid, 0.0)
    rr = dict.fromkeys(grid, 0.0)
    shares: dict[tuple[float, float], list[float]] = {}  # (w, tau) -> its reminder shares
    for w, tau, r in sorted(grid):
        shares.setdefault((w, tau), []).append(r)
    temperatures = sorted({tau for _, tau in shares})
    any_reminder = any(r > 0 for *_, r in grid)
    with torch.inference_mode():
        for lo in range(0, len(targets), batch_size):
            batch = left_pad(prefixes[lo : lo + batch_size])
            tgt = torch.from_numpy(targets[lo : lo + batch_size])
            s_n = [full_scores(neural, batch) for neural in neurals]
            votes = member_votes(member, batch)
            reminded = reminder_votes(batch, decay) if any_reminder else None
            log_p = {
                tau: ensemble_log_probs([neural_log_probs(s, tau) for s in s_n])
                for tau in temperatures
            }
            for (w, tau), rs in shares.items():
                mixed = mix_parts(log_p[tau], votes, w)
                for r in rs:
                    scores = (
                        mix_parts(mixed, reminded, 1.0 - r)
                        if reminded is not None and r > 0
                        else mixed
                    )
                    ranks = pessimistic_ranks(scores, tgt)
                    hit = ranks <= cutoff
                    point = (w, tau, r)
                    hits[point] += float(hit.sum())
                    rr[point] += float(torch.where(hit, 1.0 / ranks, torch.zeros_like(ranks)).sum())
    return {point: (hits[point], rr[point]) for point in grid}


def _midpoints(value: float, tried: list[float]) -> list[float]:
    """The points halfway from ``value`` to its nearest tried neighbour on each side (none
    past the ends of what was tried), rounded to 4 decimals."""
    ordered = sorted(set(tried))
    i = ordered.index(value)
    out = [value]
    if i > 0:
        out.append(round((ordered[i - 1] + value) / 2, 4))
    if i + 1 < len(ordered):
        out.append(round((ordered[i + 1] + value) / 2, 4))
    return out


def refine_grid(
    best: tuple[float, float], done: set[tuple[float, float]]
) -> list[tuple[float, float]]:
    """One round of local refinement around the best ``(w, tau)`` so far: every pair of
    ``w`` in {best, halfway to each neighbouring tried ``w``} and the same for ``tau``,
    less the points already tried. ``w = 1`` (no kNN) has no ``tau`` to refine, so its
    refinement only looks below it.

    >>> done = {(1.0, 0.25), (0.9, 0.25), (0.9, 0.35), (0.9, 0.5), (0.8, 0.35)}
    >>> refine_grid((0.9, 0.35), done)[:4]
    [(0.85, 0.3), (0.85, 0.35), (0.85, 0.425), (0.9, 0.3)]
    >>> len(refine_grid((0.9, 0.35), done))  # 3 x 3 less the best point itself
    8
    """
    w, tau = best
    weights = _midpoints(w, [p[0] for p in done])
    temps = _midpoints(tau, [p[1] for p in done if p[0] < 1.0] or [tau])
    grid = {(a, t) for a in weights for t in temps if a < 1.0}
    return sorted(grid - done)


def tune_hybrid(
    neural_bundle: str | Path | Sequence[str | Path],
    dataset: PreparedDataset,
    *,
    knn: str = "vsknn",
    knn_settings: dict[str, Any] | None = None,
    split: str = "valid",
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
    reminders: tuple[float, ...] = DEFAULT_REMINDERS,
    reminder_decay: ReminderDecay = "div",
    cutoff: int = 20,
    batch_size: int = 256,
    refine: int = 0,
) -> TuneResult:
    """Full-catalogue HR@cutoff / MRR@cutoff (pessimistic ties) of every (w, tau) on ``split``.

    Each member scores a batch once; every grid point re-mixes those scores. ``w = 1`` (the
    neural model alone) is always in the grid, so the result says what the hybrid adds.
    Several ``neural_bundle`` paths make an ensemble: their probabilities are averaged (their
    ``w = 1`` row is the ensemble without kNN, at the grid's first temperature: without a
    reminder, tau does not change its ranking).

    ``reminders`` are the reminder shares ``r`` to try at every ``(w, tau)`` (0 = none; see
    :func:`shoprec.models.hybrid.reminder_votes`), all with one ``reminder_decay``.

    ``refine`` more passes each try the points halfway between the best point so far and its
    neighbours (:func:`refine_grid`, at the best point's ``r``): a finer grid where it
    matters, chosen on ``split`` like the rest. Every row says which pass it came from
    (``pass`` 0 = the grid).
    """
    if split == "test":
        raise ShoprecError("tune the hybrid on a validation split, never on test")
    if not weights or not temperatures or batch_size < 1 or cutoff < 1 or refine < 0:
        raise ShoprecError(
            "need weights, temperatures, batch_size >= 1, cutoff >= 1 and refine >= 0"
        )
    if not reminders or any(not 0.0 <= r < 1.0 for r in reminders):
        raise ShoprecError(f"reminder shares must be in [0, 1), not {list(reminders)}")
    t0 = time.perf_counter()
    paths = _neural_paths(neural_bundle)
    neurals = [b.model for b in _load_neurals(paths, dataset)]
    knn_cfg = knn_config(knn, knn_settings)
    member = fit_knn(dataset, knn, knn_cfg)
    cases = dataset.cases(split)
    if cases.height == 0:
        raise ShoprecError(f"{dataset.root}: no {split} cases to tune on")
    prefixes = cases.get_column(schema.PREFIX_IDX).to_list()
    targets = cases.get_column(schema.TARGET_IDX).to_numpy().astype(np.int64)
    for neural in neurals:
        if hasattr(neural, "eval"):
            neural.eval()
    n = len(targets)
    hr_key, mrr_key = f"{split}/hr@{cutoff}", f"{split}/mrr@{cutoff}"

    def order(row: dict[str, float]) -> tuple[float, float, float, float]:
        return (-row[mrr_key], -row[hr_key], -row["weight"], row["reminder"])

    # w = 1 without a reminder is the neural ranking whatever tau: one temperature is enough
    grid = sorted(
        {(1.0, temperatures[0], 0.0)}
        | {(w, t, r) for w in {1.0, *weights} for t in temperatures for r in reminders}
        - {(1.0, t, 0.0) for t in temperatures[1:]}
    )
    rows: list[dict[str, float]] = []
    for round_ in range(refine + 1):
        if round_ > 0:
            best = min(rows, key=order)
            share = best["reminder"]
            grid = [
                (w, t, share)
                for w, t in refine_grid(
                    (best["weight"], best["temperature"]),
                    {(r["weight"], r["temperature"]) for r in rows if r["reminder"] == share},
                )
            ]
            if not grid:
                break
        sums = _grid_pass(
            neurals, member, prefixes, targets, grid, cutoff, batch_size, reminder_decay
        )
        rows += [
            {
                "weight": w,
                "temperature": tau,
                "reminder": r,
                hr_key: hits / n,
                mrr_key: rr / n,
                "pass": round_,
            }
            for (w, tau, r), (hits, rr) in sums.items()
        ]
    rows.sort(key=order)
    return TuneResult(
        rows=rows,
        n_cases=n,
        cutoff=cutoff,
        split=split,
        members={
            "neural": [str(p) for p in paths],
            "knn": knn,
            "knn_config": knn_cfg.model_dump(),
        },
        seconds=time.perf_counter() - t0,
        reminder_decay=reminder_decay,
    )


def build_hybrid(
    neural_bundle: str | Path | Sequence[str | Path],
    dataset: PreparedDataset,
    out: str | Path,
    config: HybridConfig,
    *,
    knn: str = "vsknn",
    knn_settings: dict[str, Any] | None = None,
    tuned: dict[str, Any] | None = None,
) -> Path:
    """Write a hybrid bundle: the neural bundles' models + a kNN fitted on ``dataset``'s train.

    Every neural bundle must have been trained on ``dataset`` (same item index). The first
    one's auxiliary tables (the service's item neighbours) are carried over; ``tuned`` (where
    ``w`` and ``tau`` came from) is stored in ``bundle.json``.
    """
    paths = _neural_paths(neural_bundle)
    bundles = _load_neurals(paths, dataset)
    knn_cfg = knn_config(knn, knn_settings)
    model = Hybrid([b.model for b in bundles], fit_knn(dataset, knn, knn_cfg), config)
    bundle = bundles[0]
    names = "+".join(str(b.meta.get("experiment") or b.meta["model_name"]) for b in bundles)
    described = [
        {
            "bundle": str(p.resolve()),
            "model_name": b.meta["model_name"],
            "experiment": b.meta.get("experiment"),
            "seed": b.meta.get("seed"),
        }
        for p, b in zip(paths, bundles, strict=True)
    ]
    extra = {
        "experiment": f"hybrid({names}+{knn})",
        "members": {
            "neural": described if len(described) > 1 else described[0],
            "knn": {
                "model_name": knn,
                "config": knn_cfg.model_dump(),
                "fitted_on": str(dataset.root),
            },
        },
        "tuned": tuned or {},
    }
    return save_bundle(
        out,
        model,
        dataset.items,
        dataset=bundle.meta.get("dataset") or {},
        extra=extra,
        aux=bundle.aux or None,
    )

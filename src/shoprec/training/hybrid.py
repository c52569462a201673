"""Build and tune :class:`shoprec.models.hybrid.Hybrid` models (``shoprec hybrid``).

A hybrid is made from a trained neural bundle and a kNN model fitted on the same dataset's
train sessions. Its two knobs (the neural share ``w`` and the softmax temperature ``tau``) are
chosen by :func:`tune_hybrid` on a dataset's VALIDATION cases; the chosen point is then built
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
    ensemble_log_probs,
    full_scores,
    member_votes,
    mix_parts,
    neural_log_probs,
)

__all__ = ["TuneResult", "build_hybrid", "fit_knn", "knn_config", "tune_hybrid"]

DEFAULT_WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
DEFAULT_TEMPERATURES = (0.25, 0.5, 1.0, 2.0)


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

    @property
    def best(self) -> HybridConfig:
        top = self.rows[0]
        return HybridConfig(weight=top["weight"], temperature=top["temperature"])


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


def tune_hybrid(
    neural_bundle: str | Path | Sequence[str | Path],
    dataset: PreparedDataset,
    *,
    knn: str = "vsknn",
    knn_settings: dict[str, Any] | None = None,
    split: str = "valid",
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
    cutoff: int = 20,
    batch_size: int = 256,
) -> TuneResult:
    """Full-catalogue HR@cutoff / MRR@cutoff (pessimistic ties) of every (w, tau) on ``split``.

    Each member scores a batch once; every grid point re-mixes those scores. ``w = 1`` (the
    neural model alone) is always in the grid, so the result says what the hybrid adds.
    Several ``neural_bundle`` paths make an ensemble: their probabilities are averaged (their
    ``w = 1`` row is the ensemble without kNN, at the grid's first temperature).
    """
    if split == "test":
        raise ShoprecError("tune the hybrid on a validation split, never on test")
    if not weights or not temperatures or batch_size < 1 or cutoff < 1:
        raise ShoprecError("need weights, temperatures, batch_size >= 1 and cutoff >= 1")
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
    grid = sorted(
        {(1.0, temperatures[0])} | {(w, t) for w in weights if w < 1.0 for t in temperatures}
    )
    hits = dict.fromkeys(grid, 0.0)
    rr = dict.fromkeys(grid, 0.0)
    for neural in neurals:
        if hasattr(neural, "eval"):
            neural.eval()
    with torch.inference_mode():
        for lo in range(0, len(targets), batch_size):
            batch = left_pad(prefixes[lo : lo + batch_size])
            tgt = torch.from_numpy(targets[lo : lo + batch_size])
            s_n = [full_scores(neural, batch) for neural in neurals]
            votes = member_votes(member, batch)
            log_p = {
                tau: ensemble_log_probs([neural_log_probs(s, tau) for s in s_n])
                for tau in sorted({t for _, t in grid})
            }
            for w, tau in grid:
                ranks = pessimistic_ranks(mix_parts(log_p[tau], votes, w), tgt)
                hit = ranks <= cutoff
                hits[(w, tau)] += float(hit.sum())
                rr[(w, tau)] += float(torch.where(hit, 1.0 / ranks, torch.zeros_like(ranks)).sum())
    n = len(targets)
    rows = [
        {
            "weight": w,
            "temperature": tau,
            f"{split}/hr@{cutoff}": hits[(w, tau)] / n,
            f"{split}/mrr@{cutoff}": rr[(w, tau)] / n,
        }
        for w, tau in grid
    ]
    rows.sort(key=lambda r: (-r[f"{split}/mrr@{cutoff}"], -r[f"{split}/hr@{cutoff}"], -r["weight"]))
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

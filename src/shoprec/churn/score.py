"""The churn bundle (framework-free) and customer scoring.

Bundle folder layout (written by :func:`write_bundle`, read by :meth:`ChurnBundle.load`)::

    config.json           {"format": 1, "churn_config": ChurnConfig, "model": ChurnNet config,
                           "feature_names": [...], "bgnbd": {...} (hybrid networks only)}
    weights.pt            dict of tensors (torch.save; torch.load(weights_only=True))
    standardization.json  feature names, log transform, mean and std (also in weights.pt)
    calibration.json      the calibrator (Platt a, b / isotonic thresholds / none)
    metrics.json          every model's validation / test metrics, the selection, the data

No pickles: sklearn baselines are reported in ``metrics.json`` but never bundled. The bundle
always holds the network; ``metrics.json`` says which model won on validation.

:func:`score_customers` computes features at ``at`` for every customer with an event before
``at``, the calibrated churn probability, a segment and the top drivers (occlusion against
the mean customer, in log-odds; see :meth:`shoprec.models.churn_net.ChurnNet.occlusion`).
A hybrid network (BG/NBD inputs) gets them from the BG/NBD parameters stored in
``config.json`` (``bgnbd``: fitted at the bundle's latest cut-off), or refitted on the cohort
at ``at`` (``refit_bgnbd``; :mod:`shoprec.churn.hybrid`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from shoprec import schema
from shoprec.churn.baselines import BGNBD
from shoprec.churn.calibration import Calibrator, calibrator_from_dict
from shoprec.churn.config import ChurnConfig
from shoprec.churn.features import compute_features
from shoprec.churn.hybrid import BGNBD_FEATURES, bgnbd_features, cohort_fit_frame
from shoprec.churn.labels import ChurnDataError, cohort, utc
from shoprec.models.churn_net import ChurnNet

__all__ = [
    "BUNDLE_FORMAT",
    "SEGMENTS",
    "ChurnBundle",
    "events_from_dataset",
    "score_customers",
    "write_bundle",
    "write_scores",
]

BUNDLE_FORMAT = 1
CONFIG_JSON = "config.json"
WEIGHTS = "weights.pt"
STANDARDIZATION_JSON = "standardization.json"
CALIBRATION_JSON = "calibration.json"
METRICS_JSON = "metrics.json"

SEGMENTS = ("new", "active", "at_risk", "lapsed")
PROBABILITY = "probability"
SEGMENT = "segment"
SCORED_AT = "scored_at"


def jsonable(value: Any) -> Any:
    """``value`` with NaN / inf floats replaced by None and numpy scalars made plain."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", "utf-8")
    return path


def write_bundle(
    output: str | Path,
    config: ChurnConfig,
    net: ChurnNet,
    calibrator: Calibrator,
    metrics: dict[str, Any],
    *,
    bgnbd: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle folder (see the module docstring) and return it.

    ``bgnbd``: the BG/NBD parameters a hybrid network scores with (``params``,
    ``fitted_at``...; see :mod:`shoprec.churn.hybrid`), stored in ``config.json``.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model_config, tensors = net.to_bundle()
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "churn_config": config.model_dump(mode="json"),
        "model": model_config,
        "feature_names": net.feature_names,
    }
    if bgnbd is not None:
        meta["bgnbd"] = bgnbd
    write_json(out / CONFIG_JSON, meta)
    torch.save(tensors, out / WEIGHTS)
    write_json(
        out / STANDARDIZATION_JSON,
        {
            "feature_names": net.feature_names,
            "log_transform": net.log_transform,
            "mean": tensors["mean"].tolist(),
            "std": tensors["std"].tolist(),
        },
    )
    write_json(out / CALIBRATION_JSON, calibrator.to_dict())
    write_json(out / METRICS_JSON, metrics)
    return out


@dataclass
class ChurnBundle:
    """A loaded churn bundle: config, network, calibrator."""

    root: Path
    config: ChurnConfig
    net: ChurnNet
    calibrator: Calibrator
    metrics: dict[str, Any] = field(default_factory=dict)
    bgnbd: dict[str, Any] | None = None  # a hybrid network's stored BG/NBD parameters

    @property
    def feature_names(self) -> list[str]:
        return self.net.feature_names

    @classmethod
    def load(cls, bundle_dir: str | Path) -> ChurnBundle:
        root = Path(bundle_dir)
        for name in (CONFIG_JSON, WEIGHTS, CALIBRATION_JSON):
            if not (root / name).is_file():
                raise ChurnDataError(f"{root}: not a churn bundle ({name} missing)")
        meta = json.loads((root / CONFIG_JSON).read_text("utf-8"))
        if meta.get("format") != BUNDLE_FORMAT:
            raise ChurnDataError(f"{root}: unsupported bundle format {meta.get('format')!r}")
        config = ChurnConfig.model_validate(meta["churn_config"])
        tensors = torch.load(root / WEIGHTS, weights_only=True, map_location="cpu")
        net = ChurnNet.from_bundle(meta["model"], tensors)
        calibrator = calibrator_from_dict(json.loads((root / CALIBRATION_JSON).read_text("utf-8")))
        metrics_path = root / METRICS_JSON
        metrics = json.loads(metrics_path.read_text("utf-8")) if metrics_path.is_file() else {}
        return cls(
            root=root,
            config=config,
            net=net,
            calibrator=calibrator,
            metrics=metrics,
            bgnbd=meta.get("bgnbd"),
        )

    def matrix(self, features: pl.DataFrame) -> torch.Tensor:
        missing = [f for f in self.feature_names if f not in features.columns]
        if missing:
            raise ChurnDataError(f"features lack {missing}")
        return torch.from_numpy(features.select(self.feature_names).to_numpy().astype(np.float32))

    def predict_raw(self, features: pl.DataFrame) -> np.ndarray:
        """Uncalibrated churn probabilities of the network."""
        logits = self.net.predict_logits(self.matrix(features))
        out: np.ndarray = torch.sigmoid(logits).double().numpy()
        return out

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        """Calibrated churn probabilities."""
        return self.calibrator.transform(self.predict_raw(features))

    def contributions(self, features: pl.DataFrame) -> np.ndarray:
        """Per-customer, per-feature log-odds contributions ``(N, F)`` (occlusion)."""
        out: np.ndarray = self.net.occlusion(self.matrix(features)).double().numpy()
        return out


def _segments(
    recency: np.ndarray, tenure: np.ndarray, prob: np.ndarray, config: ChurnConfig
) -> list[str]:
    s = config.segments
    seg = np.where(
        recency > s.lapsed_recency_days,
        "lapsed",
        np.where(
            tenure < s.new_tenure_days,
            "new",
            np.where(prob >= s.at_risk_probability, "at_risk", "active"),
        ),
    )
    return [str(v) for v in seg]


def score_customers(
    bundle_dir: str | Path | ChurnBundle,
    events: pl.DataFrame | pl.LazyFrame,
    at: datetime,
    *,
    refit_bgnbd: bool = False,
) -> pl.DataFrame:
    """Score every customer with an event before ``at``: one row per customer.

    Columns: ``user_id``, ``probability`` (calibrated P(churn in (at, at + H])), ``segment``
    (``new`` / ``active`` / ``at_risk`` / ``lapsed``, thresholds and precedence in
    :class:`shoprec.churn.config.SegmentConfig`), ``recency_days`` (since the last purchase,
    or since the first event for a customer who never bought; since the last event of any type
    when the definition is ``no_activity``), ``tenure_days``,
    ``driver_k`` / ``contribution_k`` for k = 1..n_drivers (feature name and signed log-odds
    contribution, largest magnitude first; positive pushes towards churn) and ``scored_at``.
    Only events strictly before ``at`` are read. Every known customer is scored, also those
    outside the training cohort's observation window (they are usually ``lapsed``).
    A hybrid network's BG/NBD inputs use the bundle's stored parameters (a customer scores
    the same alone or in a batch); ``refit_bgnbd`` refits BG/NBD on the cohort at ``at``.
    """
    bundle = bundle_dir if isinstance(bundle_dir, ChurnBundle) else ChurnBundle.load(bundle_dir)
    config = bundle.config
    t = utc(at)
    feats = compute_features(events, t, config)
    if any(f in BGNBD_FEATURES for f in bundle.feature_names) and feats.height:
        # the hybrid network: the bundle's BG/NBD parameters (fitted at its latest cut-off),
        # or, with refit_bgnbd, a BG/NBD refitted on the cohort at ``at`` (events < at) as
        # training did at each cut-off
        if refit_bgnbd or not bundle.bgnbd:
            fit_on = cohort_fit_frame(feats, cohort(events, t, config))
            feats = bgnbd_features(feats, config, fit_on)
        else:
            stored = BGNBD(params={k: float(v) for k, v in bundle.bgnbd["params"].items()})
            feats = bgnbd_features(feats, config, model=stored)
    n_drivers = min(config.n_drivers, len(bundle.feature_names))
    recency_col = "activity_recency_days" if config.definition == "no_activity" else "recency_days"
    if feats.height == 0:
        prob = np.zeros(0)
        contrib = np.zeros((0, len(bundle.feature_names)))
    else:
        prob = bundle.predict(feats)
        contrib = bundle.contributions(feats)
    recency = feats.get_column(recency_col).to_numpy()
    tenure = feats.get_column("tenure_days").to_numpy()
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :n_drivers]
    names = np.asarray(bundle.feature_names, dtype=object)
    columns: dict[str, Any] = {
        schema.USER_ID: feats.get_column(schema.USER_ID),
        PROBABILITY: pl.Series(PROBABILITY, prob, dtype=pl.Float64),
        SEGMENT: pl.Series(SEGMENT, _segments(recency, tenure, prob, config), dtype=pl.String),
        "recency_days": feats.get_column(recency_col),
        "tenure_days": feats.get_column("tenure_days"),
    }
    rows = np.arange(feats.height)
    for k in range(n_drivers):
        idx = order[:, k] if feats.height else np.zeros(0, dtype=np.int64)
        columns[f"driver_{k + 1}"] = pl.Series(
            f"driver_{k + 1}", [str(v) for v in names[idx]], dtype=pl.String
        )
        columns[f"contribution_{k + 1}"] = pl.Series(
            f"contribution_{k + 1}", contrib[rows, idx], dtype=pl.Float64
        )
    out = pl.DataFrame(columns)
    return out.with_columns(pl.lit(t, dtype=schema.UTC_TIMESTAMP).alias(SCORED_AT))


def write_scores(df: pl.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``scores.parquet`` and ``scores.csv`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out / "scores.parquet", "csv": out / "scores.csv"}
    df.write_parquet(paths["parquet"])
    df.write_csv(paths["csv"])
    return paths


def events_from_dataset(data_dir: str | Path) -> pl.LazyFrame:
    """All canonical events of a prepared dataset folder (train + valid + test that exist).

    A churn preset normally uses ``split: {kind: none}`` so everything is in train.parquet.
    """
    root = Path(data_dir)
    parts = [root / f"{s}.parquet" for s in ("train", "valid", "test")]
    found = [p for p in parts if p.is_file()]
    if not found:
        raise ChurnDataError(f"{root}: no train/valid/test.parquet; run `shoprec data prepare`")
    frames = []
    for p in found:
        lf = pl.scan_parquet(p)
        names = lf.collect_schema().names()
        frames.append(lf.select([c for c in schema.CANONICAL_COLUMNS if c in names]))
    return pl.concat(frames, how="diagonal_relaxed")

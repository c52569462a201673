"""Typed churn configuration (``configs/churn/*.yaml``): the churn definition, the windows,
the models and the segment thresholds. It is closed (``extra="forbid"``) and is written, in
full, next to every result (``config.json`` of a bundle, ``metrics.json``, experiment JSON).

A churn config says ``task: churn`` at the top level (:func:`is_churn_config`: what
``shoprec train`` dispatches on), where its events come from (``data``: a prepared dataset
folder, prepared from a data preset when missing) and where a run writes
(``<output_dir>/<name>/``); see :mod:`shoprec.churn.run`.

The definition (see :mod:`shoprec.churn.labels`): at a cut-off ``T`` the population is every
customer with a qualifying event in the observation window ``[T - observation_days, T)`` (all
history before ``T`` when ``observation_days`` is null). A customer *churns* when they make no
purchase (``definition: no_purchase``) or no event at all (``definition: no_activity``) in the
horizon ``(T, T + horizon_days]``. Features read events ``< T`` only; labels read events in
``(T, T + H]`` only. An event exactly at ``T`` is in neither window: for date-only logs put the
cut-off at midday (``1997-09-30T12:00:00Z``) so that no day is lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shoprec.config import StrictModel, read_yaml
from shoprec.training.config import DataRef

__all__ = [
    "CalibrationConfig",
    "ChurnConfig",
    "ChurnDataRef",
    "FeatureConfig",
    "GBTConfig",
    "NetConfig",
    "SegmentConfig",
    "is_churn_config",
    "is_churn_config_file",
]


def is_churn_config(data: Mapping[str, Any]) -> bool:
    """Whether a config mapping (a YAML file's top level) is a churn config: ``task: churn``."""
    return data.get("task") == "churn"


def is_churn_config_file(path: str | Path) -> bool:
    """:func:`is_churn_config` of a YAML file (a missing or invalid file raises ConfigError).

    Cheap (YAML only, no torch): what ``shoprec train`` dispatches on.
    """
    return is_churn_config(read_yaml(path))


class FeatureConfig(StrictModel):
    """How the Polars features are computed (see :mod:`shoprec.churn.features`)."""

    trend_days: float = Field(default=90.0, gt=0)  # recent window [T-w, T) vs earlier [T-2w, T-w)
    drop_constant: bool = True  # drop features constant on the training rows (e.g. no views)
    # How a purchase row's value is read: ``price_x_quantity`` (price is a unit price: the
    # synthetic storefront) or ``price`` (price already holds the line total: the CDNOW preset
    # maps ``dollar_value``, the amount paid for all ``n_cds`` of the line, onto ``price``).
    monetary: Literal["price_x_quantity", "price"] = "price_x_quantity"
    # Add shoprec.churn.features.EXTENDED_FEATURES: visits in 7 / 14 / 28 / 56 / 112-day
    # windows, recency against the customer's own visit rhythm, and the recent-vs-earlier change
    # of session depth, cart rate, abandonment and basket size.
    extended: bool = False


class NetConfig(StrictModel):
    """The tabular MLP (:class:`shoprec.models.churn_net.ChurnNet`) and its Lightning training."""

    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(default=0.1, ge=0, lt=1)
    log_transform: bool = True  # sign(x) * log1p(|x|) before standardization
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=8, ge=1)  # early stopping on validation BCE
    threads: int | None = Field(default=1, ge=1)  # torch threads while training (None: as is)
    # The network's inputs: a subset of shoprec.churn.features.FEATURES (None: every model
    # feature), plus, with ``bgnbd``, the BG/NBD quantities fitted per cut-off
    # (shoprec.churn.hybrid: P(alive), P(no purchase in H), expected purchases in H).
    features: list[str] | None = None
    bgnbd: bool = False
    # Members trained from different seeds (initialisation and batch order); the bundled
    # network averages their logits. Member i uses seed ``seed * 1000 + i``.
    ensemble: int = Field(default=1, ge=1)


class GBTConfig(StrictModel):
    """sklearn ``HistGradientBoostingClassifier`` baseline."""

    max_iter: int = Field(default=300, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    max_leaf_nodes: int = Field(default=15, ge=2)
    min_samples_leaf: int = Field(default=40, ge=1)
    l2_regularization: float = Field(default=1.0, ge=0)


class CalibrationConfig(StrictModel):
    """Probability calibration fitted on the validation rows (Platt 1999; Zadrozny & Elkan 2002).

    ``auto`` picks Platt or isotonic by 5-fold cross-fitted log loss on the validation rows.
    """

    method: Literal["platt", "isotonic", "auto", "none"] = "auto"


class SegmentConfig(StrictModel):
    """Segment thresholds used by :func:`shoprec.churn.score.score_customers`.

    Precedence: ``lapsed`` (recency > ``lapsed_recency_days``), then ``new`` (tenure <
    ``new_tenure_days``), then ``at_risk`` (probability >= ``at_risk_probability``), else
    ``active``.
    """

    new_tenure_days: float = Field(default=30.0, ge=0)
    lapsed_recency_days: float = Field(default=365.0, gt=0)
    at_risk_probability: float = Field(default=0.5, ge=0, le=1)


class ChurnDataRef(DataRef):
    """Where a churn run's events come from: a prepared dataset folder (``path``; the events
    of its train / valid / test Parquet files, concatenated), prepared first from ``preset``
    (with ``input`` and the ``overrides``, ``--set`` style) when the folder is missing."""

    overrides: list[str] = Field(default_factory=list)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ChurnConfig(StrictModel):
    """One churn experiment: definition, windows, models, calibration and segments."""

    name: str = "churn"
    task: Literal["churn"] = "churn"  # what ``shoprec train`` dispatches on
    description: str = ""
    # The events (``shoprec train`` / :func:`shoprec.churn.run.fit_churn_run`); optional for
    # :func:`shoprec.churn.train.fit_churn`, which takes the events as an argument.
    data: ChurnDataRef | None = None
    output_dir: str = "runs"  # a run writes <output_dir>/<name>/ (config, bundle, plots)
    definition: Literal["no_purchase", "no_activity"] = "no_purchase"
    active_event: Literal["purchase", "any"] = "any"  # what makes a customer part of the cohort
    observation_days: float | None = Field(default=None, gt=0)  # None: all history before T
    horizon_days: float = Field(gt=0)
    train_cutoffs: list[datetime] = Field(min_length=1)
    valid_cutoffs: list[datetime] = Field(min_length=1)
    test_cutoffs: list[datetime] = Field(default_factory=list)
    # Label windows of an earlier split must end by the next split's first cut-off, so that no
    # training label reads an event that validation / test features or labels could see.
    strict_label_gap: bool = True
    # Refuse a cut-off whose horizon runs past the last event of the log (censored labels).
    allow_censored_labels: bool = False
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    net: NetConfig = Field(default_factory=NetConfig)
    gbt: GBTConfig = Field(default_factory=GBTConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    segments: SegmentConfig = Field(default_factory=SegmentConfig)
    bgnbd_time_unit_days: float = Field(default=7.0, gt=0)  # BG/NBD is fitted in weeks
    select_metric: Literal["roc_auc", "pr_auc", "log_loss"] = "roc_auc"
    n_drivers: int = Field(default=3, ge=1)
    seed: int = 0

    @field_validator("train_cutoffs", "valid_cutoffs", "test_cutoffs")
    @classmethod
    def _sorted_utc(cls, values: list[datetime]) -> list[datetime]:
        out = sorted(_utc(v) for v in values)
        if len(set(out)) != len(out):
            raise ValueError("cut-offs must be distinct")
        return out

    @model_validator(mode="after")
    def _ordered(self) -> ChurnConfig:
        horizon = self.horizon
        splits = [("train", self.train_cutoffs), ("valid", self.valid_cutoffs)]
        if self.test_cutoffs:
            splits.append(("test", self.test_cutoffs))
        for (a, earlier), (b, later) in itertools.pairwise(splits):
            if max(earlier) >= min(later):
                raise ValueError(f"every {b} cut-off must be strictly later than every {a} one")
            if self.strict_label_gap and max(earlier) + horizon > min(later):
                raise ValueError(
                    f"label window of the last {a} cut-off ({max(earlier).isoformat()} + "
                    f"{self.horizon_days} days) runs past the first {b} cut-off "
                    f"({min(later).isoformat()}); move the cut-offs or set strict_label_gap: "
                    "false"
                )
        return self

    @property
    def horizon(self) -> timedelta:
        return timedelta(days=self.horizon_days)

    def cutoffs(self, split: str) -> list[datetime]:
        """The cut-offs of ``train``, ``valid`` or ``test``."""
        return {
            "train": self.train_cutoffs,
            "valid": self.valid_cutoffs,
            "test": self.test_cutoffs,
        }[split]

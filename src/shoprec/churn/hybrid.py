"""BG/NBD quantities as network inputs (the hybrid churn model).

At every cut-off ``T`` a BG/NBD model (Fader, Hardie & Lee 2005) is fitted, unsupervised, on
the purchase histories of that cut-off's cohort (events ``< T`` only: the summaries
``x, t_x, T`` come from :func:`shoprec.churn.features.compute_features`), and three
per-customer quantities are added as features:

* ``bgnbd_p_alive``: P(alive at T) (FHL 2005 eq. 13),
* ``bgnbd_p_no_purchase``: P(no transaction in (T, T + H]),
* ``bgnbd_expected_purchases``: E[transactions in (T, T + H]] (FHL 2005 eq. 10).

Fitting per cut-off (rather than once on the training rows) keeps every feature time-safe -
no parameter is estimated from events after the cut-off it describes - and lets the
parameters follow the cohort as it ages, which is exactly the shift between training,
validation and test cut-offs.

Scoring: the bundle stores the parameters fitted at the latest cut-off it was evaluated on
(the last test cut-off, else the last validation one); :func:`shoprec.churn.score.
score_customers` uses them by default, so one customer scored alone (the service) gets the
same probability as in a batch, and scoring at that cut-off reproduces the fit-time
predictions exactly. ``refit_bgnbd=True`` refits on the cohort at the scoring date instead,
as training did at each cut-off (for a whole store scored long after training).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.churn.baselines import BGNBD, bgnbd_inputs
from shoprec.churn.config import ChurnConfig
from shoprec.churn.labels import CUTOFF

__all__ = [
    "BGNBD_FEATURES",
    "add_bgnbd_features",
    "bgnbd_features",
    "cohort_fit_frame",
    "fit_bgnbd",
]

BGNBD_FEATURES: tuple[str, ...] = (
    "bgnbd_p_alive",
    "bgnbd_p_no_purchase",
    "bgnbd_expected_purchases",
)


def fit_bgnbd(features: pl.DataFrame, config: ChurnConfig) -> BGNBD:
    """BG/NBD fitted on the churn features of one cut-off's customers (``frequency``,
    ``recency_days``, ``first_purchase_age_days``, ``tenure_days``)."""
    return BGNBD().fit(*bgnbd_inputs(features, config.bgnbd_time_unit_days))


def bgnbd_features(
    features: pl.DataFrame,
    config: ChurnConfig,
    fit_on: pl.DataFrame | None = None,
    model: BGNBD | None = None,
) -> pl.DataFrame:
    """``features`` with :data:`BGNBD_FEATURES` added (Float64), in the same row order.

    The quantities come from ``model`` when given, else from a BG/NBD model fitted on
    ``fit_on`` (default: ``features`` itself), which must hold one cut-off's features.
    """
    if features.height == 0:
        return features.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(f) for f in BGNBD_FEATURES
        )
    if model is None:
        source = fit_on if fit_on is not None and fit_on.height else features
        model = fit_bgnbd(source, config)
    unit = config.bgnbd_time_unit_days
    x, t_x, big_t = bgnbd_inputs(features, unit)
    horizon = config.horizon_days / unit
    values = {
        "bgnbd_p_alive": model.p_alive(x, t_x, big_t),
        "bgnbd_p_no_purchase": model.p_no_purchase(x, t_x, big_t, horizon),
        "bgnbd_expected_purchases": model.expected_purchases(x, t_x, big_t, horizon),
    }
    return features.with_columns(
        pl.Series(name, np.asarray(v, dtype=np.float64), dtype=pl.Float64)
        for name, v in values.items()
    )


def add_bgnbd_features(examples: pl.DataFrame, config: ChurnConfig) -> pl.DataFrame:
    """Stacked examples (``cutoff`` column) with :data:`BGNBD_FEATURES`, one fit per cut-off.

    Each cut-off's model is fitted on that cut-off's rows (its cohort) only; row order is kept.
    """
    if examples.height == 0:
        return bgnbd_features(examples, config)
    indexed = examples.with_row_index("_row")
    parts = [
        bgnbd_features(part, config) for _, part in indexed.group_by(CUTOFF, maintain_order=True)
    ]
    return pl.concat(parts, how="vertical").sort("_row").drop("_row")


def cohort_fit_frame(features: pl.DataFrame, members: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``features`` whose customer is in ``members`` (the cohort at the date)."""
    return features.join(members.select(schema.USER_ID), on=schema.USER_ID, how="semi")

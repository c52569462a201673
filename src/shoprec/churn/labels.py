"""Churn cohort and labels at a cut-off ``T``, with no look-ahead.

* The **cohort** at ``T``: customers (non-null ``user_id``) with a qualifying event in the
  observation window ``[T - observation_days, T)`` (all history before ``T`` when
  ``observation_days`` is null). ``active_event: purchase`` counts purchases only, ``any``
  counts every event type.
* The **label** ``churned`` is 1 when the customer makes no purchase (``definition:
  no_purchase``) / no event of any type (``definition: no_activity``) in ``(T, T + H]``.

The cohort reads events ``< T`` only and the label reads events in ``(T, T + H]`` only; an
event exactly at ``T`` is in neither (``tests/churn/test_time_safety.py`` checks both).
This is the usual "non-contractual churn at a cut-off" set-up (e.g. Fader, Hardie & Lee 2005,
calibration / holdout periods; Gupta et al. 2006 for churn in non-contractual settings).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from shoprec import schema
from shoprec.churn.config import ChurnConfig
from shoprec.errors import ShoprecError

__all__ = [
    "CHURNED",
    "CUTOFF",
    "ChurnDataError",
    "as_events",
    "cohort",
    "make_labels",
]

CHURNED = "churned"  # label column: 1 = churned in (T, T + H], 0 = came back
CUTOFF = "cutoff"  # the cut-off T a row belongs to (stacked examples)


class ChurnDataError(ShoprecError, ValueError):
    """Events that cannot be used for churn (missing columns, censored horizon...)."""


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_events(events: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Canonical events with a known customer, as a LazyFrame with every optional column.

    Anonymous rows (null ``user_id``) are dropped: churn is about known customers. Missing
    optional columns (category, price, quantity) are added as nulls so features can always
    be computed; the timestamp is cast to UTC microseconds.
    """
    lf = events.lazy()
    names = lf.collect_schema().names()
    missing = [c for c in (schema.USER_ID, schema.TIMESTAMP, schema.EVENT_TYPE) if c not in names]
    if missing:
        raise ChurnDataError(f"events lack the canonical column(s) {missing}; got {names}")
    dtype = lf.collect_schema()[schema.TIMESTAMP]
    if not isinstance(dtype, pl.Datetime):
        raise ChurnDataError(f"{schema.TIMESTAMP} must be a Datetime column, got {dtype}")
    ts = pl.col(schema.TIMESTAMP)
    ts = (
        ts.dt.replace_time_zone("UTC")
        if dtype.time_zone is None
        else ts.dt.convert_time_zone("UTC")
    )
    exprs: list[pl.Expr] = [
        pl.col(schema.USER_ID).cast(pl.String),
        ts.cast(schema.UTC_TIMESTAMP),
        pl.col(schema.EVENT_TYPE).cast(pl.String),
    ]
    optional: dict[str, pl.DataType] = {
        schema.SESSION_ID: pl.String(),
        schema.ITEM_ID: pl.String(),
        **schema.OPTIONAL_SCHEMA,
    }
    for name, dtype in optional.items():
        if name in names:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    return lf.select(exprs).filter(pl.col(schema.USER_ID).is_not_null())


def _window(lf: pl.LazyFrame, start: datetime | None, end: datetime) -> pl.LazyFrame:
    """Events with ``start <= timestamp < end`` (no lower bound when ``start`` is None)."""
    cond = pl.col(schema.TIMESTAMP) < pl.lit(end, dtype=schema.UTC_TIMESTAMP)
    if start is not None:
        cond = cond & (pl.col(schema.TIMESTAMP) >= pl.lit(start, dtype=schema.UTC_TIMESTAMP))
    return lf.filter(cond)


def cohort(
    events: pl.DataFrame | pl.LazyFrame, cutoff: datetime, config: ChurnConfig
) -> pl.DataFrame:
    """Customers active in the observation window before ``cutoff``: one column, sorted."""
    t = utc(cutoff)
    start = t - timedelta(days=config.observation_days) if config.observation_days else None
    lf = _window(as_events(events), start, t)
    if config.active_event == "purchase":
        lf = lf.filter(pl.col(schema.EVENT_TYPE) == schema.PURCHASE)
    return lf.select(schema.USER_ID).unique().sort(schema.USER_ID).collect()


def horizon_events(
    events: pl.DataFrame | pl.LazyFrame, cutoff: datetime, config: ChurnConfig
) -> pl.LazyFrame:
    """Events that count against churn, in ``(T, T + H]`` only."""
    t = utc(cutoff)
    ts = pl.col(schema.TIMESTAMP)
    lf = as_events(events).filter(
        (ts > pl.lit(t, dtype=schema.UTC_TIMESTAMP))
        & (ts <= pl.lit(t + config.horizon, dtype=schema.UTC_TIMESTAMP))
    )
    if config.definition == "no_purchase":
        lf = lf.filter(pl.col(schema.EVENT_TYPE) == schema.PURCHASE)
    return lf


def check_horizon(
    events: pl.DataFrame | pl.LazyFrame, cutoff: datetime, config: ChurnConfig
) -> None:
    """Raise when the log ends more than a day before ``T + H`` (the labels would be censored)."""
    if config.allow_censored_labels:
        return
    last = as_events(events).select(pl.col(schema.TIMESTAMP).max()).collect().item()
    end = utc(cutoff) + config.horizon
    if last is None or last < end - timedelta(days=1):
        raise ChurnDataError(
            f"cut-off {utc(cutoff).isoformat()} + {config.horizon_days} days ends at "
            f"{end.isoformat()}, but the log ends at {last}: labels would be censored "
            "(move the cut-off, shorten the horizon or set allow_censored_labels: true)"
        )


def make_labels(
    events: pl.DataFrame | pl.LazyFrame,
    cutoff: datetime,
    config: ChurnConfig,
    users: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``user_id, churned`` (Int8) for the cohort at ``cutoff`` (or for ``users`` if given).

    ``churned = 1`` when the customer has no qualifying event in ``(T, T + H]``.
    """
    members = cohort(events, cutoff, config) if users is None else users.select(schema.USER_ID)
    returned = (
        horizon_events(events, cutoff, config)
        .select(schema.USER_ID)
        .unique()
        .with_columns(pl.lit(0, dtype=pl.Int8).alias(CHURNED))
        .collect()
    )
    return (
        members.join(returned, on=schema.USER_ID, how="left")
        .with_columns(pl.col(CHURNED).fill_null(1).cast(pl.Int8))
        .sort(schema.USER_ID)
    )

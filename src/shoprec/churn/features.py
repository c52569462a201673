"""Per-customer churn features at a cut-off ``T``, in Polars, from events ``< T`` only.

RFM (recency, frequency, monetary value; Hughes 1994, as used by Fader, Hardie & Lee 2005
"RFM and CLV") extended with inter-purchase time statistics, an activity trend, sessions,
views, carts, cart abandonment, category diversity and tenure. A *transaction* is one
customer-day with at least one purchase (the usual unit of buy-till-you-die models), so two
order lines on the same day are one transaction.

Customers with one purchase (or none: browsers) are kept. Their undefined statistics get a
documented value: with no repeat purchase the mean inter-purchase time is the time since the
first purchase (a lower bound: the customer has waited at least that long), its standard
deviation is 0, and ``single_purchase`` flags them; a customer with no purchase has recency =
tenure and zero frequency / monetary value.

Every feature is a Float64 in natural units (days, counts, money), so drivers can be read as
they are; the network transforms and standardizes them itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl

from shoprec import schema
from shoprec.churn.config import ChurnConfig, FeatureConfig
from shoprec.churn.labels import (
    CHURNED,
    CUTOFF,
    as_events,
    check_horizon,
    cohort,
    make_labels,
    utc,
)

__all__ = [
    "FEATURES",
    "RFM_FEATURES",
    "build_examples",
    "compute_features",
]

FEATURES: tuple[str, ...] = (
    "recency_days",  # days since the last purchase (no purchase: tenure_days)
    "activity_recency_days",  # days since the last event of any type
    "frequency",  # transactions (customer-days with a purchase)
    "items_bought",  # sum of quantity over purchases (missing quantity counts 1)
    "monetary_total",  # sum of purchase values (price * quantity, or price: ``monetary``)
    "monetary_mean",  # monetary_total / frequency (0 without purchases)
    "ipt_mean_days",  # mean days between consecutive transactions
    "ipt_std_days",  # their standard deviation (0 with fewer than 3 transactions)
    "recency_ratio",  # recency_days / (ipt_mean_days + 1): "overdue" relative to habit
    "purchases_recent",  # transactions in [T - w, T)
    "purchases_earlier",  # transactions in [T - 2w, T - w)
    "purchase_trend",  # (recent - earlier) / (recent + earlier), 0 when both are 0
    "events_recent",  # events of any type in [T - w, T)
    "events_earlier",  # events of any type in [T - 2w, T - w)
    "activity_trend",  # (recent - earlier) / (recent + earlier), 0 when both are 0
    "n_events",
    "active_days",  # distinct days with any event
    "visit_gap_mean_days",  # mean days between consecutive active days (one day: tenure)
    "activity_recency_ratio",  # activity_recency_days / (visit_gap_mean_days + 1)
    "n_sessions",  # distinct sessions (a missing session id counts one per customer-day)
    "sessions_recent",  # distinct sessions in [T - w, T)
    "n_views",
    "n_carts",
    "cart_abandonment_rate",  # sessions with a cart but no purchase / sessions with a cart
    "n_categories",  # distinct categories touched
    "tenure_days",  # days since the first event of any type
    "first_purchase_age_days",  # days since the first purchase (0 without purchases)
    "single_purchase",  # 1.0 when frequency == 1
)
RFM_FEATURES: tuple[str, ...] = ("recency_days", "frequency", "monetary_mean")

_US_PER_DAY = 86_400_000_000


def _days(expr: pl.Expr) -> pl.Expr:
    return expr.dt.total_microseconds().cast(pl.Float64) / _US_PER_DAY


def _trend(recent: str, earlier: str) -> pl.Expr:
    total = pl.col(recent) + pl.col(earlier)
    return pl.when(total > 0).then((pl.col(recent) - pl.col(earlier)) / total).otherwise(0.0)


def compute_features(
    events: pl.DataFrame | pl.LazyFrame,
    cutoff: datetime,
    config: FeatureConfig | ChurnConfig | None = None,
    users: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``user_id`` + :data:`FEATURES` at ``cutoff``, one row per customer, sorted by user.

    Only events strictly before ``cutoff`` are read. ``users`` (a frame with ``user_id``)
    restricts / orders the output, e.g. to the churn cohort; by default every customer with an
    event before ``cutoff`` is returned. A listed customer without events gets all-zero
    activity and zero tenure.
    """
    fc = config.features if isinstance(config, ChurnConfig) else (config or FeatureConfig())
    t = utc(cutoff)
    w = timedelta(days=fc.trend_days)
    lit_t = pl.lit(t, dtype=schema.UTC_TIMESTAMP)
    recent_start = pl.lit(t - w, dtype=schema.UTC_TIMESTAMP)
    earlier_start = pl.lit(t - 2 * w, dtype=schema.UTC_TIMESTAMP)

    ts = pl.col(schema.TIMESTAMP)
    et = pl.col(schema.EVENT_TYPE)
    day = ts.dt.truncate("1d")
    lf = as_events(events).filter(ts < lit_t)
    # session key: the given id, or the customer-day when there is none. A struct rather than
    # a formatted string: pl.format / concat_str panics in Polars 2.1 on a filtered
    # multi-chunk frame ("assertion failed: i < self.len()").
    session = pl.col(schema.SESSION_ID)
    lf = lf.with_columns(
        pl.struct(session.alias("s"), pl.when(session.is_null()).then(day).alias("d")).alias(
            "_session"
        ),
        day.alias("_day"),
    )
    is_recent = ts >= recent_start
    is_earlier = (ts >= earlier_start) & (ts < recent_start)

    activity = lf.group_by(schema.USER_ID).agg(
        _days(lit_t - ts.max()).alias("activity_recency_days"),
        _days(lit_t - ts.min()).alias("tenure_days"),
        pl.len().cast(pl.Float64).alias("n_events"),
        pl.col("_day").n_unique().cast(pl.Float64).alias("active_days"),
        _days(pl.col("_day").unique().sort().diff()).drop_nulls().mean().alias("_visit_gap"),
        pl.col("_session").n_unique().cast(pl.Float64).alias("n_sessions"),
        pl.col("_session").filter(is_recent).n_unique().cast(pl.Float64).alias("sessions_recent"),
        (et == schema.VIEW).sum().cast(pl.Float64).alias("n_views"),
        (et == schema.CART).sum().cast(pl.Float64).alias("n_carts"),
        pl.col(schema.CATEGORY).drop_nulls().n_unique().cast(pl.Float64).alias("n_categories"),
        is_recent.sum().cast(pl.Float64).alias("events_recent"),
        is_earlier.sum().cast(pl.Float64).alias("events_earlier"),
    )

    carts = (
        lf.group_by(schema.USER_ID, "_session")
        .agg(
            (et == schema.CART).any().alias("_has_cart"),
            (et == schema.PURCHASE).any().alias("_has_purchase"),
        )
        .group_by(schema.USER_ID)
        .agg(
            pl.col("_has_cart").sum().alias("_cart_sessions"),
            (pl.col("_has_cart") & ~pl.col("_has_purchase")).sum().alias("_abandoned"),
        )
        .select(
            schema.USER_ID,
            pl.when(pl.col("_cart_sessions") > 0)
            .then(pl.col("_abandoned") / pl.col("_cart_sessions"))
            .otherwise(0.0)
            .cast(pl.Float64)
            .alias("cart_abandonment_rate"),
        )
    )

    qty = pl.col(schema.QUANTITY).fill_null(1).cast(pl.Float64)
    price = pl.col(schema.PRICE).fill_null(0.0)
    value = price * qty if fc.monetary == "price_x_quantity" else price
    transactions = (
        lf.filter(et == schema.PURCHASE)
        .group_by(schema.USER_ID, "_day")
        .agg(
            value.sum().alias("_value"),
            qty.sum().alias("_items"),
            ts.min().alias("_first"),
            ts.max().alias("_last"),
        )
        .sort(schema.USER_ID, "_day")
    )
    gaps = _days(pl.col("_day").sort().diff()).drop_nulls()
    purchases = transactions.group_by(schema.USER_ID).agg(
        pl.len().cast(pl.Float64).alias("frequency"),
        pl.col("_items").sum().alias("items_bought"),
        pl.col("_value").sum().alias("monetary_total"),
        _days(lit_t - pl.col("_last").max()).alias("recency_days"),
        _days(lit_t - pl.col("_first").min()).alias("first_purchase_age_days"),
        gaps.mean().alias("_ipt_mean"),
        gaps.std().alias("_ipt_std"),
        (pl.col("_first") >= recent_start).sum().cast(pl.Float64).alias("purchases_recent"),
        ((pl.col("_first") >= earlier_start) & (pl.col("_first") < recent_start))
        .sum()
        .cast(pl.Float64)
        .alias("purchases_earlier"),
    )

    base = activity if users is None else users.lazy().select(schema.USER_ID).unique()
    joined = base.join(activity, on=schema.USER_ID, how="left") if users is not None else base
    joined = joined.join(purchases, on=schema.USER_ID, how="left").join(
        carts, on=schema.USER_ID, how="left"
    )
    zero_fill = [
        "activity_recency_days",
        "tenure_days",
        "n_events",
        "active_days",
        "n_sessions",
        "sessions_recent",
        "n_views",
        "n_carts",
        "n_categories",
        "events_recent",
        "events_earlier",
        "frequency",
        "items_bought",
        "monetary_total",
        "first_purchase_age_days",
        "purchases_recent",
        "purchases_earlier",
        "cart_abandonment_rate",
    ]
    out = joined.with_columns(pl.col(c).fill_null(0.0) for c in zero_fill).with_columns(
        pl.col("recency_days").fill_null(pl.col("tenure_days")),
        pl.when(pl.col("frequency") > 0)
        .then(pl.col("monetary_total") / pl.col("frequency"))
        .otherwise(0.0)
        .alias("monetary_mean"),
        # no repeat purchase: the gap is at least the time since the first purchase
        pl.col("_ipt_mean")
        .fill_null(
            pl.when(pl.col("frequency") > 0)
            .then(pl.col("first_purchase_age_days"))
            .otherwise(pl.col("tenure_days"))
        )
        .alias("ipt_mean_days"),
        pl.col("_ipt_std").fill_null(0.0).alias("ipt_std_days"),
        pl.col("_visit_gap").fill_null(pl.col("tenure_days")).alias("visit_gap_mean_days"),
        (pl.col("frequency") == 1).cast(pl.Float64).alias("single_purchase"),
    )
    out = out.with_columns(
        (pl.col("recency_days") / (pl.col("ipt_mean_days") + 1.0)).alias("recency_ratio"),
        (pl.col("activity_recency_days") / (pl.col("visit_gap_mean_days") + 1.0)).alias(
            "activity_recency_ratio"
        ),
        _trend("purchases_recent", "purchases_earlier").alias("purchase_trend"),
        _trend("events_recent", "events_earlier").alias("activity_trend"),
    )
    return (
        out.select(schema.USER_ID, *(pl.col(f).cast(pl.Float64) for f in FEATURES))
        .sort(schema.USER_ID)
        .collect()
    )


def build_examples(
    events: pl.DataFrame | pl.LazyFrame,
    cutoffs: Sequence[datetime],
    config: ChurnConfig,
    *,
    check: bool = True,
) -> pl.DataFrame:
    """Stacked ``cutoff, user_id, FEATURES..., churned`` rows for each cut-off's cohort.

    Features read events ``< T``, labels events in ``(T, T + H]``; ``check`` refuses a
    cut-off whose horizon runs past the end of the log (see ``allow_censored_labels``).
    """
    lf = as_events(events).collect().lazy()  # read / cast once, reuse for every cut-off
    frames = []
    for cutoff in cutoffs:
        t = utc(cutoff)
        if check:
            check_horizon(lf, t, config)
        members = cohort(lf, t, config)
        feats = compute_features(lf, t, config, users=members)
        labels = make_labels(lf, t, config, users=members)
        frames.append(
            feats.join(labels, on=schema.USER_ID, how="left").select(
                pl.lit(t, dtype=schema.UTC_TIMESTAMP).alias(CUTOFF),
                schema.USER_ID,
                *FEATURES,
                CHURNED,
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={
                CUTOFF: schema.UTC_TIMESTAMP,
                schema.USER_ID: pl.String(),
                **dict.fromkeys(FEATURES, pl.Float64()),
                CHURNED: pl.Int8(),
            }
        )
    return pl.concat(frames, how="vertical")

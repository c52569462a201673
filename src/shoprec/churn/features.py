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

With ``features.extended`` (:data:`EXTENDED_FEATURES`, added after :data:`FEATURES`) come the
cadence and window features of churn practice: visits (sessions) in the last 7 / 14 / 28 / 56
/ 112 days and recent-vs-longer visit rates, recency relative to the customer's own visit
rhythm (median, latest and longest gap between active days: an "overdue" ratio), the change of
session depth, add-to-cart rate, cart abandonment and basket size between a recent and an
earlier window, and the days since the last cart. A window's rate is divided by the part of
the window the customer was known (``min(w, tenure)``, at least one day), so new customers are
not read as slowing down. A ratio whose earlier side has no data is 1 (no evidence of a
change), a difference 0, and a "days since" without the event is ``tenure_days``.
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
    "ALL_FEATURES",
    "EXTENDED_FEATURES",
    "FEATURES",
    "RFM_FEATURES",
    "WINDOWS_DAYS",
    "build_examples",
    "compute_features",
    "feature_names",
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
WINDOWS_DAYS: tuple[int, ...] = (7, 14, 28, 56, 112)
# recent / earlier windows of the change features: [T - 28, T) vs [T - 112, T - 28) for
# sessions, carts and abandonment; [T - 56, T) vs [T - 112, T - 56) for (rarer) purchases
_RECENT, _LONG, _BASKET = 28, 112, 56
_EWM_DAYS: tuple[int, ...] = (7, 28, 84)  # decay times of the exponentially weighted visits
EXTENDED_FEATURES: tuple[str, ...] = (
    *(f"sessions_{w}d" for w in WINDOWS_DAYS),  # sessions started in [T - w, T)
    "visit_rate_ratio_14_56",  # sessions per known day in the last 14 / in the last 56 days
    "visit_rate_ratio_28_112",  # the same, 28 / 112 days
    "visit_gap_median_days",  # median days between consecutive active days (one day: tenure)
    "visit_gap_last_days",  # mean of the last (up to) 3 gaps (one active day: tenure)
    "visit_gap_max_days",  # longest gap (one active day: tenure)
    "visit_gap_growth",  # (visit_gap_last_days + 1) / (visit_gap_median_days + 1)
    "overdue_ratio",  # activity_recency_days / (visit_gap_median_days + 1)
    "silence_vs_max_gap",  # activity_recency_days / (visit_gap_max_days + 1)
    "views_per_session_recent",  # views per session started in the last 28 days (0: none)
    "views_per_session_ratio",  # (recent + 1) / (earlier [T-112, T-28) + 1); 1 if a side is empty
    "cart_rate_recent",  # carts / views in the last 28 days (0 without views)
    "cart_rate_ratio",  # (recent + 0.05) / (earlier + 0.05); 1 if a side has no views
    "abandonment_recent",  # abandoned / cart sessions in the last 28 days (0 without)
    "abandonment_change",  # recent - earlier [T-112, T-28); 0 if a side has no cart session
    "basket_items_ratio",  # items per buying session, last 56 vs [T-112, T-56); 1 if a side empty
    "days_since_last_cart",  # days since the last cart event (none: tenure_days)
    *(f"visits_ewm_{h}d" for h in _EWM_DAYS),  # sum over sessions of exp(-age / h days)
    "visit_intensity_ratio",  # (visits_ewm_14d / 14) / (visits_ewm_84d / 84); 0 if none
    "views_last3_ratio",  # (views per session, last 3 sessions + 1) / (all sessions + 1)
    "carts_last3_ratio",  # (carts per session, last 3 + 0.1) / (all + 0.1)
)
ALL_FEATURES: tuple[str, ...] = (*FEATURES, *EXTENDED_FEATURES)


def feature_names(config: FeatureConfig | ChurnConfig | None = None) -> tuple[str, ...]:
    """The features :func:`compute_features` returns under ``config``: :data:`FEATURES`,
    plus :data:`EXTENDED_FEATURES` with ``features.extended``."""
    fc = config.features if isinstance(config, ChurnConfig) else (config or FeatureConfig())
    return ALL_FEATURES if fc.extended else FEATURES


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
    """``user_id`` + :func:`feature_names` at ``cutoff``, one row per customer, sorted by user.

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
    names = feature_names(fc)
    if fc.extended:
        out = out.join(_extended(lf, t), on=schema.USER_ID, how="left").with_columns(
            _fill_extended()
        )
    return (
        out.select(schema.USER_ID, *(pl.col(f).cast(pl.Float64) for f in names))
        .sort(schema.USER_ID)
        .collect()
    )


def _ratio_or_one(num: pl.Expr, den: pl.Expr, ok: pl.Expr) -> pl.Expr:
    return pl.when(ok).then(num / den).otherwise(1.0)


def _extended(lf: pl.LazyFrame, t: datetime) -> pl.LazyFrame:
    """The raw parts of :data:`EXTENDED_FEATURES` per customer (events ``< t`` in ``lf``,
    with the ``_session`` / ``_day`` keys of :func:`compute_features`)."""
    ts = pl.col(schema.TIMESTAMP)
    et = pl.col(schema.EVENT_TYPE)
    lit_t = pl.lit(t, dtype=schema.UTC_TIMESTAMP)

    def since(days: int) -> pl.Expr:
        return pl.lit(t - timedelta(days=days), dtype=schema.UTC_TIMESTAMP)

    qty = pl.col(schema.QUANTITY).fill_null(1).cast(pl.Float64)
    sessions = lf.group_by(schema.USER_ID, "_session").agg(
        ts.min().alias("_start"),
        (et == schema.VIEW).sum().cast(pl.Float64).alias("_views"),
        (et == schema.CART).sum().cast(pl.Float64).alias("_carts"),
        (et == schema.CART).any().alias("_has_cart"),
        (et == schema.PURCHASE).any().alias("_has_purchase"),
        qty.filter(et == schema.PURCHASE).sum().alias("_items"),
    )
    start = pl.col("_start")
    recent = start >= since(_RECENT)
    earlier = (start >= since(_LONG)) & ~recent
    b_recent = start >= since(_BASKET)
    b_earlier = (start >= since(_LONG)) & ~b_recent
    abandoned = pl.col("_has_cart") & ~pl.col("_has_purchase")
    buying = pl.col("_has_purchase")

    def total(col: str | pl.Expr, mask: pl.Expr, name: str) -> pl.Expr:
        expr = pl.col(col) if isinstance(col, str) else col
        return expr.filter(mask).sum().cast(pl.Float64).alias(name)

    age = _days(lit_t - start)
    per_session = (
        sessions.sort(schema.USER_ID, "_start")
        .group_by(schema.USER_ID)
        .agg(
            *((-age / h).exp().sum().alias(f"visits_ewm_{h}d") for h in (*_EWM_DAYS, 14)),
            ((pl.col("_views").tail(3).mean() + 1.0) / (pl.col("_views").mean() + 1.0)).alias(
                "views_last3_ratio"
            ),
            ((pl.col("_carts").tail(3).mean() + 0.1) / (pl.col("_carts").mean() + 0.1)).alias(
                "carts_last3_ratio"
            ),
            *(
                (start >= since(w)).sum().cast(pl.Float64).alias(f"sessions_{w}d")
                for w in WINDOWS_DAYS
            ),
            earlier.sum().cast(pl.Float64).alias("_n_e"),
            total("_views", recent, "_v_r"),
            total("_views", earlier, "_v_e"),
            total("_carts", recent, "_c_r"),
            total("_carts", earlier, "_c_e"),
            total("_has_cart", recent, "_cs_r"),
            total("_has_cart", earlier, "_cs_e"),
            total(abandoned, recent, "_ab_r"),
            total(abandoned, earlier, "_ab_e"),
            total("_items", buying & b_recent, "_it_r"),
            total("_items", buying & b_earlier, "_it_e"),
            total(buying, b_recent, "_bs_r"),
            total(buying, b_earlier, "_bs_e"),
        )
    )
    gaps = _days(pl.col("_day").unique().sort().diff()).drop_nulls()
    per_user = lf.group_by(schema.USER_ID).agg(
        _days(lit_t - ts.max()).alias("_recency"),
        _days(lit_t - ts.min()).alias("_tenure"),
        gaps.median().alias("_gap_median"),
        gaps.tail(3).mean().alias("_gap_last"),
        gaps.max().alias("_gap_max"),
        _days(lit_t - ts.filter(et == schema.CART).max()).alias("_since_cart"),
    )
    tenure = pl.col("_tenure")

    def rate(w: int) -> pl.Expr:
        return pl.col(f"sessions_{w}d") / pl.min_horizontal(tenure, pl.lit(float(w))).clip(
            lower_bound=1.0
        )

    gap_median = pl.col("_gap_median").fill_null(tenure)
    gap_last = pl.col("_gap_last").fill_null(tenure)
    gap_max = pl.col("_gap_max").fill_null(tenure)
    n_r = pl.col(f"sessions_{_RECENT}d")
    n_e = pl.col("_n_e")
    vps_r = pl.col("_v_r") / n_r
    vps_e = pl.col("_v_e") / n_e
    cr_r = pl.col("_c_r") / pl.col("_v_r")
    cr_e = pl.col("_c_e") / pl.col("_v_e")
    ab_r = pl.col("_ab_r") / pl.col("_cs_r")
    ab_e = pl.col("_ab_e") / pl.col("_cs_e")
    return (
        per_user.join(per_session, on=schema.USER_ID, how="left")
        .with_columns(pl.col(f"sessions_{w}d").fill_null(0.0) for w in WINDOWS_DAYS)
        .select(
            schema.USER_ID,
            *(pl.col(f"sessions_{w}d") for w in WINDOWS_DAYS),
            *(pl.col(f"visits_ewm_{h}d") for h in _EWM_DAYS),
            pl.when(pl.col("visits_ewm_84d") > 0)
            .then((pl.col("visits_ewm_14d") / 14.0) / (pl.col("visits_ewm_84d") / 84.0))
            .otherwise(0.0)
            .alias("visit_intensity_ratio"),
            pl.col("views_last3_ratio"),
            pl.col("carts_last3_ratio"),
            pl.when(rate(56) > 0)
            .then(rate(14) / rate(56))
            .otherwise(0.0)
            .alias("visit_rate_ratio_14_56"),
            pl.when(rate(112) > 0)
            .then(rate(28) / rate(112))
            .otherwise(0.0)
            .alias("visit_rate_ratio_28_112"),
            gap_median.alias("visit_gap_median_days"),
            gap_last.alias("visit_gap_last_days"),
            gap_max.alias("visit_gap_max_days"),
            ((gap_last + 1.0) / (gap_median + 1.0)).alias("visit_gap_growth"),
            (pl.col("_recency") / (gap_median + 1.0)).alias("overdue_ratio"),
            (pl.col("_recency") / (gap_max + 1.0)).alias("silence_vs_max_gap"),
            pl.when(n_r > 0).then(vps_r).otherwise(0.0).alias("views_per_session_recent"),
            _ratio_or_one(vps_r + 1.0, vps_e + 1.0, (n_r > 0) & (n_e > 0)).alias(
                "views_per_session_ratio"
            ),
            pl.when(pl.col("_v_r") > 0).then(cr_r).otherwise(0.0).alias("cart_rate_recent"),
            _ratio_or_one(
                cr_r + 0.05, cr_e + 0.05, (pl.col("_v_r") > 0) & (pl.col("_v_e") > 0)
            ).alias("cart_rate_ratio"),
            pl.when(pl.col("_cs_r") > 0).then(ab_r).otherwise(0.0).alias("abandonment_recent"),
            pl.when((pl.col("_cs_r") > 0) & (pl.col("_cs_e") > 0))
            .then(ab_r - ab_e)
            .otherwise(0.0)
            .alias("abandonment_change"),
            _ratio_or_one(
                pl.col("_it_r") / pl.col("_bs_r"),
                pl.col("_it_e") / pl.col("_bs_e"),
                (pl.col("_bs_r") > 0) & (pl.col("_bs_e") > 0),
            ).alias("basket_items_ratio"),
            pl.col("_since_cart").fill_null(tenure).alias("days_since_last_cart"),
        )
    )


def _fill_extended() -> list[pl.Expr]:
    """A listed customer without events: zero activity, ratios 1, no gaps (zero tenure)."""
    ones = {"views_per_session_ratio", "cart_rate_ratio", "basket_items_ratio"}
    ones |= {"visit_gap_growth", "views_last3_ratio", "carts_last3_ratio"}
    return [pl.col(f).fill_null(1.0 if f in ones else 0.0) for f in EXTENDED_FEATURES]


def build_examples(
    events: pl.DataFrame | pl.LazyFrame,
    cutoffs: Sequence[datetime],
    config: ChurnConfig,
    *,
    check: bool = True,
) -> pl.DataFrame:
    """Stacked ``cutoff, user_id, <feature_names(config)>..., churned`` rows per cut-off.

    Features read events ``< T``, labels events in ``(T, T + H]``; ``check`` refuses a
    cut-off whose horizon runs past the end of the log (see ``allow_censored_labels``).
    """
    lf = as_events(events).collect().lazy()  # read / cast once, reuse for every cut-off
    names = feature_names(config)
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
                *names,
                CHURNED,
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={
                CUTOFF: schema.UTC_TIMESTAMP,
                schema.USER_ID: pl.String(),
                **dict.fromkeys(names, pl.Float64()),
                CHURNED: pl.Int8(),
            }
        )
    return pl.concat(frames, how="vertical")

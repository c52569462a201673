"""Cohort, labels and features: hand-computed values and time safety (no look-ahead)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shoprec import schema
from shoprec.churn.config import ChurnConfig, FeatureConfig
from shoprec.churn.features import FEATURES, build_examples, compute_features
from shoprec.churn.labels import CHURNED, ChurnDataError, cohort, make_labels
from shoprec.config import ConfigError, validate_config
from tests.churn.helpers import day, events, small_config

# user a: three purchases (days 0, 10, 30), the second of 2 units at 20
# user b: one purchase on day 14
# user c: a view and a cart in one session on day 19, never buys
# user d: two purchase rows on the same day (one transaction)
BASE = [
    ("a", 0, "purchase", 10.0, 1),
    ("a", 10, "purchase", 20.0, 2),
    ("a", 30, "purchase", 30.0, 1),
    ("b", 14, "purchase", 5.0, 1),
    ("c", 19, "view", None, None, "c-s1", "books"),
    ("c", 19.01, "cart", None, None, "c-s1", "toys"),
    ("d", 20, "purchase", 4.0, 1),
    ("d", 20.2, "purchase", 6.0, 1),
]
T = day(31)  # 2020-02-01


def _row(frame: pl.DataFrame, user: str) -> dict[str, float]:
    return frame.filter(pl.col(schema.USER_ID) == user).row(0, named=True)


def test_hand_built_rfm_values() -> None:
    f = compute_features(events(BASE), T, FeatureConfig(trend_days=15))
    assert f.get_column(schema.USER_ID).to_list() == ["a", "b", "c", "d"]
    a = _row(f, "a")
    assert a["recency_days"] == pytest.approx(1.0)
    assert a["frequency"] == 3
    assert a["items_bought"] == 4
    assert a["monetary_total"] == pytest.approx(10 + 40 + 30)
    assert a["monetary_mean"] == pytest.approx(80 / 3)
    assert a["ipt_mean_days"] == pytest.approx(15.0)  # gaps 10 and 20
    assert a["ipt_std_days"] == pytest.approx(math.sqrt(50.0))  # sample std of (10, 20)
    assert a["recency_ratio"] == pytest.approx(1.0 / 16.0)
    assert a["tenure_days"] == pytest.approx(31.0)
    assert a["first_purchase_age_days"] == pytest.approx(31.0)
    # trend window 15 days: recent [day 16, day 31) has day 30; earlier [day 1, day 16) day 10
    assert (a["purchases_recent"], a["purchases_earlier"], a["purchase_trend"]) == (1, 1, 0.0)
    assert a["single_purchase"] == 0.0
    assert a["n_sessions"] == 3 and a["n_views"] == 0 and a["cart_abandonment_rate"] == 0.0
    assert a["active_days"] == 3 and a["visit_gap_mean_days"] == pytest.approx(15.0)
    assert a["activity_recency_ratio"] == pytest.approx(1.0 / 16.0)


def test_single_purchase_customer_is_kept_with_defined_values() -> None:
    f = compute_features(events(BASE), T, FeatureConfig(trend_days=15))
    b = _row(f, "b")
    assert b["frequency"] == 1 and b["single_purchase"] == 1.0
    assert b["recency_days"] == pytest.approx(17.0)
    assert b["ipt_mean_days"] == pytest.approx(17.0)  # lower bound: time since first purchase
    assert b["ipt_std_days"] == 0.0
    assert b["purchase_trend"] == -1.0  # day 14 is in the earlier window only
    assert not any(v is None or (isinstance(v, float) and math.isnan(v)) for v in b.values())


def test_browser_and_same_day_purchases() -> None:
    f = compute_features(events(BASE), T, FeatureConfig(trend_days=15))
    c = _row(f, "c")
    assert c["frequency"] == 0 and c["monetary_total"] == 0.0
    assert c["recency_days"] == pytest.approx(c["tenure_days"])  # no purchase: recency = tenure
    assert c["n_views"] == 1 and c["n_carts"] == 1 and c["n_sessions"] == 1
    assert c["cart_abandonment_rate"] == 1.0
    assert c["n_categories"] == 2
    assert c["visit_gap_mean_days"] == pytest.approx(c["tenure_days"])  # one active day
    d = _row(f, "d")
    assert d["frequency"] == 1  # two order lines on one day = one transaction
    assert d["monetary_total"] == pytest.approx(10.0)
    assert d["items_bought"] == 2


def test_monetary_price_is_line_total() -> None:
    f = compute_features(events(BASE), T, FeatureConfig(monetary="price"))
    assert _row(f, "a")["monetary_total"] == pytest.approx(60.0)


def test_no_null_or_nan_features() -> None:
    f = compute_features(events(BASE), T)
    assert f.null_count().sum_horizontal().item() == 0
    assert not f.select(pl.col(list(FEATURES)).is_nan().any()).row(0).count(True)


def test_cohort_observation_window_and_active_event() -> None:
    ev = events(BASE)
    assert cohort(ev, T, small_config()).get_column(schema.USER_ID).to_list() == [
        "a",
        "b",
        "c",
        "d",
    ]
    recent = small_config(observation_days=12)  # [day 19, day 31)
    assert cohort(ev, T, recent).get_column(schema.USER_ID).to_list() == ["a", "c", "d"]
    buyers = small_config(observation_days=12, active_event="purchase")
    assert cohort(ev, T, buyers).get_column(schema.USER_ID).to_list() == ["a", "d"]


def test_labels_purchase_vs_activity_definition() -> None:
    later = [
        ("a", 35, "purchase", 1.0, 1),  # a buys inside (T, T+10]
        ("b", 36, "view"),  # b only browses inside the horizon
        ("c", 45, "purchase", 1.0, 1),  # c buys after T + H
    ]
    ev = events(BASE + later)
    by_purchase = make_labels(ev, T, small_config())
    assert dict(by_purchase.iter_rows()) == {"a": 0, "b": 1, "c": 1, "d": 1}
    by_activity = make_labels(ev, T, small_config(definition="no_activity"))
    assert dict(by_activity.iter_rows()) == {"a": 0, "b": 0, "c": 1, "d": 1}


def test_label_window_is_open_at_t_and_closed_at_t_plus_h() -> None:
    cfg = small_config()
    ev = events([*BASE, ("a", 31, "purchase", 1.0, 1), ("b", 41, "purchase", 1.0, 1)])
    labels = dict(make_labels(ev, T, cfg).iter_rows())
    assert labels["a"] == 1  # exactly at T: not in (T, T+H]
    assert labels["b"] == 0  # exactly at T + H: inside


def test_time_safety_features_and_labels_ignore_out_of_window_events() -> None:
    cfg = small_config()
    base = events([*BASE, ("a", 33, "purchase", 1.0, 1)])
    members = cohort(base, T, cfg)
    f0 = compute_features(base, T, cfg, users=members)
    l0 = make_labels(base, T, cfg, users=members)
    noise = events(
        [
            ("a", 31, "purchase", 99.0, 9),  # exactly at T
            ("b", 31, "view"),
            ("zz", 31, "purchase", 1.0, 1),  # a new customer at T is not in the cohort
            ("a", 41.5, "purchase", 5.0, 1),  # after T + H
            ("b", 60, "purchase", 5.0, 1),
            ("c", 80, "cart"),
        ]
    )
    more = pl.concat([base, noise])
    members1 = cohort(more, T, cfg)
    assert_frame_equal(members1, members)
    assert_frame_equal(compute_features(more, T, cfg, users=members1), f0)
    assert_frame_equal(make_labels(more, T, cfg, users=members1), l0)
    # horizon events change the labels but never the features
    inside = pl.concat([base, events([("b", 35, "purchase", 1.0, 1)])])
    assert_frame_equal(compute_features(inside, T, cfg, users=members), f0)
    assert dict(make_labels(inside, T, cfg, users=members).iter_rows())["b"] == 0
    # labels read nothing before T: changing history (for fixed users) keeps them
    history = pl.concat([base, events([("b", 2, "purchase", 1.0, 1), ("d", 29, "view")])])
    assert_frame_equal(make_labels(history, T, cfg, users=members), l0)


_event = st.tuples(
    st.sampled_from(["u1", "u2", "u3", "u4"]),
    st.one_of(  # whole days hit the cut-off exactly, fractions fall around it
        st.integers(min_value=0, max_value=60).map(float),
        st.floats(min_value=0, max_value=60, allow_nan=False).map(lambda d: round(d, 3)),
    ),
    st.sampled_from(["view", "cart", "purchase"]),
    st.one_of(st.none(), st.floats(min_value=0, max_value=100).map(lambda p: round(p, 2))),
    st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, min_size=1, max_size=30), st.integers(min_value=5, max_value=55))
def test_property_features_only_see_the_past(rows: list[tuple], cut: int) -> None:
    ev = events(rows)
    t = day(cut)
    past = ev.filter(pl.col(schema.TIMESTAMP) < t)
    users = ev.select(schema.USER_ID).unique()
    full = compute_features(ev, t, users=users)
    only_past = compute_features(past, t, users=users)
    assert_frame_equal(full, only_past)
    cfg = small_config(horizon_days=7)
    window = ev.filter(
        (pl.col(schema.TIMESTAMP) > t) & (pl.col(schema.TIMESTAMP) <= t + timedelta(days=7))
    )
    assert_frame_equal(make_labels(ev, t, cfg, users=users), make_labels(window, t, cfg, users))


def test_build_examples_stacks_cutoffs_and_refuses_censored_horizon() -> None:
    ev = events([*BASE, ("a", 45, "purchase", 1.0, 1), ("b", 70, "view")])
    cfg = small_config()
    ex = build_examples(ev, [day(20), T], cfg)
    assert ex.columns == ["cutoff", schema.USER_ID, *FEATURES, CHURNED]
    per = dict(ex.group_by("cutoff").len().sort("cutoff").iter_rows())
    assert list(per.values()) == [3, 4]  # at day 20: a, b, c (d buys exactly at T: not yet)
    with pytest.raises(ChurnDataError, match="censored"):
        build_examples(ev, [day(65)], cfg)


def test_config_is_strict_and_orders_cutoffs() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config(
            ChurnConfig,
            {"horizon_days": 1, "train_cutoffs": [T], "valid_cutoffs": [day(40)], "bogus": 1},
        )
    with pytest.raises(ConfigError, match="strictly later"):
        validate_config(
            ChurnConfig,
            {"horizon_days": 1, "train_cutoffs": [day(40)], "valid_cutoffs": [day(40)]},
        )
    with pytest.raises(ConfigError, match="label window"):
        validate_config(
            ChurnConfig,
            {"horizon_days": 30, "train_cutoffs": [day(20)], "valid_cutoffs": [day(40)]},
        )
    ok = validate_config(
        ChurnConfig,
        {
            "horizon_days": 30,
            "train_cutoffs": [datetime(2020, 1, 21), day(0)],
            "valid_cutoffs": [day(40)],
            "strict_label_gap": False,
        },
    )
    assert ok.train_cutoffs == [day(0), day(20)]
    assert all(c.tzinfo == UTC for c in ok.train_cutoffs)

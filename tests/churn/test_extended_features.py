"""The cadence / window features (``features.extended``): hand-computed values, fill values
and time safety (no look-ahead)."""

from __future__ import annotations

import math
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shoprec import schema
from shoprec.churn.config import FeatureConfig
from shoprec.churn.features import (
    ALL_FEATURES,
    EXTENDED_FEATURES,
    FEATURES,
    build_examples,
    compute_features,
    feature_names,
)
from shoprec.churn.labels import CHURNED, cohort
from shoprec.churn.train import net_features
from shoprec.config import ConfigError
from tests.churn.helpers import day, events, small_config
from tests.churn.test_features_labels import BASE, T

EXT = FeatureConfig(trend_days=15, extended=True)


def _session(user: str, d: float, views: int, carts: int, items: int) -> list[tuple]:
    """One session on day ``d``: ``views`` views, then ``carts`` carts, then a purchase of
    ``items`` units (none when 0), a minute apart."""
    sid = f"{user}-{d:g}"
    rows: list[tuple] = []
    step = 1.0 / 1440.0
    k = 0
    for _ in range(views):
        rows.append((user, d + k * step, "view", None, None, sid))
        k += 1
    for _ in range(carts):
        rows.append((user, d + k * step, "cart", None, None, sid))
        k += 1
    if items:
        rows.append((user, d + k * step, "purchase", 10.0, items, sid))
    return rows


# user e, cut-off day 120: five sessions (views, carts, items bought)
E_SESSIONS = [(0, 4, 1, 2), (20, 2, 1, 0), (60, 2, 0, 0), (100, 1, 1, 0), (110, 1, 0, 1)]
E_T = day(120)


def _e_row() -> dict[str, float]:
    rows = [r for d, v, c, i in E_SESSIONS for r in _session("e", d, v, c, i)]
    f = compute_features(events(rows), E_T, FeatureConfig(extended=True))
    return f.row(0, named=True)


def test_extended_columns_follow_the_base_features() -> None:
    f = compute_features(events(BASE), T, EXT)
    assert f.columns == [schema.USER_ID, *ALL_FEATURES]
    assert feature_names(EXT) == ALL_FEATURES
    assert feature_names(FeatureConfig()) == FEATURES
    assert len(set(ALL_FEATURES)) == len(FEATURES) + len(EXTENDED_FEATURES)
    assert not f.select(pl.col(list(ALL_FEATURES)).is_nan().any()).row(0).count(True)
    assert not f.select(pl.col(list(ALL_FEATURES)).is_null().any()).row(0).count(True)


def test_hand_built_windows_and_rhythm() -> None:
    e = _e_row()
    # session starts on days 0, 20, 60, 100, 110; T = day 120, tenure 120 days
    assert [e[f"sessions_{w}d"] for w in (7, 14, 28, 56, 112)] == [0, 1, 2, 2, 4]
    # rates per known day: 14 d 1/14, 56 d 2/56; 28 d 2/28, 112 d 4/112
    assert e["visit_rate_ratio_14_56"] == pytest.approx(2.0)
    assert e["visit_rate_ratio_28_112"] == pytest.approx(2.0)
    # gaps between active days 20, 40, 40, 10: median 30, last three mean 30, max 40
    assert e["visit_gap_median_days"] == pytest.approx(30.0)
    assert e["visit_gap_last_days"] == pytest.approx(30.0)
    assert e["visit_gap_max_days"] == pytest.approx(40.0)
    assert e["visit_gap_growth"] == pytest.approx(1.0)
    recency = 120 - (110 + 1 / 1440)  # the purchase a minute after the view on day 110
    assert e["activity_recency_days"] == pytest.approx(recency)
    assert e["overdue_ratio"] == pytest.approx(recency / 31.0)
    assert e["silence_vs_max_gap"] == pytest.approx(recency / 41.0)
    # the cart on day 100 came a minute after its view
    assert e["days_since_last_cart"] == pytest.approx(20 - 1 / 1440)


def test_hand_built_session_changes() -> None:
    e = _e_row()
    # recent [day 92, 120): sessions of days 100, 110 (views 1 + 1, one cart);
    # earlier [day 8, 92): days 20, 60 (views 2 + 2, one cart); day 0 is outside both
    assert e["views_per_session_recent"] == pytest.approx(1.0)
    assert e["views_per_session_ratio"] == pytest.approx((1.0 + 1) / (2.0 + 1))
    assert e["cart_rate_recent"] == pytest.approx(0.5)
    assert e["cart_rate_ratio"] == pytest.approx((0.5 + 0.05) / (0.25 + 0.05))
    # cart sessions: day 100 abandoned (recent), day 20 abandoned (earlier)
    assert e["abandonment_recent"] == pytest.approx(1.0)
    assert e["abandonment_change"] == pytest.approx(0.0)
    # buying sessions: day 110 (recent 56 days); none in [day 8, 64): ratio 1 (no evidence)
    assert e["basket_items_ratio"] == pytest.approx(1.0)
    ages = [120 - d for d, *_ in E_SESSIONS]
    ewm = {h: sum(math.exp(-a / h) for a in ages) for h in (7, 14, 28, 84)}
    for h in (7, 28, 84):
        assert e[f"visits_ewm_{h}d"] == pytest.approx(ewm[h])
    assert e["visit_intensity_ratio"] == pytest.approx((ewm[14] / 14) / (ewm[84] / 84))
    # last three sessions: views 2, 1, 1 and carts 0, 1, 0; all five: views 10, carts 3
    assert e["views_last3_ratio"] == pytest.approx((4 / 3 + 1) / (2 + 1))
    assert e["carts_last3_ratio"] == pytest.approx((1 / 3 + 0.1) / (3 / 5 + 0.1))


def test_basket_and_abandonment_change_with_both_windows() -> None:
    # buying sessions: days 10 (1 item) and 40 (2 items) in the earlier [8, 64), day 100
    # (6 items) in the recent 56 days: 6 / 1.5;
    # cart sessions: day 10 bought (earlier [8, 92)), day 100 bought, day 110 abandoned
    rows = [
        *_session("f", 10, 1, 1, 0),
        *[("f", 10.01, "purchase", 1.0, 1, "f-10")],
        *_session("f", 40, 1, 0, 2),
        *_session("f", 100, 1, 1, 6),
        *_session("f", 110, 1, 1, 0),
    ]
    f = compute_features(events(rows), E_T, FeatureConfig(extended=True)).row(0, named=True)
    assert f["basket_items_ratio"] == pytest.approx(6.0 / 1.5)
    assert f["abandonment_recent"] == pytest.approx(0.5)
    assert f["abandonment_change"] == pytest.approx(0.5 - 0.0)


def test_single_visit_and_eventless_customers_get_documented_values() -> None:
    f = compute_features(events(BASE), T, EXT)
    b = f.filter(pl.col(schema.USER_ID) == "b").row(0, named=True)  # one purchase, day 14
    assert b["visit_gap_median_days"] == pytest.approx(17.0)  # no gap: tenure
    assert b["visit_gap_growth"] == pytest.approx(1.0)
    assert b["days_since_last_cart"] == pytest.approx(17.0)  # no cart: tenure
    assert b["visit_rate_ratio_14_56"] == 0.0  # nothing in the last 14 days
    assert b["views_last3_ratio"] == pytest.approx(1.0)
    users = pl.DataFrame({schema.USER_ID: ["a", "nobody"]})
    ghost = compute_features(events(BASE), T, EXT, users=users).row(1, named=True)
    assert ghost[schema.USER_ID] == "nobody"
    assert ghost["sessions_28d"] == 0.0 and ghost["visits_ewm_7d"] == 0.0
    assert ghost["views_per_session_ratio"] == 1.0 and ghost["overdue_ratio"] == 0.0


def test_extended_features_ignore_events_at_and_after_the_cutoff() -> None:
    cfg = small_config(features={"extended": True, "trend_days": 15})
    base = events([*BASE, *_session("c", 25, 3, 1, 0)])
    members = cohort(base, T, cfg)
    f0 = compute_features(base, T, cfg, users=members)
    later = events(
        [
            *_session("a", 31, 5, 2, 1),  # exactly at T
            *_session("c", 33, 2, 2, 0),
            ("b", 35, "cart", None, None, "b-x"),
        ]
    )
    assert_frame_equal(compute_features(pl.concat([base, later]), T, cfg, users=members), f0)


def test_build_examples_and_net_features_with_the_extended_set() -> None:
    ev = events([*BASE, ("a", 45, "purchase", 1.0, 1), ("b", 70, "view")])
    cfg = small_config(features={"extended": True})
    ex = build_examples(ev, [day(20), T], cfg)
    assert ex.columns == ["cutoff", schema.USER_ID, *ALL_FEATURES, CHURNED]
    chosen = small_config(features={"extended": True}, net={"features": ["overdue_ratio"]})
    assert net_features(list(ALL_FEATURES), chosen) == ["overdue_ratio"]
    with pytest.raises(ConfigError, match=r"features\.extended"):
        net_features(list(FEATURES), small_config(net={"features": ["overdue_ratio"]}))


_event = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.one_of(
        st.integers(min_value=0, max_value=150).map(float),
        st.floats(min_value=0, max_value=150, allow_nan=False).map(lambda d: round(d, 3)),
    ),
    st.sampled_from(["view", "cart", "purchase"]),
    st.one_of(st.none(), st.floats(min_value=0, max_value=100).map(lambda p: round(p, 2))),
    st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
    st.sampled_from(["s1", "s2", "s3", "s4"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, min_size=1, max_size=40), st.integers(min_value=5, max_value=145))
def test_property_extended_features_only_see_the_past(rows: list[tuple], cut: int) -> None:
    ev = events(rows)
    t = day(cut)
    users = ev.select(schema.USER_ID).unique()
    cfg = FeatureConfig(extended=True)
    full = compute_features(ev, t, cfg, users=users)
    past = compute_features(ev.filter(pl.col(schema.TIMESTAMP) < t), t, cfg, users=users)
    assert_frame_equal(full, past)
    assert not full.select(pl.col(list(ALL_FEATURES)).is_nan().any()).row(0).count(True)
    # events after the cut-off (inside or beyond any horizon) change nothing either
    shifted = ev.with_columns(pl.col(schema.TIMESTAMP) + timedelta(days=200))
    assert_frame_equal(
        compute_features(pl.concat([ev, shifted]), t, cfg, users=users), full, check_dtypes=True
    )

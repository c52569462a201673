"""Time split invariants (no leakage, every event accounted for), item index, next-item cases."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoprec import schema
from shoprec.config import ConfigError
from shoprec.data.config import SplitConfig
from shoprec.data.split import (
    apply_item_index,
    build_cases,
    fit_item_index,
    split_cutoffs,
    time_split,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def events(sessions: list[tuple[str, list[tuple[str, float]]]]) -> pl.DataFrame:
    """Events from (session id, [(item, hours after T0)]), sorted by session start then time."""
    rows = [(sid, item, T0 + timedelta(hours=h)) for sid, evs in sessions for item, h in evs]
    df = pl.DataFrame(
        {
            schema.USER_ID: [None] * len(rows),
            schema.SESSION_ID: [r[0] for r in rows],
            schema.ITEM_ID: [r[1] for r in rows],
            schema.TIMESTAMP: [r[2] for r in rows],
            schema.EVENT_TYPE: [schema.VIEW] * len(rows),
        },
        schema=schema.EVENT_SCHEMA,
    ).with_row_index(schema.SOURCE_LINE)
    start = pl.col(schema.TIMESTAMP).min().over(schema.SESSION_ID)
    return df.sort(start, schema.SESSION_ID, schema.TIMESTAMP, schema.SOURCE_LINE)


session_lists = st.lists(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 24 * 20, allow_nan=False)),
        min_size=1,
        max_size=6,
    ),
    min_size=1,
    max_size=30,
)


def as_sessions(raw: list[list[tuple[str, float]]]) -> list[tuple[str, list[tuple[str, float]]]]:
    return [(f"s{i}", sorted(evs, key=lambda e: e[1])) for i, evs in enumerate(raw)]


def check_invariants(df: pl.DataFrame, cfg: SplitConfig) -> None:
    res = time_split(df, cfg)
    valid_cut, test_cut = split_cutoffs(df, cfg)
    first_cut = valid_cut or test_cut
    ts = schema.TIMESTAMP
    parts = [res.train, res.test] + ([res.valid] if res.valid is not None else [])
    # every event accounted for
    assert sum(p.height for p in parts) + res.report["dropped_events"] == df.height
    assert res.report["input_events"] == df.height
    # no leakage across the cut-offs
    if first_cut is not None:
        assert (res.train[ts] < first_cut).all()
    if test_cut is not None:
        assert (res.test[ts] >= test_cut).all()
    else:
        assert res.test.height == 0
    if res.valid is not None:
        assert valid_cut is not None
        assert (res.valid[ts] >= valid_cut).all()
        if test_cut is not None:
            assert (res.valid[ts] < test_cut).all()
    # a session lives in exactly one part, and keeps its first event
    seen: set[str] = set()
    for p in parts:
        sids = set(p[schema.SESSION_ID].unique().to_list())
        assert not (sids & seen)
        seen |= sids
    assert seen == set(df[schema.SESSION_ID].unique().to_list())
    # parts keep the input order and columns
    for p in parts:
        assert p.columns == df.columns
        lines = p[schema.SOURCE_LINE].to_list()
        pos = {v: i for i, v in enumerate(df[schema.SOURCE_LINE].to_list())}
        assert [pos[v] for v in lines] == sorted(pos[v] for v in lines)
    for name, p in (("train", res.train), ("test", res.test)):
        assert res.report[f"{name}_events"] == p.height
        assert res.report[f"{name}_sessions"] == p[schema.SESSION_ID].n_unique()


@SETTINGS
@given(session_lists, st.floats(0, 10), st.floats(0, 10))
def test_last_days_invariants(
    raw: list[list[tuple[str, float]]], test_days: float, valid_days: float
) -> None:
    df = events(as_sessions(raw))
    check_invariants(df, SplitConfig(kind="last_days", test_days=test_days, valid_days=valid_days))


@SETTINGS
@given(session_lists, st.floats(0, 10), st.floats(0, 10), st.randoms(use_true_random=False))
def test_split_does_not_need_sorted_input(
    raw: list[list[tuple[str, float]]], test_days: float, valid_days: float, rnd: random.Random
) -> None:
    df = events(as_sessions(raw))
    perm = list(range(df.height))
    rnd.shuffle(perm)
    cfg = SplitConfig(kind="last_days", test_days=test_days, valid_days=valid_days)
    expected, got = time_split(df, cfg), time_split(df[perm], cfg)
    assert got.report == expected.report
    for a, b in ((got.train, expected.train), (got.test, expected.test)):
        assert a.sort(schema.SOURCE_LINE).equals(b.sort(schema.SOURCE_LINE))
    check_invariants(df[perm], cfg)


@SETTINGS
@given(session_lists, st.floats(1, 24 * 20), st.one_of(st.none(), st.floats(0, 48)))
def test_cutoff_invariants(
    raw: list[list[tuple[str, float]]], test_h: float, valid_before_h: float | None
) -> None:
    df = events(as_sessions(raw))
    test_cut = (T0 + timedelta(hours=test_h)).replace(tzinfo=None)  # naive = UTC
    valid_cut = None if valid_before_h is None else test_cut - timedelta(hours=valid_before_h + 1)
    check_invariants(df, SplitConfig(kind="cutoff", test_cutoff=test_cut, valid_cutoff=valid_cut))


def test_straddling_session_truncated_and_counted() -> None:
    # last event at 240 h -> test cut-off at 240 - 24 = 216 h
    df = events(
        [
            ("early", [("a", 0.0), ("b", 1.0)]),
            ("straddle", [("a", 215.0), ("b", 215.5), ("c", 217.0), ("d", 218.0)]),
            ("late", [("c", 230.0), ("d", 240.0)]),
        ]
    )
    res = time_split(df, SplitConfig(kind="last_days", test_days=1))
    assert res.valid is None
    assert res.train[schema.ITEM_ID].to_list() == ["a", "b", "a", "b"]
    assert res.test[schema.SESSION_ID].to_list() == ["late", "late"]
    assert res.report["dropped_events"] == 2 and res.report["truncated_sessions"] == 1
    assert res.report["test_cutoff"] == (T0 + timedelta(hours=216)).isoformat()
    assert res.report["valid_cutoff"] == ""


def test_none_and_given() -> None:
    df = events([("s", [("a", 0.0), ("b", 1.0)])])
    res = time_split(df, SplitConfig(kind="none"))
    assert res.train.equals(df) and res.test.height == 0 and res.valid is None
    with pytest.raises(ConfigError, match="given"):
        time_split(df, SplitConfig(kind="given"))


# --- item index --------------------------------------------------------------------------------


def test_fit_item_index_order_counts_and_category() -> None:
    train = pl.DataFrame(
        {
            schema.ITEM_ID: ["b", "a", "b", "c", "a", "c", "d", "a"],
            schema.CATEGORY: ["x", "y", "x", "z", "y", "w", None, "v"],
        }
    )
    items = fit_item_index(train)
    assert items.columns[:3] == list(schema.ITEMS_SCHEMA)
    assert dict(items.schema) == {**schema.ITEMS_SCHEMA, schema.CATEGORY: pl.String()}
    # count desc, then item id
    assert items[schema.ITEM_ID].to_list() == ["a", "b", "c", "d"]
    assert items[schema.ITEM_IDX].to_list() == [1, 2, 3, 4]
    assert items[schema.ITEM_COUNT].to_list() == [3, 2, 2, 1]
    # most frequent category; ties -> smallest; all-null -> null
    assert items[schema.CATEGORY].to_list() == ["y", "x", "w", None]
    no_cat = fit_item_index(train.drop(schema.CATEGORY))
    assert dict(no_cat.schema) == schema.ITEMS_SCHEMA


@SETTINGS
@given(session_lists, st.floats(0.5, 10))
def test_item_index_fitted_on_train_only(raw: list[list[tuple[str, float]]], days: float) -> None:
    df = events(as_sessions(raw))
    res = time_split(df, SplitConfig(kind="last_days", test_days=days))
    items = fit_item_index(res.train)
    assert set(items[schema.ITEM_ID].to_list()) == set(res.train[schema.ITEM_ID].to_list())
    assert sorted(items[schema.ITEM_IDX].to_list()) == list(range(1, items.height + 1))
    test, dropped = apply_item_index(res.test, items)
    unseen = ~res.test[schema.ITEM_ID].is_in(items[schema.ITEM_ID].implode())
    assert dropped == int(unseen.sum())
    assert test.height == res.test.height - dropped
    assert test[schema.ITEM_IDX].dtype == pl.Int32
    assert (test[schema.ITEM_IDX] >= 1).all()
    assert test.drop(schema.ITEM_IDX).equals(res.test.filter(~unseen))
    train, none_dropped = apply_item_index(res.train, items)
    assert none_dropped == 0
    lookup = dict(zip(items[schema.ITEM_ID], items[schema.ITEM_IDX], strict=True))
    assert [lookup[i] for i in train[schema.ITEM_ID]] == train[schema.ITEM_IDX].to_list()


# --- next-item cases ---------------------------------------------------------------------------


def indexed(sessions: list[tuple[str, list[str]]]) -> pl.DataFrame:
    df = events([(sid, [(it, float(i)) for i, it in enumerate(its)]) for sid, its in sessions])
    items = fit_item_index(df)
    return apply_item_index(df, items)[0]


def test_build_cases_hand_example() -> None:
    ev = indexed([("A", ["x", "y", "z"]), ("B", ["w"]), ("C", ["y", "x"])])
    idx = dict(zip(ev[schema.ITEM_ID], ev[schema.ITEM_IDX], strict=True))
    cases = build_cases(ev)
    assert dict(cases.schema) == schema.CASES_SCHEMA
    assert cases[schema.CASE_ID].to_list() == [0, 1, 2]
    assert cases[schema.SESSION_ID].to_list() == ["A", "A", "C"]
    assert cases[schema.PREFIX_IDS].to_list() == [["x"], ["x", "y"], ["y"]]
    assert cases[schema.TARGET_ID].to_list() == ["y", "z", "x"]
    assert cases[schema.PREFIX_IDX].to_list() == [[idx["x"]], [idx["x"], idx["y"]], [idx["y"]]]
    assert cases[schema.TARGET_IDX].to_list() == [idx["y"], idx["z"], idx["x"]]
    assert build_cases(ev, min_session_length=3)[schema.SESSION_ID].to_list() == ["A", "A"]
    assert build_cases(ev.head(0)).height == 0


@SETTINGS
@given(st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=8), max_size=20))
def test_build_cases_counts_and_prefixes(raw: list[list[str]]) -> None:
    sessions = [(f"s{i:02d}", its) for i, its in enumerate(raw)]
    ev = indexed(sessions) if sessions else indexed([("s", ["a"])]).head(0)
    cases = build_cases(ev)
    assert cases.height == sum(len(its) - 1 for _, its in sessions)
    assert cases[schema.CASE_ID].to_list() == list(range(cases.height))
    expected = [(sid, its[:t], its[t]) for sid, its in sessions for t in range(1, len(its))]
    got = list(
        zip(
            cases[schema.SESSION_ID].to_list(),
            cases[schema.PREFIX_IDS].to_list(),
            cases[schema.TARGET_ID].to_list(),
            strict=True,
        )
    )
    assert got == expected

"""Sessionization (gap rule, given ids, order, idempotence) and the iterative filters."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoprec import schema
from shoprec.data.config import FilterConfig, SessionConfig
from shoprec.data.sessions import apply_filters, session_codes, sessionize

T0 = datetime(2024, 3, 1, tzinfo=UTC)
GAP = 30.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(rows: list[tuple[str | None, str | None, str, int]]) -> pl.DataFrame:
    """Events from (user, session, item, minutes after T0); source_line tracks each row."""
    return pl.DataFrame(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.SESSION_ID: [r[1] for r in rows],
            schema.ITEM_ID: [r[2] for r in rows],
            schema.TIMESTAMP: [T0 + timedelta(minutes=r[3]) for r in rows],
            schema.EVENT_TYPE: [schema.VIEW] * len(rows),
            schema.SOURCE_LINE: list(range(2, len(rows) + 2)),
        },
        schema={**schema.EVENT_SCHEMA, schema.SOURCE_LINE: pl.Int64()},
    )


def run(df: pl.DataFrame, **kw: object) -> pl.DataFrame:
    return sessionize(df.lazy(), SessionConfig(**kw)).collect()  # type: ignore[arg-type]


# users and (for the given-id cases) sessions; every row has at least one of them
user_rows = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.none(),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 400),
    ),
    min_size=1,
    max_size=40,
)
mixed_rows = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", None]),
        st.sampled_from(["s1", "s2", "s3", None]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 400),
    ).filter(lambda r: r[0] is not None or r[1] is not None),
    min_size=1,
    max_size=40,
)


def check_gap_rule(out: pl.DataFrame) -> None:
    """Inside a derived session gaps are <= GAP; between a user's sessions they are > GAP."""
    gap = timedelta(minutes=GAP)
    for (_sid,), g in out.group_by(schema.SESSION_ID):
        assert g.get_column(schema.USER_ID).n_unique() == 1
        ts = g.get_column(schema.TIMESTAMP).sort()
        assert (ts.diff().drop_nulls() <= gap).all()
    spans = out.group_by(schema.USER_ID, schema.SESSION_ID).agg(
        pl.col(schema.TIMESTAMP).min().alias("first"), pl.col(schema.TIMESTAMP).max().alias("last")
    )
    for (_uid,), g in spans.group_by(schema.USER_ID):
        g = g.sort("first")
        firsts, lasts = g.get_column("first").to_list(), g.get_column("last").to_list()
        for prev_last, nxt_first in zip(lasts[:-1], firsts[1:], strict=True):
            assert nxt_first - prev_last > gap


def check_order(out: pl.DataFrame) -> None:
    """Sorted by (session start, session id, timestamp, input order)."""
    key = out.with_columns(pl.col(schema.TIMESTAMP).min().over(schema.SESSION_ID).alias("start"))
    expected = key.sort("start", schema.SESSION_ID, schema.TIMESTAMP, schema.SOURCE_LINE)
    assert (
        key.get_column(schema.SOURCE_LINE).to_list()
        == expected.get_column(schema.SOURCE_LINE).to_list()
    )


@SETTINGS
@given(user_rows)
def test_gap_rule_every_row_and_order(rows: list[tuple[str | None, str | None, str, int]]) -> None:
    df = frame(rows)
    out = run(df, use_given=False, gap_minutes=GAP)
    assert out.columns == df.columns
    assert out.get_column(schema.SESSION_ID).null_count() == 0
    assert sorted(out.get_column(schema.SOURCE_LINE).to_list()) == sorted(
        df.get_column(schema.SOURCE_LINE).to_list()
    )
    # rows are unchanged apart from the session id
    assert (
        out.drop(schema.SESSION_ID)
        .sort(schema.SOURCE_LINE)
        .equals(df.drop(schema.SESSION_ID).sort(schema.SOURCE_LINE))
    )
    check_gap_rule(out)
    check_order(out)


@SETTINGS
@given(mixed_rows, st.booleans(), st.booleans())
def test_time_sorted_input_same_order(
    rows: list[tuple[str | None, str | None, str, int]], use_given: bool, repeats: bool
) -> None:
    """An export in time order takes the two-key sort path: same result as any other order."""
    df = frame(rows)
    by_time = df.sort(schema.TIMESTAMP, maintain_order=True)
    assert by_time[schema.TIMESTAMP].is_sorted()
    kw = {"use_given": use_given, "remove_consecutive_repeats": repeats}
    out = run(by_time, **kw)
    check_order(out)
    assert out.equals(run(df, **kw))


@SETTINGS
@given(mixed_rows, st.booleans())
def test_idempotent_and_given_ids_kept(
    rows: list[tuple[str | None, str | None, str, int]], use_given: bool
) -> None:
    df = frame(rows)
    out = run(df, use_given=use_given, gap_minutes=GAP)
    assert out.height == df.height
    assert out.get_column(schema.SESSION_ID).null_count() == 0
    check_order(out)
    again = run(out, use_given=use_given, gap_minutes=GAP)
    assert again.equals(out)
    if use_given:
        joined = df.join(out, on=schema.SOURCE_LINE, suffix="_out")
        had = joined.filter(pl.col(schema.SESSION_ID).is_not_null())
        assert (had[schema.SESSION_ID] == had[f"{schema.SESSION_ID}_out"]).all()
        # rows without a given id follow the gap rule among themselves
        derived = out.filter(
            pl.col(schema.SOURCE_LINE).is_in(
                df.filter(pl.col(schema.SESSION_ID).is_null())[schema.SOURCE_LINE].implode()
            )
        )
        check_gap_rule(derived)


@SETTINGS
@given(mixed_rows)
def test_remove_consecutive_repeats(rows: list[tuple[str | None, str | None, str, int]]) -> None:
    df = frame(rows)
    full = run(df, use_given=True)
    out = run(df, use_given=True, remove_consecutive_repeats=True)
    is_repeat = (pl.col(schema.SESSION_ID) == pl.col(schema.SESSION_ID).shift(1)) & (
        pl.col(schema.ITEM_ID) == pl.col(schema.ITEM_ID).shift(1)
    )
    n_repeats = full.select(is_repeat.fill_null(False).sum()).item()
    assert out.height == full.height - n_repeats
    assert out.select(is_repeat.fill_null(False).sum()).item() == 0
    # with given ids, removing repeats is idempotent too
    assert run(out, use_given=True, remove_consecutive_repeats=True).equals(out)


def test_hand_example_ids_and_boundary() -> None:
    df = frame(
        [
            ("u1", None, "a", 0),
            ("u1", None, "b", 30),  # exactly the gap: same session (a new one needs > gap)
            ("u1", None, "c", 61),  # 31 minutes later: new session
            ("u2", None, "a", 5),
            (None, "s9", "a", 10),  # anonymous with a given session
            (None, "s9", "b", 100),
        ]
    )
    out = run(df, use_given=False, gap_minutes=GAP)
    got = dict(
        zip(out[schema.SOURCE_LINE].to_list(), out[schema.SESSION_ID].to_list(), strict=True)
    )
    assert got == {2: "u1#1", 3: "u1#1", 4: "u1#2", 5: "u2#1", 6: "s9", 7: "s9#s2"}
    # session start order: u1#1 (0), u2#1 (5), s9 (10), u1#2 (61), s9#s2 (100)
    assert out[schema.SOURCE_LINE].to_list() == [2, 3, 5, 6, 4, 7]
    given_ids = run(df, use_given=True)
    assert (
        dict(
            zip(
                given_ids[schema.SOURCE_LINE].to_list(),
                given_ids[schema.SESSION_ID].to_list(),
                strict=True,
            )
        )[7]
        == "s9"
    )


def test_ties_broken_by_input_order() -> None:
    df = frame([("u1", "s1", "b", 0), ("u1", "s1", "a", 0), ("u2", "s0", "c", 0)])
    out = run(df, use_given=True)
    # same start: session id decides (s0 < s1); same timestamp: input order (b before a)
    assert out[schema.ITEM_ID].to_list() == ["c", "b", "a"]


# --- filters -----------------------------------------------------------------------------------


def sessions_frame(sessions: list[list[str]]) -> pl.DataFrame:
    rows = [
        (None, f"s{i}", item, i * 100 + j)
        for i, items in enumerate(sessions)
        for j, item in enumerate(items)
    ]
    return frame(rows)  # type: ignore[arg-type]


def test_filters_need_more_than_one_round() -> None:
    # 'z' has support 1 -> removed; that leaves s2 with one event -> removed; that leaves
    # 'y' with support 1 -> removed; that leaves s1 = [x] -> removed.
    df = sessions_frame([["x", "x"], ["x", "y"], ["y", "z"], ["x", "x"]])
    cfg = FilterConfig(min_item_support=2, min_session_length=2)
    out, report = apply_filters(df.lazy(), cfg)
    assert sorted(out[schema.SESSION_ID].unique().to_list()) == ["s0", "s3"]
    assert report["rounds"] == 3 and report["stable"] == 1
    assert report["removed_events"] == 4 and report["removed_sessions"] == 2
    assert report["removed_items"] == 2 and report["events"] == 4
    once, once_report = apply_filters(df.lazy(), cfg.model_copy(update={"iterative": False}))
    assert once_report["rounds"] == 1 and once_report["stable"] == 0
    assert once.height == 6  # one pass leaves the violations behind
    capped, capped_report = apply_filters(df.lazy(), cfg.model_copy(update={"max_rounds": 1}))
    assert capped.equals(once) and capped_report["stable"] == 0


def test_filters_noop_keeps_everything() -> None:
    df = sessions_frame([["x"], ["y", "z"]])
    out, report = apply_filters(df.lazy(), FilterConfig())
    assert out.equals(df) and report["removed_events"] == 0 and report["rounds"] == 0


@SETTINGS
@given(
    st.lists(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6), min_size=1, max_size=25),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_filters_reach_a_fixpoint(sessions: list[list[str]], support: int, length: int) -> None:
    df = sessions_frame(sessions)
    out, report = apply_filters(
        df.lazy(), FilterConfig(min_item_support=support, min_session_length=length)
    )
    assert report["stable"] == 1
    if out.height:
        assert out.group_by(schema.ITEM_ID).len()["len"].min() >= support  # type: ignore[operator]
        assert out.group_by(schema.SESSION_ID).len()["len"].min() >= length  # type: ignore[operator]
    assert out.height + report["removed_events"] == df.height
    # order of the surviving rows is kept
    lines = out[schema.SOURCE_LINE].to_list()
    assert lines == sorted(lines)
    # a second application removes nothing
    again, again_report = apply_filters(
        out.lazy(), FilterConfig(min_item_support=support, min_session_length=length)
    )
    assert again.equals(out) and again_report["removed_events"] == 0


@SETTINGS
@given(
    st.lists(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6), min_size=1, max_size=25),
    st.randoms(use_true_random=False),
)
def test_filters_do_not_need_contiguous_sessions(
    sessions: list[list[str]], rnd: random.Random
) -> None:
    """Shuffled rows (hash codes) and colliding hashes (string keys) give the same result."""
    df = sessions_frame(sessions)
    cfg = FilterConfig(min_item_support=2, min_session_length=2)
    expected, report = apply_filters(df.lazy(), cfg)
    perm = list(range(df.height))
    rnd.shuffle(perm)
    shuffled = df[perm]
    codes = session_codes(shuffled)
    ids = shuffled[schema.SESSION_ID]
    pairs = set(zip(codes.to_list(), ids.to_list(), strict=True))
    assert len(pairs) == ids.n_unique() == codes.n_unique()  # a bijection
    out, report2 = apply_filters(shuffled.lazy(), cfg)
    assert out.sort(schema.SOURCE_LINE).equals(expected) and report2 == report


def test_filters_survive_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    df = sessions_frame([["x", "x"], ["x", "y"], ["y", "z"], ["x", "x"]])
    cfg = FilterConfig(min_item_support=2, min_session_length=2)
    expected, report = apply_filters(df[[0, 2, 1, 3, 4, 6, 5, 7]].lazy(), cfg)

    def collide(self: pl.Series, *args: object, **kwargs: object) -> pl.Series:
        return pl.Series(self.name, [7] * self.len(), dtype=pl.UInt64)

    monkeypatch.setattr(pl.Series, "hash", collide)
    shuffled = df[[0, 2, 1, 3, 4, 6, 5, 7]]
    assert session_codes(shuffled).dtype == pl.String  # fell back to the ids themselves
    out, report2 = apply_filters(shuffled.lazy(), cfg)
    assert out.equals(expected) and report2 == report
    assert sorted(out[schema.SESSION_ID].unique().to_list()) == ["s0", "s3"]


def test_session_codes_contiguous_are_sorted_runs() -> None:
    df = sessions_frame([["x", "y"], ["z"], ["x", "x", "x"]])
    codes = session_codes(df)
    assert codes.to_list() == [1, 1, 2, 3, 3, 3] and codes.flags["SORTED_ASC"]
    assert session_codes(df.head(0)).len() == 0


@pytest.mark.parametrize("bad", [{"gap_minutes": 0}, {"unknown": 1}])
def test_session_config_is_strict(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SessionConfig(**bad)  # type: ignore[arg-type]

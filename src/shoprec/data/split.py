"""Leak-free time split, the train-fitted item index, and next-item evaluation cases.

Why time-based: a random split lets a model see the future of the very sessions it is tested
on; session-rec and GRU4Rec evaluate on the last days of the log, so do we. Sessions are
assigned to a part by their first event; a session that straddles a cut-off keeps only its
events before that cut-off (the rest is dropped and counted). Hence no test event precedes
the test cut-off and no train event is at or after the first cut-off, with no exception.

The item index is fitted on train only (test-only items are unknown to every model), and
index 0 is reserved for padding, so a real item is never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from shoprec import schema
from shoprec.config import ConfigError
from shoprec.data.config import SplitConfig
from shoprec.data.sessions import session_codes

__all__ = [
    "SplitResult",
    "apply_item_index",
    "build_cases",
    "fit_item_index",
    "split_cutoffs",
    "time_split",
]

_PART = "__shoprec_part"
_START = "__shoprec_start"
_CODE = "__shoprec_session"
_TRAIN, _VALID, _TEST, _DROPPED = 0, 1, 2, 3


@dataclass
class SplitResult:
    """The parts of a split; ``valid`` is None when no validation window is configured."""

    train: pl.DataFrame
    valid: pl.DataFrame | None
    test: pl.DataFrame
    report: dict[str, int | str] = field(default_factory=dict)


def _as_utc(value: datetime) -> datetime:
    """Config cut-offs without a zone are read as UTC (the canonical zone)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def split_cutoffs(
    events: pl.DataFrame, cfg: SplitConfig
) -> tuple[datetime | None, datetime | None]:
    """The (valid, test) cut-off timestamps the config implies for these events.

    ``last_days``: test starts ``test_days`` before the last event, valid ``valid_days``
    before that; a zero length means no such part. ``cutoff``: the configured values.
    ``none``: neither.
    """
    if cfg.kind == "none":
        return None, None
    if cfg.kind == "cutoff":
        assert cfg.test_cutoff is not None  # guaranteed by SplitConfig's validator
        valid = _as_utc(cfg.valid_cutoff) if cfg.valid_cutoff is not None else None
        return valid, _as_utc(cfg.test_cutoff)
    if cfg.kind == "last_days":
        if events.height == 0:
            return None, None
        t_max = events.get_column(schema.TIMESTAMP).max()
        assert isinstance(t_max, datetime)
        t_max = _as_utc(t_max)
        test = t_max - timedelta(days=cfg.test_days) if cfg.test_days > 0 else None
        valid = None
        if cfg.valid_days > 0:
            valid = (test or t_max) - timedelta(days=cfg.valid_days)
        return valid, test
    raise ConfigError(
        f"split.kind {cfg.kind!r} is not a time split: the caller passes train and test "
        "separately for 'given'"
    )


def time_split(events: pl.DataFrame, cfg: SplitConfig) -> SplitResult:
    """Split sessionized events into train / valid / test by time (see the module docstring).

    Each part keeps the row order of ``events``. ``report`` holds the kind, the cut-offs as
    ISO strings ("" when absent), sessions and events per part, and the events dropped
    because their session started before a cut-off that they fall after
    (``dropped_events``, in ``truncated_sessions``). ``split.min_test_session_length`` is
    not applied here: test sessions shrink again when items unknown to train are dropped,
    so the caller applies it after :func:`apply_item_index` (as ``prepare`` does).
    """
    valid_cut, test_cut = split_cutoffs(events, cfg)
    ts = pl.col(schema.TIMESTAMP)
    start = pl.col(_START)

    part: pl.Expr = pl.lit(_TRAIN, dtype=pl.Int8)
    if valid_cut is not None:
        part = pl.when(start >= valid_cut).then(pl.lit(_VALID, dtype=pl.Int8)).otherwise(part)
    if test_cut is not None:
        part = pl.when(start >= test_cut).then(pl.lit(_TEST, dtype=pl.Int8)).otherwise(part)
    # each part ends at a cut-off: train at the first one, valid at the test one; events of a
    # session that fall after its part's end are dropped (code _DROPPED)
    first_cut = valid_cut if valid_cut is not None else test_cut
    label = pl.col(_PART)
    if first_cut is not None:
        label = pl.when((label == _TRAIN) & (ts >= first_cut)).then(_DROPPED).otherwise(label)
    if valid_cut is not None and test_cut is not None:
        label = pl.when((label == _VALID) & (ts >= test_cut)).then(_DROPPED).otherwise(label)

    codes = session_codes(events).alias(_CODE)
    labelled = (  # eager: cheaper than the same steps as one lazy query on 10M rows
        events.with_columns(codes)
        .with_columns(ts.min().over(_CODE).alias(_START))
        .with_columns(part.alias(_PART))
        .with_columns(label.cast(pl.Int8).alias(_PART))
    )
    groups = labelled.partition_by(_PART, as_dict=True, maintain_order=True, include_key=False)
    columns = events.columns
    empty = labelled.clear()

    def part_frame(code: int) -> pl.DataFrame:
        return groups.get((code,), empty)

    report: dict[str, int | str] = {
        "kind": cfg.kind,
        "valid_cutoff": valid_cut.isoformat() if valid_cut is not None else "",
        "test_cutoff": test_cut.isoformat() if test_cut is not None else "",
        "input_events": events.height,
    }
    for name, code in (("train", _TRAIN), ("valid", _VALID), ("test", _TEST)):
        df = part_frame(code)
        report[f"{name}_events"] = df.height
        report[f"{name}_sessions"] = df.get_column(_CODE).n_unique()
    dropped = part_frame(_DROPPED)
    report["dropped_events"] = dropped.height
    report["truncated_sessions"] = dropped.get_column(_CODE).n_unique()
    return SplitResult(
        train=part_frame(_TRAIN).select(columns),
        valid=part_frame(_VALID).select(columns) if valid_cut is not None else None,
        test=part_frame(_TEST).select(columns),
        report=report,
    )


def fit_item_index(train: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The items table: ``item_idx`` 1..N (0 = padding), ``item_id``, ``count`` (train support).

    Ordered by support (descending), then item id, so the index is deterministic and
    popular items get small indices. When train has a ``category`` column, each item gets
    its most frequent non-null category (ties: the smallest name). One group-by over
    (item, category) serves both: an item's count is the sum over its categories.
    """
    has_category = schema.CATEGORY in train.lazy().collect_schema().names()
    keys = [schema.ITEM_ID, schema.CATEGORY] if has_category else [schema.ITEM_ID]
    pairs = (  # one row per (item, category): small, whatever the size of train
        train.lazy().group_by(keys).agg(pl.len().cast(pl.Int64).alias("__n")).collect()
    )
    counts = pairs.group_by(schema.ITEM_ID).agg(pl.col("__n").sum().alias(schema.ITEM_COUNT))
    items = counts.sort(
        [schema.ITEM_COUNT, schema.ITEM_ID], descending=[True, False], maintain_order=True
    ).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias(schema.ITEM_IDX),
    )
    items = items.select(list(schema.ITEMS_SCHEMA))
    if has_category:
        cats = (
            pairs.filter(pl.col(schema.CATEGORY).is_not_null())
            .sort([schema.ITEM_ID, "__n", schema.CATEGORY], descending=[False, True, False])
            .unique(schema.ITEM_ID, keep="first", maintain_order=True)
            .select(schema.ITEM_ID, schema.CATEGORY)
        )
        items = items.join(cats, on=schema.ITEM_ID, how="left", maintain_order="left")
    return items


def apply_item_index(events: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Add ``item_idx`` from a fitted items table; drop events on items unknown to it.

    Returns the indexed events (row order kept) and the number of events dropped.
    """
    lookup = items.select(schema.ITEM_ID, pl.col(schema.ITEM_IDX).cast(pl.Int32))
    if schema.ITEM_IDX in events.columns:
        events = events.drop(schema.ITEM_IDX)
    out = events.join(lookup, on=schema.ITEM_ID, how="inner", maintain_order="left")
    return out, events.height - out.height


def build_cases(events: pl.DataFrame, min_session_length: int = 2) -> pl.DataFrame:
    """Next-item cases: for each session with >= ``min_session_length`` events and each
    position t >= 1, the prefix (items before t) and the target (item at t).

    ``events`` must be item-indexed and sorted by session, then time (the order of the
    prepared parquet files). Sessions keep their first-appearance order; ``case_id`` counts
    0..n-1 in (session order, position) order. A session of length L yields L - 1 cases.
    """
    min_len = max(2, min_session_length)
    sessions = (
        events.lazy()
        .group_by(schema.SESSION_ID, maintain_order=True)
        .agg(
            pl.col(schema.ITEM_IDX).cast(pl.Int32).alias(schema.PREFIX_IDX),
            pl.col(schema.ITEM_ID).alias(schema.PREFIX_IDS),
        )
        .filter(pl.col(schema.PREFIX_IDX).list.len() >= min_len)
    )
    pos = pl.col("__shoprec_pos")
    cases = (
        sessions.with_columns(
            pl.int_ranges(1, pl.col(schema.PREFIX_IDX).list.len()).alias("__shoprec_pos")
        )
        .explode("__shoprec_pos")
        .select(
            pl.col(schema.SESSION_ID),
            pl.col(schema.PREFIX_IDX).list.slice(0, pos),
            pl.col(schema.PREFIX_IDS).list.slice(0, pos),
            pl.col(schema.PREFIX_IDX).list.get(pos).alias(schema.TARGET_IDX),
            pl.col(schema.PREFIX_IDS).list.get(pos).alias(schema.TARGET_ID),
        )
        .with_row_index(schema.CASE_ID)
        .with_columns(pl.col(schema.CASE_ID).cast(pl.Int64))
        .collect()
    )
    return cases.select([pl.col(name).cast(dtype) for name, dtype in schema.CASES_SCHEMA.items()])

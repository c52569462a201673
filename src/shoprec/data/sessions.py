"""Sessionization and support/length filters: canonical events -> clean sessions.

Both steps are whole-column Polars expressions (sorts, shifts, cumulative sums, window counts):
there is no Python loop over rows, so they scale to tens of millions of events (the target is
10M events prepared end to end in <= 20 s on 2 cores).

Session ids
    A source's own session ids are kept when ``SessionConfig.use_given`` is set, because the
    store knows its sessions better than a gap rule does. Events without one (and all events
    when ``use_given`` is off) are cut by an inactivity gap per user, the rule of session-rec
    and GRU4Rec preprocessing: a new session starts when more than ``gap_minutes`` pass
    between two consecutive events of the same user. Derived ids are ``"<user_id>#<n>"``
    (``n`` = 1, 2, ... in time order per user). Anonymous events (no user) with a given
    session id, when ``use_given`` is off, are gap-split inside that session (OTTO's
    "sessions" are month-long streams): the first piece keeps the given id, later pieces
    are ``"<session_id>#s<n>"`` (n >= 2; the ``s`` keeps them apart from user-derived ids).
    Both namings make sessionization idempotent: re-running it on its output changes
    nothing (except that removing consecutive repeats can widen a gap, so with
    ``use_given`` off and repeat removal on a second pass may split further).
    Precondition: every row has a user id or a session id (the readers quarantine rows with
    neither); a row violating it would keep a null session id.

Order
    The output is sorted by (session start, session_id, timestamp, input order): sessions in
    the order they began, events in time order, ties broken by the input row order, so the
    result is deterministic whatever order Polars used internally.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.data.config import FilterConfig, SessionConfig

__all__ = [
    "RANK",
    "apply_filters",
    "filter_sessions_and_items",
    "remove_consecutive_repeats",
    "session_codes",
    "sessionize",
    "sessionize_partitioned",
]

# Helper column names: prefixed so that they never clash with a source column.
_ROW: Final = "__shoprec_row"
_KEY: Final = "__shoprec_key"
_TAG: Final = "__shoprec_tag"
_START: Final = "__shoprec_start"
RANK: Final = "__shoprec_session_rank"  # a session's position in sessionize's order (0, 1, ...)
_BUCKET: Final = "__shoprec_bucket"


def sessionize(events: pl.LazyFrame, cfg: SessionConfig) -> pl.LazyFrame:
    """Give every event a session id and sort events by (session start, session, time).

    ``events`` holds the canonical columns (:data:`shoprec.schema.EVENT_SCHEMA`, optional
    ones and bookkeeping columns may be present). The output has the same columns, in the
    same order, with ``session_id`` filled. See the module docstring for the rules.

    The sort is a materialization point anyway, so the work is done here and the result is
    returned as a LazyFrame over an in-memory frame: the order is computed on a slim frame of
    keys (row, session, time), then every column is gathered once. That is cheaper than
    sorting the full frame, and once this returns the input plan (and its frame) can be freed
    (callers should not keep the input alive).
    """
    df = events.collect()
    sid = _filled_session_ids(df, cfg)
    ts = pl.col(schema.TIMESTAMP)
    keys = pl.DataFrame(
        {
            _ROW: pl.int_range(0, df.height, dtype=pl.UInt32, eager=True),
            schema.SESSION_ID: sid.rechunk(),
            schema.TIMESTAMP: df.get_column(schema.TIMESTAMP).rechunk(),
        }
    )
    if keys.get_column(schema.TIMESTAMP).is_sorted():
        # An export in time order (the usual case): a session's first row is its start and
        # its rows are in (time, row) order already, so grouping the row numbers by session
        # in order of first appearance lists the sessions by start; only sessions starting
        # at the same instant still need ordering by id, done on one row per session. One
        # grouping pass instead of a per-event window and a sort of all events (10M events:
        # about half the CPU).
        groups = (
            keys.group_by(schema.SESSION_ID, maintain_order=True)
            .agg(ts.first().alias(_START), pl.col(_ROW))
            .sort(_START, schema.SESSION_ID, maintain_order=True)
        )
        perm = groups.get_column(_ROW).explode()
        del groups
        if cfg.remove_consecutive_repeats:
            keys = pl.DataFrame(
                [
                    perm,
                    keys.get_column(schema.SESSION_ID).gather(perm),
                    df.get_column(schema.ITEM_ID).rechunk().gather(perm),
                ]
            )
            perm = remove_consecutive_repeats(keys.lazy()).collect().get_column(_ROW)
    else:
        if cfg.remove_consecutive_repeats:
            keys = keys.with_columns(df.get_column(schema.ITEM_ID).rechunk())
        # eager on purpose: on 10M rows the same steps as one lazy query cost ~60 % more CPU
        keys = keys.with_columns(ts.min().over(schema.SESSION_ID).alias(_START))
        keys = keys.sort(_START, schema.SESSION_ID, schema.TIMESTAMP, _ROW)
        if cfg.remove_consecutive_repeats:
            keys = remove_consecutive_repeats(keys.lazy()).collect()
        perm = keys.get_column(_ROW)
    del keys
    df = df.with_columns(sid)  # the filled ids (the same column when all were given)
    # Column by column, each made contiguous first: a reader's frame often comes in
    # thousands of chunks, and gathering across chunks costs about three times as much
    # (10M rows: ~3.2 vs ~0.9 CPU s), while rechunking one column at a time keeps the
    # extra memory to a single column.
    return pl.DataFrame([df.get_column(c).rechunk().gather(perm) for c in df.columns]).lazy()


def _filled_session_ids(df: pl.DataFrame, cfg: SessionConfig) -> pl.Series:
    """The session id column with derived ids where the rules ask for them."""
    given = df.get_column(schema.SESSION_ID)
    uid, sid = pl.col(schema.USER_ID), pl.col(schema.SESSION_ID)
    rows = pl.int_range(0, pl.len(), dtype=pl.UInt32).alias(_ROW)
    if cfg.use_given:
        if given.null_count() == 0:
            return given
        todo = (
            df.lazy()
            .with_columns(rows)
            .filter(sid.is_null())
            .select(
                _ROW, uid.alias(_KEY), pl.lit("", dtype=pl.String).alias(_TAG), schema.TIMESTAMP
            )
        )
    else:
        todo = df.lazy().select(
            rows,
            pl.coalesce(uid, sid).alias(_KEY),
            pl.when(uid.is_null()).then(pl.lit("s")).otherwise(pl.lit("")).alias(_TAG),
            schema.TIMESTAMP,
        )
    derived = _derive_ids(todo, cfg.gap_minutes).select(_ROW, schema.SESSION_ID).collect()
    return given.clone().scatter(derived.get_column(_ROW), derived.get_column(schema.SESSION_ID))


def _derive_ids(todo: pl.LazyFrame, gap_minutes: float) -> pl.LazyFrame:
    """Cut each (_TAG, _KEY) stream where the gap to the previous event exceeds the limit.

    One sort by stream and time, then a boundary flag and a running count: the n-th session
    of a stream is the running count minus the count at the stream's first row (found with a
    forward fill, not a per-group window, to stay a single linear pass).
    """
    gap = pl.duration(microseconds=round(gap_minutes * 60_000_000))
    key, tag, ts = pl.col(_KEY), pl.col(_TAG), pl.col(schema.TIMESTAMP)
    stream_start = (key != key.shift(1)) | (tag != tag.shift(1))
    stream_start = stream_start.fill_null(True)
    new_session = (stream_start | ((ts - ts.shift(1)) > gap)).fill_null(True)
    counter = new_session.cast(pl.Int64).cum_sum()
    first = pl.when(stream_start).then(counter).otherwise(None).forward_fill()
    n = counter - first + 1
    return (
        todo.sort(_TAG, _KEY, schema.TIMESTAMP, _ROW)
        .with_columns(n.alias("__shoprec_n"))
        .with_columns(
            pl.when((tag == "s") & (pl.col("__shoprec_n") == 1))
            .then(key)
            .otherwise(pl.concat_str(key, pl.lit("#"), tag, pl.col("__shoprec_n").cast(pl.String)))
            .alias(schema.SESSION_ID)
        )
    )


def remove_consecutive_repeats(events: pl.LazyFrame) -> pl.LazyFrame:
    """Drop an event whose item repeats the previous event's item in the same session.

    ``a, a, b, a`` -> ``a, b, a``. Expects events sorted by session, then time (the order
    :func:`sessionize` produces). The first event of a run is kept, so a view followed by an
    add-to-cart of the same item keeps the view.
    """
    sid, item = pl.col(schema.SESSION_ID), pl.col(schema.ITEM_ID)
    repeat = (sid == sid.shift(1)) & (item == item.shift(1))
    return events.filter(~repeat.fill_null(False))


def session_codes(events: pl.DataFrame) -> pl.Series:
    """Exact integer codes of ``session_id`` (equal ids <=> equal codes), cheap when possible.

    Grouping 10M string ids by hash costs seconds; when each session's rows are contiguous
    (the order :func:`sessionize` produces) a running count of id changes is an exact code,
    flagged sorted so that Polars groups it with a linear scan. Contiguity is checked, not
    assumed, on the first row of each run only: the ids there are all distinct exactly when
    no session is split into two runs. Otherwise the codes are 64-bit hashes, used only when
    they do not collide on these ids (checked), else the ids themselves are returned.
    """
    sid = events.get_column(schema.SESSION_ID)
    if sid.len() == 0:
        return pl.Series(schema.SESSION_ID, [], dtype=pl.UInt32)
    run_start = (sid != sid.shift(1)).fill_null(True)
    heads = sid.filter(run_start)
    if heads.n_unique() == heads.len():
        return run_start.cast(pl.UInt32).cum_sum().set_sorted().alias(schema.SESSION_ID)
    hashed = sid.hash()
    if hashed.n_unique() == sid.n_unique():
        return hashed
    return sid


def _item_codes(events: pl.DataFrame, n_items: int) -> pl.Series:
    """64-bit hashes of ``item_id`` when they do not collide (checked), else the ids."""
    item = events.get_column(schema.ITEM_ID)
    hashed = item.hash()
    return hashed if hashed.n_unique() == n_items else item


def apply_filters(events: pl.LazyFrame, cfg: FilterConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Keep items with support >= ``min_item_support`` and sessions with >= ``min_session_length``
    events, repeating both filters until nothing changes (session-rec / GRU4Rec preprocessing).

    Removing rare items shortens sessions, and dropping short sessions lowers item support,
    so one pass can leave violations behind; the iterative mode runs rounds until a round
    removes nothing (or ``max_rounds``). Support is the number of events on the item.
    The row order of ``events`` is kept. The rounds run on a slim frame of integer codes
    (:func:`session_codes`) and the full frame is filtered once at the end.

    Returns the filtered events and counts: ``rounds`` (passes run, including the final one
    that confirmed stability), ``stable`` (1 when the last pass removed nothing), and the
    removed and remaining ``events``, ``sessions`` and ``items``.
    """
    df = events.collect()
    n_events0 = df.height
    n_items0 = df.get_column(schema.ITEM_ID).n_unique()
    keys = pl.DataFrame(
        {
            "r": pl.int_range(0, df.height, dtype=pl.UInt32, eager=True),
            "s": session_codes(df),
            "i": _item_codes(df, n_items0),
        }
    )
    n_sessions0 = keys.get_column("s").n_unique()

    max_rounds = cfg.max_rounds if cfg.iterative else 1
    need_items = cfg.min_item_support > 1
    need_sessions = cfg.min_session_length > 1
    rounds = 0
    stable = not (need_items or need_sessions)
    while not stable and rounds < max_rounds:
        rounds += 1
        before = keys.height
        if need_items:
            keys = keys.filter(pl.len().over("i") >= cfg.min_item_support)
        if need_sessions:
            keys = keys.filter(pl.len().over("s") >= cfg.min_session_length)
        stable = keys.height == before

    if keys.height < df.height:
        mask = np.zeros(df.height, dtype=bool)
        mask[keys.get_column("r").to_numpy()] = True
        df = df.filter(pl.Series(mask))
    n_sessions = keys.get_column("s").n_unique()
    n_items = keys.get_column("i").n_unique()
    report = {
        "rounds": rounds,
        "stable": int(stable),
        "events": df.height,
        "sessions": n_sessions,
        "items": n_items,
        "removed_events": n_events0 - df.height,
        "removed_sessions": n_sessions0 - n_sessions,
        "removed_items": n_items0 - n_items,
    }
    return df, report


# --- larger than memory ------------------------------------------------------------------------


def sessionize_partitioned(
    events: pl.LazyFrame, cfg: SessionConfig, folder: Path, bucket_rows: int = 1_000_000
) -> list[Path]:
    """:func:`sessionize` for event logs larger than memory: parquet files in ``folder``
    whose concatenation, in order, is ``sessionize``'s output, plus a :data:`RANK` column.

    An external sort in two passes: the sessions (id -> start; one row per session, not per
    event) are sorted in memory and numbered; the events are read in slices of
    ``bucket_rows``, each slice joined to the session numbers in memory and spread into
    buckets of whole sessions (about ``bucket_rows`` events each), and each bucket is sorted
    in memory by (session number, time, input order), as ``sessionize`` sorts the whole log.
    (A streaming join of the events with the sessions would hold far more: Polars' streaming
    join buffers the event side.) Deriving session ids, for events without one, holds one
    slim row per such event in memory.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lf = events.with_row_index(_ROW)
    columns = events.collect_schema().names()
    needs = pl.col(schema.SESSION_ID).is_null() if cfg.use_given else pl.lit(True)
    derived: pl.DataFrame | None = None
    if lf.select(needs.any()).collect(engine="streaming").item():
        uid, sid = pl.col(schema.USER_ID), pl.col(schema.SESSION_ID)
        todo = lf.filter(needs).select(
            _ROW,
            (uid if cfg.use_given else pl.coalesce(uid, sid)).alias(_KEY),
            (
                pl.lit("")
                if cfg.use_given
                else pl.when(uid.is_null()).then(pl.lit("s")).otherwise(pl.lit(""))
            ).alias(_TAG),
            schema.TIMESTAMP,
        )
        derived = (
            _derive_ids(todo, cfg.gap_minutes)
            .select(_ROW, pl.col(schema.SESSION_ID).alias("__shoprec_derived"))
            .collect()
            .sort(_ROW)
        )

    def with_ids(frame: pl.DataFrame) -> pl.DataFrame:
        if derived is None:
            return frame
        lo, hi = frame.get_column(_ROW).min(), frame.get_column(_ROW).max()
        mine = derived.filter(pl.col(_ROW).is_between(lo, hi))
        return frame.join(mine, on=_ROW, how="left", maintain_order="left").select(
            pl.exclude("__shoprec_derived", schema.SESSION_ID),
            pl.coalesce("__shoprec_derived", schema.SESSION_ID).alias(schema.SESSION_ID),
        )

    n_rows = lf.select(pl.len()).collect(engine="streaming").item()
    starts: list[pl.DataFrame] = []
    for offset in range(0, n_rows, bucket_rows):
        piece = with_ids(lf.slice(offset, bucket_rows).collect())
        starts.append(
            piece.group_by(schema.SESSION_ID).agg(pl.col(schema.TIMESTAMP).min().alias(_START))
        )
    n_buckets = max(1, math.ceil(n_rows / bucket_rows))
    # a session seen in several slices: its earliest start. Grouped in hash parts, because
    # one group-by over millions of string keys takes several times their size in memory
    pieces = pl.concat(starts)
    del starts
    part = pl.col(schema.SESSION_ID).hash(seed=0) % n_buckets
    sessions = pl.concat(
        [
            pieces.filter(part == p).group_by(schema.SESSION_ID).agg(pl.col(_START).min())
            for p in range(n_buckets)
        ]
    ).sort(_START, schema.SESSION_ID)
    del pieces
    per_bucket = max(1, math.ceil(sessions.height / n_buckets))
    rank = pl.int_range(0, pl.len(), dtype=pl.UInt32)
    sessions = sessions.select(
        schema.SESSION_ID, rank.alias(RANK), (rank // per_bucket).cast(pl.UInt32).alias(_BUCKET)
    )
    for k, offset in enumerate(range(0, n_rows, bucket_rows)):
        piece = with_ids(lf.slice(offset, bucket_rows).collect())
        piece = piece.join(sessions, on=schema.SESSION_ID, how="inner")
        for (b,), part in piece.partition_by(_BUCKET, as_dict=True, include_key=False).items():
            target = folder / f"bucket-{b:05d}"
            target.mkdir(exist_ok=True)
            part.select(*columns, RANK, _ROW).write_parquet(
                target / f"{k:05d}.parquet", compression="lz4"
            )
    del sessions
    out: list[Path] = []
    for b in range(n_buckets):
        files = sorted((folder / f"bucket-{b:05d}").glob("*.parquet"))
        if not files:
            continue
        df = pl.read_parquet(files).sort(RANK, schema.TIMESTAMP, _ROW)
        if cfg.remove_consecutive_repeats:
            df = remove_consecutive_repeats(df.lazy()).collect()
        path = folder / f"sessionized-{b:05d}.parquet"
        df.drop(_ROW).write_parquet(path, compression="lz4")
        out.append(path)
        for f in files:
            f.unlink()
    return out


def filter_sessions_and_items(
    files: list[Path], cfg: FilterConfig
) -> tuple[np.ndarray, pl.Series, dict[str, int]]:
    """:func:`apply_filters` for events larger than memory: the parquet ``files`` of
    :func:`sessionize_partitioned` (with their :data:`RANK` column).

    The rounds run on two 4-byte codes per event (session number, item number) in numpy;
    returns which sessions survive (a boolean per session number), the surviving item ids,
    and the same report as ``apply_filters``. An event survives exactly when its session
    and its item do: both filters remove whole items or whole sessions.
    """
    items = (
        pl.scan_parquet(files)
        .select(schema.ITEM_ID)
        .unique()
        .collect(engine="streaming")
        .with_row_index("__i")
    )
    n_rows = pl.scan_parquet(files).select(pl.len()).collect().item()
    s = np.empty(n_rows, dtype=np.uint32)  # session number of each event
    i = np.empty(n_rows, dtype=np.uint32)  # item number of each event
    at = 0
    for path in files:  # one bucket at a time; a streaming join would buffer all events
        keys = pl.read_parquet(path, columns=[RANK, schema.ITEM_ID]).join(
            items, on=schema.ITEM_ID, how="left", maintain_order="left"
        )
        s[at : at + keys.height] = keys.get_column(RANK).to_numpy()
        i[at : at + keys.height] = keys.get_column("__i").to_numpy()
        at += keys.height
    n_sessions0 = int(s.max()) + 1 if len(s) else 0
    alive = np.ones(len(s), dtype=bool)
    max_rounds = cfg.max_rounds if cfg.iterative else 1
    need_items = cfg.min_item_support > 1
    need_sessions = cfg.min_session_length > 1
    rounds = 0
    stable = not (need_items or need_sessions)
    while not stable and rounds < max_rounds:
        rounds += 1
        before = int(alive.sum())
        if need_items:
            support = np.bincount(i[alive], minlength=items.height)
            alive &= (support >= cfg.min_item_support)[i]
        if need_sessions:
            length = np.bincount(s[alive], minlength=n_sessions0)
            alive &= (length >= cfg.min_session_length)[s]
        stable = int(alive.sum()) == before
    keep_sessions = np.zeros(n_sessions0, dtype=bool)
    keep_sessions[s[alive]] = True
    keep_items = np.zeros(items.height, dtype=bool)
    keep_items[i[alive]] = True
    n_events = int(alive.sum())
    report = {
        "rounds": rounds,
        "stable": int(stable),
        "events": n_events,
        "sessions": int(keep_sessions.sum()),
        "items": int(keep_items.sum()),
        "removed_events": len(s) - n_events,
        "removed_sessions": n_sessions0 - int(keep_sessions.sum()),
        "removed_items": items.height - int(keep_items.sum()),
    }
    kept_ids = items.filter(pl.Series(keep_items)).get_column(schema.ITEM_ID)
    return keep_sessions, kept_ids, report

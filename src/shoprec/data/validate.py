"""Map read rows onto the canonical schema, and split them into accepted and quarantined.

A row that cannot become a canonical event is never dropped silently: it goes to the
quarantine with a ``reason`` (the *first* failing check, in the order below), the source
``column`` and offending ``value``, and the raw line text. Exact duplicates among the accepted
rows are removed and counted. Hence, always::

    rows_read == rows_accepted + rows_quarantined + rows_duplicate

Checks, in order (the reason strings are part of the contract; tests assert them):

* the reader's own verdict: ``empty row``, ``wrong number of fields (expected n)``,
  ``malformed JSON``, ``missing '<explode>' list``
* ``empty row``: every configured source column is empty
* ``missing item_id``
* ``missing user_id and session_id``: the row cannot join a session
* ``missing timestamp``: the timestamp (or offset) column is empty
* ``unparseable timestamp``: it does not parse in the configured unit/format
* ``timestamp out of range``: outside ``quality.min_timestamp`` .. ``max_timestamp``
* ``missing event type``, ``unknown event type`` (outside a strict ``event_type.mapping``)
* ``bad price`` (not a finite number), ``negative price`` (unless allowed)
* ``bad quantity``: not a whole number >= 1

Empty strings and ``read.null_values`` are missing values; text is stripped of blanks.
Benchmark test cases (:func:`validate_cases`) have their own checks: ``missing target``,
``empty prefix``.

With ``strict=True`` the first bad row (in file and line order) raises a
:class:`~shoprec.errors.DataError` naming file, line, column and value instead.

Why this shape: the casts and checks are column expressions in one lazy plan, collected once
with the streaming engine (no Python loop over rows); each parse is materialized once and
the checks only compare its result. Reason, column and value are computed in a second,
filtered pass only for the rows that failed, so a clean 10M-row file never pays for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.data.config import DataConfig, EventTypeConfig, TimestampConfig
from shoprec.data.readers import READ_ERROR, RawSource, raw_lines
from shoprec.errors import DataError

__all__ = [
    "QUARANTINE_COLUMN",
    "QUARANTINE_RAW",
    "QUARANTINE_VALUE",
    "ValidationResult",
    "canonical_columns",
    "effective_config",
    "validate",
    "validate_cases",
    "validate_streaming",
]

# The quarantine's "column", "value" and "raw" names, taken from the schema (not re-typed).
QUARANTINE_COLUMN, QUARANTINE_VALUE, QUARANTINE_RAW = list(schema.QUARANTINE_SCHEMA)[3:]

_US: Final = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH_LIMIT_US: Final = 10**17  # ~year 5100: keeps the integer multiply far from overflow
_ISO_AWARE: Final = "%Y-%m-%dT%H:%M:%S%.f%#z"  # "Z", "+0200", "+02:00"
_ISO_NAIVE: Final = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
_RAW_LOOKUP_MAX: Final = 100_000  # raw line text is looked up for at most this many rows


@dataclass
class ValidationResult:
    """Accepted canonical rows (source order, duplicates removed) and the quarantine."""

    accepted: pl.DataFrame
    quarantine: pl.DataFrame  # schema.QUARANTINE_SCHEMA
    rows_read: int
    rows_accepted: int  # kept apart from ``accepted`` so the caller may free that frame
    rows_quarantined: int
    rows_duplicate: int
    reasons: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """The manifest's row accounting."""
        return {
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_quarantined": self.rows_quarantined,
            "rows_duplicate": self.rows_duplicate,
            "quarantine_reasons": dict(self.reasons),
        }


@dataclass(frozen=True)
class _Check:
    """One rule: rows where ``bad`` holds get ``reason`` and show ``column``'s ``value``.

    ``bad`` and ``value`` only reference columns an earlier stage materialized, so checking
    is cheap: every parse runs once, however many checks read its result.
    """

    bad: pl.Expr
    reason: str | None  # None: the reason is the row's READ_ERROR text
    column: str | None = None
    value: pl.Expr | None = None


@dataclass
class _Plan:
    """Sequential ``with_columns`` stages, the ordered checks and the output expressions."""

    stages: list[dict[str, pl.Expr]] = field(default_factory=list)
    checks: list[_Check] = field(default_factory=list)
    outputs: dict[str, pl.Expr] = field(default_factory=dict)

    def stage(self, **exprs: pl.Expr) -> None:
        self.stages.append(exprs)


def canonical_columns(cfg: DataConfig) -> list[str]:
    """Output columns for a preset: the required canonical ones, then mapped optional ones,
    then ``extra_columns``."""
    optional = [c for c in schema.OPTIONAL_SCHEMA if c in cfg.columns or c in cfg.constants]
    return [*schema.EVENT_SCHEMA, *optional, *cfg.extra_columns]


def _t(source: str) -> str:
    """Name of the temporary stripped-text copy of a source column."""
    return f"__shoprec_text_{source}"


def _v(name: str) -> str:
    """Name of a temporary parsed value."""
    return f"__shoprec_value_{name}"


def _text(
    expr: pl.Expr, dtype: pl.DataType, strip: bool = True, null_values: Sequence[str] = ()
) -> pl.Expr:
    """A source value as stripped text; empty or a configured null spelling -> null.

    ``strip=False`` when the reader proved no field can carry blanks (most exports):
    stripping is the costliest string step on a large file.
    """
    if dtype != pl.String:
        expr = expr.cast(pl.String)
    if strip:
        expr = expr.str.strip_chars()
    missing = expr == ""
    if null_values:
        missing = missing | expr.is_in(list(null_values))
    return pl.when(missing).then(pl.lit(None, pl.String)).otherwise(expr)


def _number_us(expr: pl.Expr, dtype: pl.DataType, mult: int) -> pl.Expr:
    """Numbers (integer or fractional text, or a numeric column) times ``mult`` as Int64.

    Integers are multiplied exactly; fractions go through Float64 and are rounded to the
    microsecond (``1396860669.277`` s stays exact). Out of +-1e17 us: null.
    """
    if dtype.is_integer():
        as_int = expr.cast(pl.Int64)
        return pl.when(as_int.abs() <= _EPOCH_LIMIT_US // mult).then(as_int * mult)
    as_float = expr.cast(pl.Float64, strict=False)
    from_float = pl.when(as_float.is_finite() & (as_float.abs() <= _EPOCH_LIMIT_US / mult)).then(
        (as_float * mult).round(0).cast(pl.Int64)
    )
    if dtype.is_float():
        return from_float
    as_int = expr.cast(pl.Int64, strict=False)
    return pl.coalesce(
        pl.when(as_int.abs() <= _EPOCH_LIMIT_US // mult).then(as_int * mult), from_float
    )


def _localize(expr: pl.Expr, aware: bool, tz: str) -> pl.Expr:
    if not aware:
        expr = expr.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return expr.dt.convert_time_zone("UTC").cast(schema.UTC_TIMESTAMP)


def _time_stages(plan: _Plan, tc: TimestampConfig, dtype: pl.DataType) -> str:
    """Add the stages that parse the timestamp; return the column holding the result.

    ISO strings try one format after another, each only on the rows still unparsed (a
    ``strptime`` over nulls costs nothing), so the common case pays for one parse.
    """
    out = _v("ts")
    col = pl.col(tc.column)
    text = pl.col(_t(tc.column))
    if isinstance(dtype, pl.Datetime):
        plan.stage(**{out: _localize(col, dtype.time_zone is not None, tc.timezone)})
    elif dtype == pl.Date:
        plan.stage(**{out: _localize(col.cast(pl.Datetime("us")), False, tc.timezone)})
    elif tc.unit in _US:
        source = col if dtype.is_numeric() else text
        us = _number_us(source, dtype if dtype.is_numeric() else pl.String(), _US[tc.unit])
        plan.stage(**{out: us.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")})
    elif tc.unit == "iso":
        iso = _v("iso")
        plan.stage(**{iso: text.str.replace(" ", "T", literal=True, n=1)})
        plan.stage(**{out: _iso_fast(pl.col(iso), tc.timezone)})
        todo = pl.when(pl.col(out).is_null()).then(pl.col(iso))
        first = todo.str.strptime(pl.Datetime("us"), _ISO_AWARE, strict=False)
        plan.stage(**{out: pl.coalesce(pl.col(out), _localize(first, True, "UTC"))})
        for fmt in _ISO_NAIVE:
            todo = pl.when(pl.col(out).is_null()).then(pl.col(iso))
            parsed = _localize(
                todo.str.strptime(pl.Datetime("us"), fmt, strict=False), False, tc.timezone
            )
            plan.stage(**{out: pl.coalesce(pl.col(out), parsed)})
    elif tc.unit == "date":
        day = text.str.strptime(pl.Date, tc.format or "%Y-%m-%d", strict=False)
        plan.stage(**{out: _localize(day.cast(pl.Datetime("us")), False, tc.timezone)})
    else:  # "format"
        if not tc.format:
            raise DataError("timestamp.unit 'format' needs timestamp.format (strptime)")
        aware = any(z in tc.format for z in ("%z", "%:z", "%#z", "%Z"))
        parsed = text.str.strptime(pl.Datetime("us"), tc.format, strict=False)
        plan.stage(**{out: _localize(parsed, aware, tc.timezone)})
    return out


def _iso_fast(iso: pl.Expr, tz: str) -> pl.Expr:
    """The common ISO shapes without a general ``strptime`` (null for any other shape).

    ``YYYY-MM-DDTHH:MM:SS`` with no fraction or a 3- or 6-digit one, with or without ``Z``:
    Polars parses the fixed 19-character head several times faster than a format with a
    fraction or a zone, and the fraction is a plain integer slice. Other shapes (an offset
    such as ``+02:00``, a date only, other fraction lengths) stay null here and go to the
    general formats after it, which then only run on those rows.
    """
    n = iso.str.len_bytes()
    utc = iso.str.ends_with("Z")
    body = n - utc.cast(pl.UInt32)
    first_digit = iso.str.slice(20, 1)
    # a digit right after the dot: a sign ("+12") would otherwise cast to a number
    dot = (iso.str.slice(19, 1) == ".") & (first_digit >= "0") & (first_digit <= "9")
    ms = iso.str.slice(20, 3).cast(pl.Int64, strict=False)
    us = iso.str.slice(20, 6).cast(pl.Int64, strict=False)
    micros = (
        pl.when(body == 19)
        .then(pl.lit(0, pl.Int64))
        .when(dot & (body == 23) & (ms >= 0))
        .then(ms * 1000)
        .when(dot & (body == 26) & (us >= 0))
        .then(us)
    )
    head = iso.str.head(19).str.strptime(
        pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False, cache=False
    )
    naive = head + pl.duration(microseconds=micros)
    if tz == "UTC":
        return naive.dt.replace_time_zone("UTC").cast(schema.UTC_TIMESTAMP)
    aware = pl.when(utc).then(naive.dt.replace_time_zone("UTC"))
    local = pl.when(~utc).then(naive)
    return pl.coalesce(aware, _localize(local, False, tz)).cast(schema.UTC_TIMESTAMP)


def _timestamp(plan: _Plan, cfg: DataConfig, dtypes: dict[str, pl.DataType]) -> None:
    tc = cfg.timestamp
    assert tc is not None
    shown = pl.col(_t(tc.column))
    ts = _time_stages(plan, tc, dtypes[tc.column])
    plan.checks += [
        _Check(shown.is_null(), "missing timestamp", tc.column, shown),
        _Check(pl.col(ts).is_null(), "unparseable timestamp", tc.column, shown),
    ]
    if tc.offset_column:
        off_dtype = dtypes[tc.offset_column]
        off_shown = pl.col(_t(tc.offset_column))
        source = pl.col(tc.offset_column) if off_dtype.is_numeric() else off_shown
        off_us = _number_us(
            source, off_dtype if off_dtype.is_numeric() else pl.String(), _US[tc.offset_unit]
        )
        plan.stage(**{_v("offset"): off_us})
        total = _v("ts_total")
        plan.stage(**{total: pl.col(ts) + pl.duration(microseconds=pl.col(_v("offset")))})
        plan.checks += [
            _Check(off_shown.is_null(), "missing timestamp", tc.offset_column, off_shown),
            _Check(
                pl.col(_v("offset")).is_null(), "unparseable timestamp", tc.offset_column, off_shown
            ),
        ]
        shown = pl.concat_str(shown, pl.lit(" + "), off_shown)
        ts = total
    lo = _utc(cfg.quality.min_timestamp)
    hi = _utc(cfg.quality.max_timestamp)
    plan.checks.append(
        _Check((pl.col(ts) < lo) | (pl.col(ts) > hi), "timestamp out of range", tc.column, shown)
    )
    plan.outputs[schema.TIMESTAMP] = pl.col(ts)


def _event_type(plan: _Plan, et: EventTypeConfig) -> None:
    if et.constant is not None:
        plan.outputs[schema.EVENT_TYPE] = pl.lit(et.constant, pl.String)
        return
    assert et.column is not None
    raw = pl.col(_t(et.column))
    mapping = et.mapping or {t: t for t in schema.CORE_EVENT_TYPES}
    plan.checks.append(_Check(raw.is_null(), "missing event type", et.column, raw))
    # a when/then chain, not replace/replace_strict: those are not streamed by Polars'
    # streaming engine (the whole column, and with it the whole plan, is materialized)
    mapped: Any = raw if not et.strict else pl.lit(None, pl.String)
    for source_value, value in reversed(list(mapping.items())):
        mapped = pl.when(raw == source_value).then(pl.lit(value, pl.String)).otherwise(mapped)
    plan.stage(**{_v("event"): mapped})
    if et.strict:
        plan.checks.append(
            _Check(pl.col(_v("event")).is_null(), "unknown event type", et.column, raw)
        )
    plan.outputs[schema.EVENT_TYPE] = pl.col(_v("event"))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text_or_constant(cfg: DataConfig, name: str) -> tuple[pl.Expr | None, str | None]:
    """The stripped text of the column mapped to ``name``, or its constant (else None)."""
    if name in cfg.columns:
        return pl.col(_t(cfg.columns[name])), cfg.columns[name]
    if name in cfg.constants:
        return pl.lit(cfg.constants[name], pl.String), None
    return None, None


def _plan(
    cfg: DataConfig,
    dtypes: dict[str, pl.DataType],
    strip: bool = True,
    null_values: Sequence[str] = (),
) -> _Plan:
    """Stages, ordered checks and outputs for a preset (see the module doc for the order)."""
    plan = _Plan()
    sources = [c for c in dtypes if c not in (READ_ERROR, schema.SOURCE_FILE, schema.SOURCE_LINE)]
    plan.stage(**{_t(c): _text(pl.col(c), dtypes[c], strip, null_values) for c in sources})
    plan.checks.append(_Check(pl.col(READ_ERROR).is_not_null(), None))
    if sources:
        plan.checks.append(
            _Check(pl.all_horizontal(pl.col([_t(c) for c in sources]).is_null()), "empty row")
        )

    for name in (schema.USER_ID, schema.SESSION_ID, schema.ITEM_ID, schema.CATEGORY):
        expr, _ = _text_or_constant(cfg, name)
        if expr is None and name in schema.EVENT_SCHEMA:
            expr = pl.lit(None, pl.String)
        if expr is not None:
            plan.outputs[name] = expr
    item = plan.outputs[schema.ITEM_ID]
    plan.checks.append(
        _Check(item.is_null(), "missing item_id", cfg.columns.get(schema.ITEM_ID), item)
    )
    plan.checks.append(
        _Check(
            plan.outputs[schema.USER_ID].is_null() & plan.outputs[schema.SESSION_ID].is_null(),
            "missing user_id and session_id",
            ", ".join(
                cfg.columns[c] for c in (schema.USER_ID, schema.SESSION_ID) if c in cfg.columns
            )
            or None,
        )
    )
    _timestamp(plan, cfg, dtypes)
    _event_type(plan, cfg.event_type)

    raw, src = _text_or_constant(cfg, schema.PRICE)
    if raw is not None:
        plan.stage(**{_v("price"): raw.cast(pl.Float64, strict=False)})
        price = pl.col(_v("price"))
        plan.checks.append(
            _Check(raw.is_not_null() & ~price.is_finite().fill_null(False), "bad price", src, raw)
        )
        if not cfg.quality.allow_negative_price:
            plan.checks.append(_Check(price < 0, "negative price", src, raw))
        plan.outputs[schema.PRICE] = price

    raw, src = _text_or_constant(cfg, schema.QUANTITY)
    if raw is not None:
        as_float = raw.cast(pl.Float64, strict=False)
        whole = as_float.is_finite() & (as_float == as_float.floor()) & (as_float.abs() < 2**62)
        qty = pl.coalesce(
            raw.cast(pl.Int64, strict=False), pl.when(whole).then(as_float).cast(pl.Int64)
        )
        plan.stage(**{_v("qty"): qty})
        plan.checks.append(
            _Check(
                raw.is_not_null() & ~(pl.col(_v("qty")) >= 1).fill_null(False),
                "bad quantity",
                src,
                raw,
            )
        )
        plan.outputs[schema.QUANTITY] = pl.col(_v("qty"))

    for out, source in cfg.extra_columns.items():
        plan.outputs[out] = pl.col(_t(source))
    return plan


_CHECK: Final = "__shoprec_check"  # index of the first failing check (null: the row is fine)


def _check_index(checks: list[_Check]) -> pl.Expr:
    """Index of the first failing check, as :data:`_CHECK` (null: the row is fine)."""
    index: Any = pl
    for k, ck in enumerate(checks):
        index = index.when(ck.bad.fill_null(False)).then(pl.lit(k, pl.Int16))
    result: pl.Expr = index.otherwise(pl.lit(None, pl.Int16)).alias(_CHECK)
    return result


def _details(checks: list[_Check]) -> list[pl.Expr]:
    """Reason, column and value of a bad row, from its :data:`_CHECK` index."""
    idx = pl.col(_CHECK)
    reasons = {k: ck.reason for k, ck in enumerate(checks) if ck.reason is not None}
    columns = {k: ck.column for k, ck in enumerate(checks) if ck.column is not None}
    reason = idx.replace_strict(reasons, default=None, return_dtype=pl.String)
    if any(ck.reason is None for ck in checks):
        reason = pl.coalesce(reason, pl.when(idx.is_not_null()).then(pl.col(READ_ERROR)))
    value: Any = pl.lit(None, pl.String)
    for k, ck in reversed(list(enumerate(checks))):
        if ck.value is not None:
            value = pl.when(idx == k).then(ck.value.cast(pl.String)).otherwise(value)
    return [
        pl.col(schema.SOURCE_FILE),
        pl.col(schema.SOURCE_LINE),
        reason.alias(schema.REASON),
        idx.replace_strict(columns, default=None, return_dtype=pl.String).alias(QUARANTINE_COLUMN),
        value.alias(QUARANTINE_VALUE),
    ]


_ROW: Final = "__shoprec_row"


def effective_config(cfg: DataConfig) -> DataConfig:
    """The preset as validation sees it: a benchmark split maps its own fixed columns."""
    if cfg.read.format != "benchmark_split":
        return cfg
    ids = {schema.SESSION_ID: schema.SESSION_ID, schema.ITEM_ID: schema.ITEM_ID}
    ts = TimestampConfig(column=schema.TIMESTAMP, unit="us")
    update = {"columns": ids, "constants": {}, "timestamp": ts, "extra_columns": {}}
    return cfg.model_copy(update=update)


def validate(source: RawSource, cfg: DataConfig, strict: bool = False) -> ValidationResult:
    """Cast, check and de-duplicate the rows of ``source`` per ``cfg`` (see the module doc).

    One streaming pass yields the canonical columns and, per row, the index of the first
    failing check. Only when some row fails, a second pass computes reason, column and value
    for those rows alone: the common all-good file never materializes quarantine columns.
    """
    try:
        return _validate(source, cfg, strict)
    except pl.exceptions.PolarsError:
        if source.fallback is None:
            raise
        return _validate(source.fallback(), cfg, strict)  # a fast reader met a ragged line


def _optimizations(source: RawSource) -> pl.QueryOptFlags:
    """Query flags for reading ``source``: a fast reader with a ``fallback`` (Polars' CSV
    parser) must parse every field of every line, because only then does it fail on a line
    with too many fields (when columns are pruned it silently drops the extra ones), and that
    failure is what sends validation to the exact reader."""
    if source.fallback is None:
        return pl.QueryOptFlags()
    return pl.QueryOptFlags(projection_pushdown=False)


def _validate(source: RawSource, cfg: DataConfig, strict: bool) -> ValidationResult:
    cfg = effective_config(cfg)
    dtypes = dict(source.frame.collect_schema())
    plan = _plan(cfg, dtypes, source.needs_strip, source.null_values)
    lf = source.frame.with_row_index(_ROW)
    for stage in plan.stages:
        lf = lf.with_columns(**stage)
    lf = lf.with_columns(_check_index(plan.checks))
    out = canonical_columns(cfg)
    opts = _optimizations(source)
    checked = lf.select(*[plan.outputs[c].alias(c) for c in out], _CHECK).collect(
        engine="streaming", optimizations=opts
    )
    bad = checked.get_column(_CHECK).is_not_null()
    if not bad.any():
        return _finish(checked.drop(_CHECK), None, checked.height, cfg, strict, source)
    rows = bad.arg_true().cast(pl.get_index_type())
    quarantine = (
        lf.filter(pl.col(_ROW).is_in(rows.implode()))
        .select(_details(plan.checks))
        .collect(engine="streaming", optimizations=opts)
    )
    accepted = checked.filter(~bad).drop(_CHECK)
    return _finish(accepted, quarantine, checked.height, cfg, strict, source)


def validate_streaming(
    source: RawSource, cfg: DataConfig, accepted_path: Path, strict: bool = False
) -> ValidationResult:
    """:func:`validate` for inputs larger than memory: the accepted rows go to ``accepted_path``
    (parquet, source order, duplicates removed) and ``accepted`` is left empty.

    The checked rows are streamed to a parquet file once (the wide rows are never all in
    memory); bad rows are looked up from it, and duplicates are found from a sorted column of
    64-bit row hashes (8 bytes a row) with only the rows whose hash repeats compared exactly.
    """
    try:
        return _validate_streaming(source, cfg, accepted_path, strict)
    except pl.exceptions.PolarsError:
        if source.fallback is None:
            raise
        return _validate_streaming(source.fallback(), cfg, accepted_path, strict)


def _validate_streaming(
    source: RawSource, cfg: DataConfig, accepted_path: Path, strict: bool
) -> ValidationResult:
    cfg = effective_config(cfg)
    dtypes = dict(source.frame.collect_schema())
    plan = _plan(cfg, dtypes, source.needs_strip, source.null_values)
    lf = source.frame.with_row_index(_ROW)
    for stage in plan.stages:
        lf = lf.with_columns(**stage)
    lf = lf.with_columns(_check_index(plan.checks))
    out = canonical_columns(cfg)
    checked_path = accepted_path.with_name(accepted_path.name + ".checked")
    opts = _optimizations(source)
    lf.select(_ROW, *[plan.outputs[c].alias(c) for c in out], _CHECK).sink_parquet(
        checked_path, compression="lz4", optimizations=opts
    )
    checked = pl.scan_parquet(checked_path)
    rows_read = checked.select(pl.len()).collect().item()
    bad_rows = checked.filter(pl.col(_CHECK).is_not_null()).select(_ROW).collect()
    quarantine = None
    if bad_rows.height:
        quarantine = (
            lf.filter(pl.col(_ROW).is_in(bad_rows.get_column(_ROW).implode()))
            .select(_details(plan.checks))
            .collect(engine="streaming", optimizations=opts)
        )
    accepted = checked.filter(pl.col(_CHECK).is_null()).drop(_CHECK)
    drop = pl.Series(_ROW, [], dtype=pl.get_index_type())
    if cfg.quality.drop_duplicates:
        drop = _duplicate_rows(accepted, out)
    accepted.filter(~pl.col(_ROW).is_in(drop.implode())).drop(_ROW).sink_parquet(
        accepted_path, compression="lz4"
    )
    checked_path.unlink()
    empty = pl.DataFrame(schema={c: t for c, t in checked.collect_schema().items() if c in out})
    result = _finish(empty, quarantine, rows_read, None, strict, source)
    result.rows_accepted = rows_read - result.rows_quarantined - drop.len()
    result.rows_duplicate = drop.len()
    return result


def _duplicate_rows(rows: pl.LazyFrame, columns: list[str]) -> pl.Series:
    """Row ids (:data:`_ROW`) of exact repeats of an earlier row, without holding the rows.

    Sorting the 64-bit row hashes finds the hashes that repeat; only rows with such a hash
    are loaded and compared exactly (the first of each group of equal rows is kept).
    """
    row_hash = pl.struct(columns).hash(seed=0).alias("__shoprec_hash")
    hashes = rows.select(row_hash).collect(engine="streaming").get_column("__shoprec_hash")
    hashes = hashes.sort()
    repeated = hashes.filter(hashes == hashes.shift(1)).unique()
    del hashes
    if repeated.len() == 0:
        return pl.Series(_ROW, [], dtype=pl.get_index_type())
    candidates = (
        rows.filter(row_hash.is_in(repeated.implode())).collect(engine="streaming").sort(_ROW)
    )
    first = candidates.select(pl.struct(columns).is_first_distinct()).to_series()
    return candidates.get_column(_ROW).filter(~first)


def _finish(
    accepted: pl.DataFrame,
    quarantine: pl.DataFrame | None,
    rows_read: int,
    cfg: DataConfig | None,
    strict: bool,
    source: RawSource,
) -> ValidationResult:
    """Strict check, raw text, de-duplication (``cfg`` None: never) and the counts."""
    if quarantine is None or quarantine.height == 0:
        quarantine = pl.DataFrame(schema=schema.QUARANTINE_SCHEMA)
    elif strict:
        _raise_first(quarantine)
    quarantine = _with_raw(quarantine, source)
    n_dup = 0
    if cfg is not None and cfg.quality.drop_duplicates and accepted.height:
        accepted, n_dup = _drop_duplicates(accepted, accepted.columns)
    reasons = (
        quarantine.group_by(schema.REASON)
        .len()
        .sort(["len", schema.REASON], descending=[True, False])
    )
    return ValidationResult(
        accepted=accepted,
        quarantine=quarantine,
        rows_read=rows_read,
        rows_accepted=accepted.height,
        rows_quarantined=quarantine.height,
        rows_duplicate=n_dup,
        reasons=dict(zip(reasons[schema.REASON].to_list(), reasons["len"].to_list(), strict=True)),
    )


def _drop_duplicates(frame: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, int]:
    """Keep the first of each group of exactly equal rows; return the frame and rows removed.

    A 64-bit row hash finds candidates cheaply; only rows whose hash repeats are compared
    exactly, so a hash collision can never remove a row that merely looks alike.
    """
    hashed = frame.select(columns).hash_rows(seed=0)
    # repeated hashes from a sorted copy: numpy sorts 10M u64 in ~0.1 CPU s, several times
    # less than a hash-based ``is_duplicated`` over the same column
    ordered = np.sort(hashed.to_numpy())
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return frame, 0
    repeated = pl.Series(np.unique(ordered[1:][same]), dtype=pl.UInt64)
    del ordered, same
    rows = hashed.is_in(repeated.implode()).arg_true()
    first = frame[rows].select(pl.struct(columns).is_first_distinct()).to_series()
    drop = rows.filter(~first)
    if drop.len() == 0:
        return frame, 0
    keep = pl.repeat(True, frame.height, eager=True).scatter(drop, False)
    return frame.filter(keep), drop.len()


def _raise_first(quarantine: pl.DataFrame) -> None:
    row = quarantine.row(0, named=True)
    where = f"{row[schema.SOURCE_FILE]}:{row[schema.SOURCE_LINE]}"
    parts = [f"{where}: {row[schema.REASON]}"]
    if row[QUARANTINE_COLUMN] is not None:
        parts.append(f"column {row[QUARANTINE_COLUMN]!r}")
    if row[QUARANTINE_VALUE] is not None:
        parts.append(f"value {row[QUARANTINE_VALUE]!r}")
    more = quarantine.height - 1
    tail = f" ({more} more bad row(s) after it)" if more else ""
    raise DataError(", ".join(parts) + tail + " [--strict]")


def _with_raw(quarantine: pl.DataFrame, source: RawSource) -> pl.DataFrame:
    """Attach the raw line text of quarantined rows (text files only; first rows only)."""
    text_files = {f.path for f in source.files if f.is_text}
    raws: list[pl.DataFrame] = []
    if quarantine.height:
        head = quarantine.head(_RAW_LOOKUP_MAX)
        for path in head.get_column(schema.SOURCE_FILE).unique(maintain_order=True).to_list():
            if path not in text_files:
                continue
            lines = (
                head.filter(pl.col(schema.SOURCE_FILE) == path)
                .get_column(schema.SOURCE_LINE)
                .to_list()
            )
            found = raw_lines(path, lines)
            raws.append(
                pl.DataFrame(
                    {
                        schema.SOURCE_FILE: [path] * len(found),
                        schema.SOURCE_LINE: list(found),
                        QUARANTINE_RAW: list(found.values()),
                    },
                    schema={
                        schema.SOURCE_FILE: pl.String,
                        schema.SOURCE_LINE: pl.Int64,
                        QUARANTINE_RAW: pl.String,
                    },
                )
            )
    if QUARANTINE_RAW in quarantine.columns:
        quarantine = quarantine.drop(QUARANTINE_RAW)
    if raws:
        quarantine = quarantine.join(
            pl.concat(raws),
            on=[schema.SOURCE_FILE, schema.SOURCE_LINE],
            how="left",
            maintain_order="left",
        )
    else:
        quarantine = quarantine.with_columns(pl.lit(None, pl.String).alias(QUARANTINE_RAW))
    return quarantine.select([pl.col(n).cast(t) for n, t in schema.QUARANTINE_SCHEMA.items()])


def validate_cases(source: RawSource, strict: bool = False) -> ValidationResult:
    """Benchmark test rows (``prefix_ids``, ``target_id``): reject empty prefixes/targets.

    Cases are never de-duplicated: a published test file may repeat a case, and the
    published numbers count every line.
    """
    prefix = pl.col(schema.PREFIX_IDS)
    checks = [
        _Check(pl.col(READ_ERROR).is_not_null(), None),
        _Check(pl.col(schema.TARGET_ID).is_null(), "missing target", schema.TARGET_ID),
        _Check(prefix.list.len() == 0, "empty prefix", schema.PREFIX_IDS, prefix.list.join(" ")),
    ]
    checked = (
        source.frame.with_columns(_check_index(checks))
        .with_columns(
            pl.struct(_details(checks)).alias("_q"),
            pl.col(_CHECK).is_not_null().alias("_bad"),
        )
        .collect(engine="streaming")
    )
    bad = checked.get_column("_bad")
    accepted = checked.filter(~bad).select(schema.PREFIX_IDS, schema.TARGET_ID)
    quarantine = checked.filter(bad).select(pl.col("_q").struct.unnest())
    return _finish(accepted, quarantine, checked.height, None, strict, source)

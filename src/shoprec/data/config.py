"""Typed data presets (``configs/data/*.yaml``): how an export maps onto the canonical schema,
how it is sessionized, filtered and split.

A preset is closed: an unknown key or a wrong type fails with the file and key named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from shoprec.config import StrictModel


class ReadConfig(StrictModel):
    """How to parse the raw file(s)."""

    format: Literal["csv", "parquet", "jsonl", "whitespace", "benchmark_split"] = "csv"
    separator: str = Field(default=",", min_length=1, max_length=1)  # csv only; "\t" for TSV
    has_header: bool = True
    column_names: list[str] | None = None  # names for header-less files (csv, whitespace)
    null_values: list[str] = Field(default_factory=list)  # e.g. ["NA"]
    explode: str | None = None  # jsonl: name of a nested list of events to explode (OTTO)
    session_key: str | None = None  # jsonl: top-level key carried into every exploded event


class TimestampConfig(StrictModel):
    """How the timestamp is encoded in the source.

    unit: ``s``/``ms``/``us`` epoch numbers, ``iso`` (ISO-8601 strings), ``format`` (strptime
    with ``format``), ``date`` (a calendar date, ``format`` optional). ``offset_column`` adds a
    numeric offset in ``offset_unit`` (Diginetica: date + ms since session start).
    """

    column: str
    unit: Literal["s", "ms", "us", "iso", "format", "date"] = "s"
    format: str | None = None
    offset_column: str | None = None
    offset_unit: Literal["s", "ms", "us"] = "ms"
    timezone: str = "UTC"  # zone of naive source timestamps; output is always UTC

    @model_validator(mode="after")
    def _consistent(self) -> TimestampConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # local: edit stays in the class

        if self.unit == "format" and not self.format:
            raise ValueError("timestamp.unit 'format' needs timestamp.format (strptime codes)")
        if self.offset_column is not None and self.offset_column == self.column:
            raise ValueError("timestamp.offset_column must differ from timestamp.column")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timestamp.timezone {self.timezone!r} is not a known zone") from None
        return self


class EventTypeConfig(StrictModel):
    """Event type: a constant, or a source column mapped onto view/cart/purchase/extras."""

    constant: str | None = None
    column: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)  # source value -> canonical value
    strict: bool = True  # strict: a value outside the mapping is quarantined; else kept as is

    @model_validator(mode="after")
    def _one_source(self) -> EventTypeConfig:
        if (self.constant is None) == (self.column is None):
            raise ValueError("event_type needs exactly one of 'constant' or 'column'")
        return self


class SessionConfig(StrictModel):
    """Sessionization: keep given ids, or split each user's stream by an inactivity gap."""

    use_given: bool = True  # keep a given session id where the source has one
    gap_minutes: float = Field(default=30.0, gt=0)
    remove_consecutive_repeats: bool = False  # a, a, b -> a, b within a session


class FilterConfig(StrictModel):
    """Item-support and session-length filters, applied iteratively until stable (session-rec)."""

    min_item_support: int = Field(default=1, ge=1)
    min_session_length: int = Field(default=1, ge=1)
    iterative: bool = True
    max_rounds: int = Field(default=20, ge=1)


class SplitConfig(StrictModel):
    """Time-based split with no leakage.

    ``last_days``: the last ``test_days`` (and before them ``valid_days``) of the log are test
    (valid). ``cutoff``: explicit timestamps. ``given``: the source provides train and test
    files (``test_input``). ``none``: everything is train. Sessions are assigned by their
    first event; a session that straddles a cut-off keeps only its events before the cut-off
    (the rest is dropped and counted), so no test event precedes the test cut-off and no train
    event follows it.
    """

    kind: Literal["last_days", "cutoff", "given", "none"] = "last_days"
    test_days: float = Field(default=1.0, ge=0)
    valid_days: float = Field(default=0.0, ge=0)
    test_cutoff: datetime | None = None
    valid_cutoff: datetime | None = None
    min_test_session_length: int = Field(default=2, ge=1)  # a test case needs a prefix

    @model_validator(mode="after")
    def _cutoffs(self) -> SplitConfig:
        if self.kind == "cutoff" and self.test_cutoff is None:
            raise ValueError("split.kind 'cutoff' needs split.test_cutoff")
        if self.valid_cutoff and self.test_cutoff and self.valid_cutoff >= self.test_cutoff:
            raise ValueError("split.valid_cutoff must be before split.test_cutoff")
        return self


class QualityConfig(StrictModel):
    """Row-level validation rules."""

    drop_duplicates: bool = True  # exact duplicate canonical rows are removed and counted
    allow_negative_price: bool = False
    # Plausible time range (naive = UTC): a timestamp outside it is quarantined as
    # "timestamp out of range" - usually a wrong unit (ms read as s gives year 50000+).
    min_timestamp: datetime = datetime(1990, 1, 1)
    max_timestamp: datetime = datetime(2100, 1, 1)


class DataConfig(StrictModel):
    """One data preset: a source format mapped onto :mod:`shoprec.schema`."""

    name: str
    description: str = ""
    input: str | None = None  # default source path (file or folder); ``--input`` overrides
    test_input: str | None = None  # second file for ``split.kind: given``
    read: ReadConfig = Field(default_factory=ReadConfig)
    columns: dict[str, str] = Field(default_factory=dict)  # canonical name -> source column
    constants: dict[str, str] = Field(default_factory=dict)  # canonical name -> constant value
    # Extra source columns carried through unchanged as strings (output name -> source
    # column), e.g. an order number; they count in duplicate detection.
    extra_columns: dict[str, str] = Field(default_factory=dict)
    timestamp: TimestampConfig | None = None  # None only for the benchmark split format
    event_type: EventTypeConfig = Field(default_factory=lambda: EventTypeConfig(constant="view"))
    sessions: SessionConfig = Field(default_factory=SessionConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="after")
    def _mapping(self) -> DataConfig:
        """Catch a preset that cannot work before any file is read."""
        from shoprec import schema  # local: keeps this edit inside the class

        mappable = {*schema.CANONICAL_COLUMNS} - {schema.TIMESTAMP, schema.EVENT_TYPE}
        for section in ("columns", "constants"):
            bad = sorted(set(getattr(self, section)) - mappable)
            if bad:
                raise ValueError(
                    f"{section}: {bad} not mappable; use one of {sorted(mappable)} "
                    "(timestamp and event_type have their own sections)"
                )
        both = sorted(set(self.columns) & set(self.constants))
        if both:
            raise ValueError(f"{both} given in both 'columns' and 'constants'")
        reserved = {*schema.CANONICAL_COLUMNS, *schema.QUARANTINE_SCHEMA, schema.ITEM_IDX}
        clash = sorted(set(self.extra_columns) & reserved)
        if clash:
            raise ValueError(f"extra_columns: {clash} clash with canonical/bookkeeping names")
        if self.read.format == "benchmark_split":
            return self
        if self.timestamp is None:
            raise ValueError("timestamp is required (only read.format benchmark_split has none)")
        if schema.ITEM_ID not in self.columns and schema.ITEM_ID not in self.constants:
            raise ValueError("item_id must be mapped in 'columns' or set in 'constants'")
        return self

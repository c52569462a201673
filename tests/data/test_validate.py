"""Validation: canonical casts, quarantine reasons, de-duplication and the row invariant."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoprec import schema
from shoprec.config import load_config
from shoprec.data.config import DataConfig
from shoprec.data.readers import read_events
from shoprec.data.validate import (
    QUARANTINE_COLUMN,
    QUARANTINE_RAW,
    QUARANTINE_VALUE,
    ValidationResult,
    validate,
)
from shoprec.errors import DataError

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_inputs"
BAD_PRESET = BAD / "bad_events.yaml"


def _run(cfg: DataConfig, path: Path, strict: bool = False) -> ValidationResult:
    return validate(read_events(cfg, path), cfg, strict=strict)


def _invariant(r: ValidationResult) -> None:
    assert r.rows_read == r.rows_accepted + r.rows_quarantined + r.rows_duplicate
    assert sum(r.reasons.values()) == r.rows_quarantined


def _cfg(data: dict[str, Any]) -> DataConfig:
    base: dict[str, Any] = {"name": "t", "columns": {"session_id": "s", "item_id": "i"}}
    return DataConfig.model_validate({**base, **data})


def test_bad_corpus_exact_quarantine() -> None:
    cfg = load_config(DataConfig, BAD_PRESET)
    r = _run(cfg, BAD / "bad_events.csv")
    _invariant(r)
    assert (r.rows_read, r.rows_accepted, r.rows_quarantined, r.rows_duplicate) == (17, 4, 12, 1)
    q = r.quarantine
    assert q.schema == pl.Schema(schema.QUARANTINE_SCHEMA)
    assert q.select(
        schema.SOURCE_LINE, schema.REASON, QUARANTINE_COLUMN, QUARANTINE_VALUE
    ).rows() == [
        (5, "unparseable timestamp", "timestamp", "yesterday"),
        (6, "missing item_id", "item_id", None),
        (7, "missing user_id and session_id", "user_id, session_id", None),
        (8, "negative price", "price", "-3.00"),
        (9, "unknown event type", "event_type", "wishlist"),
        (10, "bad quantity", "quantity", "0"),
        (11, "bad price", "price", "abc"),
        (12, "wrong number of fields (expected 7)", None, None),
        (13, "empty row", None, None),
        (14, "missing timestamp", "timestamp", None),
        (16, "timestamp out of range", "timestamp", "1970-01-01T00:00:00Z"),
        (17, "missing event type", "event_type", None),
    ]
    assert q.row(0, named=True)[QUARANTINE_RAW] == "u1,s1,i3,yesterday,view,1.00,1"
    assert set(q.get_column(schema.SOURCE_FILE).to_list()) == {str(BAD / "bad_events.csv")}
    assert r.reasons == {reason: 1 for reason in q.get_column(schema.REASON).to_list()}
    a = r.accepted
    assert a.columns == [*schema.EVENT_SCHEMA, schema.PRICE, schema.QUANTITY]
    assert a.schema[schema.TIMESTAMP] == schema.UTC_TIMESTAMP
    assert a.select(schema.USER_ID, schema.SESSION_ID, schema.ITEM_ID, schema.PRICE).rows() == [
        ("u1", "s1", "i1", 1.5),
        ("u1", "s1", "i2", 2.0),
        ("u3", None, "i1", None),
        (None, "s3", "i2", 1.0),
    ]
    assert a.get_column(schema.QUANTITY).to_list() == [1, 1, 2, None]


def test_strict_names_file_line_column_value() -> None:
    cfg = load_config(DataConfig, BAD_PRESET)
    with pytest.raises(DataError) as info:
        _run(cfg, BAD / "bad_events.csv", strict=True)
    assert str(info.value) == (
        f"{BAD / 'bad_events.csv'}:5: unparseable timestamp, column 'timestamp', "
        "value 'yesterday' (11 more bad row(s) after it) [--strict]"
    )


def test_strict_passes_a_clean_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text("s,i,t\na,1,1700000000\na,1,1700000000\n", encoding="utf-8")
    r = _run(_cfg({"timestamp": {"column": "t"}}), path, strict=True)
    assert (r.rows_accepted, r.rows_duplicate) == (1, 1)  # a duplicate is not a bad row


@pytest.mark.parametrize(
    ("timestamp", "values", "expected"),
    [
        (
            {"column": "t", "unit": "s"},
            ["1396860669.277", "1396860669"],
            [
                datetime(2014, 4, 7, 8, 51, 9, 277000, tzinfo=UTC),
                datetime(2014, 4, 7, 8, 51, 9, tzinfo=UTC),
            ],
        ),
        (
            {"column": "t", "unit": "ms"},
            ["1659304800025"],
            [
                datetime(2022, 7, 31, 22, 0, 0, 25000, tzinfo=UTC),
            ],
        ),
        (
            {"column": "t", "unit": "us"},
            ["1659304800000001"],
            [
                datetime(2022, 7, 31, 22, 0, 0, 1, tzinfo=UTC),
            ],
        ),
        (
            {"column": "t", "unit": "iso"},
            [
                "2024-01-01T00:00:05.082Z",
                "2024-01-01 02:00:00+02:00",
                "2024-01-01T00:00:00.000001",
                "2024-01-01",
                "2024-01-01T10:00",
            ],
            [
                datetime(2024, 1, 1, 0, 0, 5, 82000, tzinfo=UTC),
                datetime(2024, 1, 1, 0, 0, tzinfo=UTC),
                datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
                datetime(2024, 1, 1, tzinfo=UTC),
                datetime(2024, 1, 1, 10, 0, tzinfo=UTC),
            ],
        ),
        (
            {"column": "t", "unit": "iso", "timezone": "Europe/Berlin"},
            [
                "2024-07-01T12:00:00",
                "2024-07-01T12:00:00Z",
            ],
            [
                datetime(2024, 7, 1, 10, 0, tzinfo=UTC),
                datetime(2024, 7, 1, 12, 0, tzinfo=UTC),
            ],
        ),
        (
            {
                "column": "t",
                "unit": "format",
                "format": "%d/%m/%Y %H:%M",
                "timezone": "America/New_York",
            },
            ["15/01/2024 09:30"],
            [datetime(2024, 1, 15, 14, 30, tzinfo=UTC)],
        ),
        (
            {"column": "t", "unit": "date", "format": "%Y%m%d"},
            ["19970101"],
            [
                datetime(1997, 1, 1, tzinfo=UTC),
            ],
        ),
        # Diginetica: eventdate + timeframe (ms)
        (
            {"column": "t", "unit": "date", "offset_column": "o", "offset_unit": "ms"},
            ["2016-05-09"],
            [
                datetime(2016, 5, 9, 0, 8, 46, 309000, tzinfo=UTC),
            ],
        ),
    ],
)
def test_timestamp_units(
    tmp_path: Path, timestamp: dict[str, Any], values: list[str], expected: list[datetime]
) -> None:
    path = tmp_path / "t.csv"
    lines = ["s;i;t;o"] + [f"a;1;{v};526309" for v in values]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = _run(
        _cfg(
            {
                "read": {"separator": ";"},
                "timestamp": timestamp,
                "quality": {"drop_duplicates": False},
            }
        ),
        path,
    )
    assert r.rows_quarantined == 0, r.quarantine
    assert r.accepted.get_column(schema.TIMESTAMP).to_list() == expected


def test_bad_offset_is_quarantined_on_its_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("s;i;t;o\na;1;2016-05-09;x\na;2;2016-05-09;\n", encoding="utf-8")
    cfg = _cfg(
        {
            "read": {"separator": ";"},
            "timestamp": {"column": "t", "unit": "date", "offset_column": "o"},
        }
    )
    r = _run(cfg, path)
    assert r.quarantine.select(schema.REASON, QUARANTINE_COLUMN, QUARANTINE_VALUE).rows() == [
        ("unparseable timestamp", "o", "x"),
        ("missing timestamp", "o", None),
    ]


def test_event_type_mapping_strict_and_lenient(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("s,i,t,e\na,1,1,view\na,2,2,addtocart\na,3,3,like\n", encoding="utf-8")
    mapping = {"view": "view", "addtocart": "cart"}
    quality = {"min_timestamp": "1970-01-01T00:00:00"}
    strict = _cfg(
        {
            "timestamp": {"column": "t"},
            "event_type": {"column": "e", "mapping": mapping},
            "quality": quality,
        }
    )
    r = _run(strict, path)
    assert r.accepted.get_column(schema.EVENT_TYPE).to_list() == ["view", "cart"]
    assert r.reasons == {"unknown event type": 1}
    lenient = strict.model_copy(
        update={"event_type": strict.event_type.model_copy(update={"strict": False})}
    )
    r = _run(lenient, path)
    assert r.accepted.get_column(schema.EVENT_TYPE).to_list() == ["view", "cart", "like"]


def test_whitespace_null_values_and_constants(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("s,u,i,t\n s1 ,NA, i1 ,1700000000\nNA,u2,i2,1700000001\n", encoding="utf-8")
    cfg = _cfg(
        {
            "read": {"null_values": ["NA"]},
            "columns": {"session_id": "s", "user_id": "u", "item_id": "i"},
            "constants": {"category": "books"},
            "timestamp": {"column": "t"},
        }
    )
    r = _run(cfg, path)
    assert r.accepted.select(
        schema.USER_ID, schema.SESSION_ID, schema.ITEM_ID, schema.CATEGORY
    ).rows() == [
        (None, "s1", "i1", "books"),
        ("u2", None, "i2", "books"),
    ]


def test_duplicates_are_exact_and_first_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = ["a,1,100,1.0", "a,1,100,1.0", "a,1,100,1.5", "a,1,100,1.0", "b,1,100,1.0"]
    path.write_text("s,i,t,p\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cfg = _cfg(
        {
            "columns": {"session_id": "s", "item_id": "i", "price": "p"},
            "timestamp": {"column": "t"},
            "quality": {"min_timestamp": "1970-01-01T00:00:00"},
        }
    )
    r = _run(cfg, path)
    _invariant(r)
    assert r.rows_duplicate == 2
    assert r.accepted.select(schema.SESSION_ID, schema.PRICE).rows() == [
        ("a", 1.0),
        ("a", 1.5),
        ("b", 1.0),
    ]
    keep = cfg.model_copy(
        update={"quality": cfg.quality.model_copy(update={"drop_duplicates": False})}
    )
    assert _run(keep, path).rows_accepted == 5


def test_negative_price_allowed_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("s,i,t,p\na,1,1700000000,-2.5\n", encoding="utf-8")
    cfg = _cfg(
        {"columns": {"session_id": "s", "item_id": "i", "price": "p"}, "timestamp": {"column": "t"}}
    )
    assert _run(cfg, path).reasons == {"negative price": 1}
    allow = cfg.model_copy(
        update={"quality": cfg.quality.model_copy(update={"allow_negative_price": True})}
    )
    assert _run(allow, path).accepted.get_column(schema.PRICE).to_list() == [-2.5]


def test_parquet_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame(
        {
            "s": [1, 2, None],
            "i": [10, 11, 12],
            "t": [datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 3)],
            "q": [1, 0, 2],
        }
    ).write_parquet(path)
    cfg = _cfg(
        {
            "read": {"format": "parquet"},
            "columns": {"session_id": "s", "item_id": "i", "quantity": "q"},
            "timestamp": {"column": "t"},
        }
    )
    r = _run(cfg, path)
    assert r.accepted.select(schema.SESSION_ID, schema.ITEM_ID, schema.TIMESTAMP).rows() == [
        ("1", "10", datetime(2024, 1, 1, tzinfo=UTC)),
    ]
    assert r.quarantine.select(schema.SOURCE_LINE, schema.REASON, QUARANTINE_RAW).rows() == [
        (2, "bad quantity", None),
        (3, "missing user_id and session_id", None),
    ]


# --- the invariant, for random mixes of good, bad and duplicate rows --------------------------

GOOD = "u{n},s{n},i{n},2024-01-01T00:00:{sec:02d}Z,view,1.00,1"
KINDS: dict[str, tuple[str, str | None]] = {
    "good": (GOOD, None),
    "dup": ("", None),  # a copy of the previous good row
    "bad_ts": ("u{n},s{n},i{n},not-a-time,view,1.00,1", "unparseable timestamp"),
    "no_item": ("u{n},s{n},,2024-01-01T00:00:00Z,view,1.00,1", "missing item_id"),
    "no_ids": (",,i{n},2024-01-01T00:00:00Z,view,1.00,1", "missing user_id and session_id"),
    "neg_price": ("u{n},s{n},i{n},2024-01-01T00:00:00Z,view,-1,1", "negative price"),
    "bad_type": ("u{n},s{n},i{n},2024-01-01T00:00:00Z,like,1.00,1", "unknown event type"),
    "bad_qty": ("u{n},s{n},i{n},2024-01-01T00:00:00Z,view,1.00,2.5", "bad quantity"),
    "fields": ("u{n},s{n},i{n}", "wrong number of fields (expected 7)"),
    "blank": ("", "empty row"),
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=40))
def test_rows_read_is_accepted_plus_quarantined_plus_duplicates(
    tmp_path: Path, kinds: list[str]
) -> None:
    lines: list[str] = []
    expected: dict[str, int] = {}
    n_good = n_dup = 0
    last_good: str | None = None
    for n, kind in enumerate(kinds):
        template, reason = KINDS[kind]
        if kind == "dup":
            if last_good is None:
                template, reason = GOOD, None
            else:
                lines.append(last_good)
                n_dup += 1
                continue
        line = template.format(n=n, sec=n % 60)
        lines.append(line)
        if reason is None:
            n_good += 1
            last_good = line
        else:
            expected[reason] = expected.get(reason, 0) + 1
    path = tmp_path / "mix.csv"
    header = "user_id,session_id,item_id,timestamp,event_type,price,quantity"
    path.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    r = _run(load_config(DataConfig, BAD_PRESET), path)
    _invariant(r)
    assert r.rows_read == len(kinds)
    assert (r.rows_accepted, r.rows_duplicate) == (n_good, n_dup)
    assert r.reasons == expected

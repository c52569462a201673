"""Readers: every format as strings, physical source lines, and clear errors per bad file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from shoprec import schema
from shoprec.config import load_config
from shoprec.data.config import DataConfig
from shoprec.data.readers import (
    READ_ERROR,
    inspect_file,
    raw_lines,
    read_benchmark_test,
    read_benchmark_train,
    read_events,
)
from shoprec.errors import DataError

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_inputs"


def _preset(name: str) -> DataConfig:
    if name == "bad_events":
        return load_config(DataConfig, BAD / "bad_events.yaml")
    return load_config(DataConfig, REPO / "configs" / "data" / f"{name}.yaml")


def _csv_config(**read: object) -> DataConfig:
    return DataConfig.model_validate(
        {
            "name": "t",
            "read": {"format": "csv", **read},
            "columns": {"user_id": "u", "item_id": "i"},
            "timestamp": {"column": "t", "unit": "s"},
        }
    )


def test_csv_rows_are_strings_with_physical_lines() -> None:
    src = read_events(_preset("bad_events"), BAD / "bad_events.csv")
    df = src.frame.collect()
    assert df.height == 17
    assert df.get_column(schema.SOURCE_LINE).to_list() == list(range(2, 19))
    assert set(df.get_column(schema.SOURCE_FILE).to_list()) == {str(BAD / "bad_events.csv")}
    data = [c for c in df.columns if c not in (schema.SOURCE_FILE, schema.SOURCE_LINE, READ_ERROR)]
    assert data == [
        "user_id",
        "session_id",
        "item_id",
        "timestamp",
        "event_type",
        "price",
        "quantity",
    ]
    assert all(df.schema[c] == pl.String for c in data)
    errors = df.filter(pl.col(READ_ERROR).is_not_null())
    assert errors.select(schema.SOURCE_LINE, READ_ERROR).rows() == [
        (12, "wrong number of fields (expected 7)"),
        (13, "empty row"),
    ]
    # the price "-3.00" and the id "i5" survive as text: nothing is typed (or lost) yet
    assert df.filter(pl.col(schema.SOURCE_LINE) == 8).row(0, named=True)["price"] == "-3.00"
    assert src.files[0].lines == 18


def test_headerless_tsv_with_column_names(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text("a\t1\t100\nb\t2\t200\n", encoding="utf-8")
    cfg = _csv_config(separator="\t", has_header=False, column_names=["u", "i", "t"])
    df = read_events(cfg, path).frame.collect()
    assert df.select("u", "i", "t", schema.SOURCE_LINE).rows() == [
        ("a", "1", "100", 1),
        ("b", "2", "200", 2),
    ]


def test_headerless_without_names_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,1,100\n", encoding="utf-8")
    with pytest.raises(DataError, match="column_names is required"):
        read_events(_csv_config(has_header=False), path)


def test_quoted_field_spanning_lines_keeps_physical_lines() -> None:
    df = read_events(_preset("bad_events"), BAD / "quoted_multiline.csv").frame.collect()
    assert df.get_column(schema.SOURCE_LINE).to_list() == [2, 3, 5]
    assert df.get_column("item_id").to_list() == ["i1", "item\ntwo", "i3"]


def test_quoted_ragged_rows_are_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('u,i,t\n"a",1,100\n"b",2,200,extra\n"c",3\n', encoding="utf-8")
    df = read_events(_csv_config(), path).frame.collect()
    assert df.select(schema.SOURCE_LINE, READ_ERROR).rows() == [
        (2, None),
        (3, "wrong number of fields (expected 3)"),
        (4, "wrong number of fields (expected 3)"),
    ]


def test_whitespace_crlf_and_field_counts() -> None:
    df = read_events(_preset("cdnow"), BAD / "bad_cdnow.txt").frame.collect()
    assert df.select(schema.SOURCE_LINE, READ_ERROR, "customer_id", "dollar_value").rows() == [
        (1, None, "0001", "29.33"),
        (2, "wrong number of fields (expected 5)", "0001", None),
        (3, "empty row", None, None),
        (4, None, "0002", "9.99"),
        (5, None, "0003", "-5.00"),
    ]


def test_parquet_keeps_types_and_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame({"u": ["a", "b"], "i": [1, 2], "t": [100, 200]}).write_parquet(path)
    cfg = _csv_config().model_copy(
        update={"read": _csv_config().read.model_copy(update={"format": "parquet"})}
    )
    src = read_events(cfg, path)
    df = src.frame.collect()
    assert df.get_column(schema.SOURCE_LINE).to_list() == [1, 2]
    assert df.schema["i"] == pl.Int64
    assert not src.files[0].is_text


def test_parquet_errors(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate(
        {
            "name": "t",
            "read": {"format": "parquet"},
            "columns": {"user_id": "u", "item_id": "i"},
            "timestamp": {"column": "t"},
        }
    )
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(
        {"u": [], "i": [], "t": []}, schema={"u": pl.String, "i": pl.String, "t": pl.Int64}
    ).write_parquet(empty)
    with pytest.raises(DataError, match=r"empty.parquet: Parquet file has no rows"):
        read_events(cfg, empty)
    partial = tmp_path / "partial.parquet"
    pl.DataFrame({"u": ["a"], "i": ["b"]}).write_parquet(partial)
    with pytest.raises(DataError, match=r"partial.parquet: column\(s\) \['t'\] not found"):
        read_events(cfg, partial)
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        read_events(cfg, fake)


def test_jsonl_explode_lines_and_malformed_records() -> None:
    df = read_events(_preset("otto"), BAD / "malformed.jsonl").frame.collect()
    # line 1: two events; line 2: malformed; line 3: an empty list (no events); line 4 blank
    assert df.select(schema.SOURCE_LINE, READ_ERROR, "session", "aid", "ts", "type").rows() == [
        (1, None, "1", "10", "1659304800025", "clicks"),
        (1, None, "1", "11", "1659304900025", "carts"),
        (2, "malformed JSON", None, None, None, None),
        (5, None, "4", "13", "soon", "clicks"),
        (5, None, "4", "14", "1659304800025", "wishlist"),
    ]


def test_jsonl_missing_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"session": 1, "events": [{"aid": 1, "type": "clicks"}]}) + "\n")
    with pytest.raises(DataError, match=r"key\(s\) \['ts'\] not found"):
        read_events(_preset("otto"), path)


def test_benchmark_train_sessions() -> None:
    df = read_benchmark_train(BAD / "train_sessions.txt").frame.collect()
    assert df.select(schema.SESSION_ID, schema.ITEM_ID, schema.SOURCE_LINE).rows() == [
        ("1", "1", 1),
        ("1", "2", 1),
        ("1", "3", 1),
        ("3", "4", 3),
        ("3", "5", 3),
        ("4", "6", 4),
    ]
    ts = df.get_column(schema.TIMESTAMP)
    assert ts.dtype == schema.UTC_TIMESTAMP
    assert ts.is_sorted()


def test_benchmark_test_rows() -> None:
    df = read_benchmark_test(BAD / "bad_test.tsv").frame.collect()
    assert df.select(
        schema.SOURCE_LINE, schema.PREFIX_IDS, schema.TARGET_ID, READ_ERROR
    ).rows() == [
        (2, ["1", "2", "3"], "4", None),
        (3, [], "5", None),
        (4, ["1", "2"], None, None),
        (5, ["7"], None, "wrong number of fields (expected 2)"),
        (6, ["1", "2", "3"], "99", None),
    ]


def test_benchmark_test_needs_its_header(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("1 2\t3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test.tsv:1: expected the header 'prefix<TAB>target'"):
        read_benchmark_test(path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_utf8.csv", r"not_utf8.csv:3: not UTF-8 text \(byte b'\\xe9' at column 10\)"),
        (
            "missing_column.csv",
            r"missing_column.csv: column\(s\) \['price', 'quantity', 'timestamp'\] not found",
        ),
        ("empty.csv", r"empty.csv: empty file \(0 bytes\)"),
        ("header_only.csv", r"header_only.csv: header only, no data rows"),
        ("does_not_exist.csv", r"does_not_exist.csv: input file not found"),
    ],
)
def test_bad_files_are_clear_errors(name: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_events(_preset("bad_events"), BAD / name)


def test_folder_input_reads_every_file_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("u,i,t\nb,2,200\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("u,i,t\na,1,100\na,3,300\n", encoding="utf-8")
    (tmp_path / ".hidden").write_text("junk", encoding="utf-8")
    src = read_events(_csv_config(), tmp_path)
    df = src.frame.collect()
    assert df.select("u", schema.SOURCE_LINE).rows() == [("a", 2), ("a", 3), ("b", 2)]
    assert [Path(f.path).name for f in src.files] == ["a.csv", "b.csv"]


def test_inspect_file_facts(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    data = b"u,i,t\r\na,1,100\r\nb,2,200"
    path.write_bytes(data)
    info = inspect_file(path)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.size, info.lines, info.has_quotes, info.has_blanks) == (len(data), 3, False, False)
    path.write_bytes(b"u,i,t\na, 1,100\n")
    assert inspect_file(path).has_blanks


def test_raw_lines_picks_physical_lines() -> None:
    found = raw_lines(BAD / "bad_events.csv", [13, 5])
    assert found == {5: "u1,s1,i3,yesterday,view,1.00,1", 13: ""}


def test_crlf_csv_values_have_no_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"u,i,t\r\na,1,100\r\nb,2,200\r\n")
    df = read_events(_csv_config(), path).frame.collect()
    assert df.select("u", "i", "t", schema.SOURCE_LINE).rows() == [
        ("a", "1", "100", 2),
        ("b", "2", "200", 3),
    ]


def test_plain_csv_fast_path_reads_like_the_line_split(tmp_path: Path) -> None:
    """A file whose separator count proves its shape goes through Polars' CSV parser; the
    rows, values (an empty field is missing either way) and line numbers are the line split's."""
    path = tmp_path / "plain.csv"
    path.write_text("u,i,t\na,1,100\n,2,200\nc, 3 ,300\n", encoding="utf-8")
    src = read_events(_csv_config(), path)
    assert src.fallback is not None  # the fast reader was chosen
    fast = src.frame.collect()
    exact = src.fallback().frame.collect()
    assert fast.columns == exact.columns
    blank = pl.col("u").replace("", None)
    assert fast.rows() == exact.with_columns(blank).rows()
    assert fast.select(schema.SOURCE_LINE).to_series().to_list() == [2, 3, 4]


def test_balanced_ragged_lines_fall_back_to_the_line_split(tmp_path: Path) -> None:
    """One line too long and one too short keep the separator count right: Polars' parser
    fails on the long one and validation re-reads the file line by line."""
    from shoprec.data.validate import validate

    path = tmp_path / "ragged.csv"
    # "z" is read by no preset column: Polars' parser only sees the extra field when it
    # parses every column, which validation makes it do
    path.write_text("u,i,t,z\na,1,1700000000,z,x\nb,2,1700000100\nc,3,1700000300,z\n")
    cfg = _csv_config()
    src = read_events(cfg, path)
    assert src.fallback is not None
    result = validate(src, cfg)
    assert result.rows_read == 3 and result.rows_accepted == 1
    assert result.quarantine.get_column(schema.SOURCE_LINE).to_list() == [2, 3]
    assert set(result.reasons) == {"wrong number of fields (expected 4)"}


@pytest.mark.parametrize(
    "data",
    [b"u,i,t\na,1,100\n\nc,3,300\n", b"\xef\xbb\xbfu,i,t\na,1,100\n", b"u,i,t\na,1\r,100\n"],
)
def test_unproven_plain_csv_keeps_the_line_split(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    assert read_events(_csv_config(), path).fallback is None

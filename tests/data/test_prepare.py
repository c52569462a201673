"""prepare(): the whole pipeline on small logs whose every count is known by construction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from shoprec import __version__, schema
from shoprec.cli import main
from shoprec.config import load_config
from shoprec.data import dataset
from shoprec.data.config import DataConfig
from shoprec.data.dataset import PreparedDataset
from shoprec.data.prepare import prepare
from shoprec.errors import DataError

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_inputs"

HEADER = "user_id,session_id,item_id,timestamp,event_type"
# Day 3 is test (last_days, test_days 1: cut-off 2024-01-02T12:00). s9 straddles the cut-off,
# s6-s8 are test sessions on items D/E unseen in train. One bad row, one exact duplicate.
ROWS = [
    "u1,s1,A,2024-01-01T10:00:00Z,view",
    "u1,s1,B,2024-01-01T10:01:00Z,view",
    "u1,s1,C,2024-01-01T10:02:00Z,view",
    "u1,s1,C,2024-01-01T10:02:00Z,view",  # exact duplicate
    "u2,s2,A,2024-01-01T11:00:00Z,view",
    "u2,s2,B,2024-01-01T11:01:00Z,view",
    "u1,s3,B,2024-01-01T12:00:00Z,view",
    "u1,s3,C,2024-01-01T12:05:00Z,view",
    "u3,s4,A,2024-01-02T09:00:00Z,view",
    "u3,s4,C,2024-01-02T09:01:00Z,view",
    "u3,s4,B,2024-01-02T09:02:00Z,view",
    "u2,s5,C,2024-01-02T10:00:00Z,view",
    "u5,s9,A,2024-01-02T11:50:00Z,view",
    "u5,s9,B,2024-01-02T12:10:00Z,view",  # after the cut-off: dropped from train
    "u1,s6,A,2024-01-03T10:00:00Z,view",
    "u1,s6,B,2024-01-03T10:01:00Z,view",
    "u1,s6,D,2024-01-03T10:02:00Z,view",
    "u4,s7,D,2024-01-03T11:00:00Z,view",
    "u4,s7,E,2024-01-03T11:01:00Z,view",
    "u2,s8,C,2024-01-03T11:59:00Z,view",
    "u2,s8,A,2024-01-03T12:00:00Z,purchase",
    "u2,s8,A,tomorrow,view",  # quarantined
]


def _config(**update: Any) -> DataConfig:
    data: dict[str, Any] = {
        "name": "tiny",
        "columns": {"user_id": "user_id", "session_id": "session_id", "item_id": "item_id"},
        "timestamp": {"column": "timestamp", "unit": "iso"},
        "event_type": {"column": "event_type"},
        "filters": {"min_item_support": 1, "min_session_length": 1},
        "split": {"kind": "last_days", "test_days": 1},
    }
    data.update(update)
    return DataConfig.model_validate(data)


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "\n" + "\n".join(ROWS) + "\n", encoding="utf-8")
    return path


def test_prepare_counts_and_layout(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = prepare(_config(), out, input_path=str(tiny), config_path=Path("tiny.yaml"))
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"], m["rows_duplicate"]) == (
        22,
        20,
        1,
        1,
    )
    assert m["quarantine_reasons"] == {"unparseable timestamp": 1}
    assert m["accepted"] == {"events": 20, "items": 5, "users": 5, "sessions": 9}
    assert m["event_types"] == {"purchase": 1, "view": 19}
    assert m["time_range"] == {
        "min": "2024-01-01T10:00:00+00:00",
        "max": "2024-01-03T12:00:00+00:00",
    }
    assert m["split"]["dropped_events"] == 1
    assert m["unseen_dropped"] == {"test": 3}
    assert m["train"]["events"] == 12 and m["train"]["sessions"] == 6
    assert m["train_prefixes"] == 6
    assert m["test"]["events"] == 4 and m["test"]["sessions"] == 2
    assert (m["test_cases"], m["valid_cases"], m["unscorable_targets"]) == (2, 0, 0)
    assert (m["items"], m["sessions"], m["users"], m["events"]) == (3, 8, 4, 16)
    assert m["config_path"] == "tiny.yaml" and m["config"]["name"] == "tiny"
    assert m["shoprec_version"] == __version__ and m["synthetic_timestamps"] is False
    src = m["sources"][0]
    assert (src["role"], src["path"], src["lines"], src["rows_read"]) == (
        "input",
        str(tiny),
        23,
        22,
    )
    assert len(src["sha256"]) == 64 and src["size"] == tiny.stat().st_size
    assert json.loads((out / dataset.MANIFEST).read_text())["rows_read"] == 22

    ds = PreparedDataset.open(out)
    assert ds.items.select(schema.ITEM_IDX, schema.ITEM_ID).rows() == [(1, "A"), (2, "B"), (3, "C")]
    train = pl.read_parquet(out / dataset.TRAIN)
    assert train.columns == [*schema.EVENT_SCHEMA, schema.ITEM_IDX]
    assert train.get_column(schema.TIMESTAMP).max() < datetime(2024, 1, 2, 12, tzinfo=UTC)
    test = pl.read_parquet(out / dataset.TEST)
    assert test.get_column(schema.TIMESTAMP).min() >= datetime(2024, 1, 2, 12, tzinfo=UTC)
    assert set(test.get_column(schema.ITEM_ID)) <= {"A", "B", "C"}
    cases = ds.cases("test")
    assert cases.select(
        schema.SESSION_ID, schema.PREFIX_IDS, schema.TARGET_ID, schema.TARGET_IDX
    ).rows() == [
        ("s6", ["A"], "B", 2),
        ("s8", ["C"], "A", 1),
    ]
    q = pl.read_parquet(out / dataset.QUARANTINE)
    assert q.select(schema.SOURCE_LINE, schema.REASON).rows() == [(23, "unparseable timestamp")]
    assert not (out / dataset.VALID).exists()


def test_valid_window_and_stale_files(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(split={"kind": "last_days", "test_days": 1, "valid_days": 1})
    m = prepare(cfg, out, input_path=str(tiny))
    assert (out / dataset.VALID).is_file() and (out / dataset.VALID_CASES).is_file()
    assert m["valid_cases"] == PreparedDataset.open(out).cases("valid").height
    prepare(_config(), out, input_path=str(tiny))  # no valid window now: old files must go
    assert not (out / dataset.VALID).exists() and not (out / dataset.VALID_CASES).exists()


def test_given_split(tmp_path: Path) -> None:
    train = tmp_path / "train.tsv"
    test = tmp_path / "test.tsv"
    train.write_text(
        "SessionId\tItemId\tTime\n1\t10\t1396437466.94\n1\t11\t1396437500\n"
        "2\t11\t1396437600\n2\t12\t1396437700\n",
        encoding="utf-8",
    )
    test.write_text(
        "SessionId\tItemId\tTime\n3\t10\t1396860669.277\n3\t99\t1396860670\n"
        "3\t12\t1396860671\n4\t11\t1396860700\n4\t98\t1396860701\n",
        encoding="utf-8",
    )
    cfg = load_config(DataConfig, REPO / "configs" / "data" / "yoochoose_session_rec.yaml")
    m = prepare(cfg, tmp_path / "out", input_path=str(train), test_input=str(test))
    assert m["split"]["kind"] == "given"
    assert (m["train"]["sessions"], m["train"]["events"], m["train_prefixes"]) == (2, 4, 2)
    assert m["unseen_dropped"] == {"test": 2}
    assert m["short_sessions_dropped"]["test"] == {"sessions": 1, "events": 1}
    assert (m["test"]["sessions"], m["test"]["events"], m["test_cases"]) == (1, 2, 1)
    assert [s["role"] for s in m["sources"]] == ["input", "test_input"]


def test_benchmark_split(tmp_path: Path) -> None:
    cfg = load_config(DataConfig, REPO / "configs" / "data" / "diginetica_srgnn.yaml")
    test = tmp_path / "test.tsv"
    test.write_text((BAD / "bad_test.tsv").read_text() + "1 77 2\t3\n", encoding="utf-8")
    out = tmp_path / "out"
    m = prepare(cfg, out, input_path=str(BAD / "train_sessions.txt"), test_input=str(test))
    assert m["synthetic_timestamps"] is True
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"]) == (12, 9, 3)
    assert m["quarantine_reasons"] == {
        "empty prefix": 1,
        "missing target": 1,
        "wrong number of fields (expected 2)": 1,
    }
    assert (m["items"], m["train_prefixes"], m["test_cases"]) == (6, 3, 3)
    assert (m["unscorable_targets"], m["prefix_items_removed"]) == (1, 1)
    cases = PreparedDataset.open(out).cases("test")
    assert cases.select(
        schema.PREFIX_IDX, schema.PREFIX_IDS, schema.TARGET_ID, schema.TARGET_IDX
    ).rows() == [
        ([1, 2, 3], ["1", "2", "3"], "4", 4),
        ([1, 2, 3], ["1", "2", "3"], "99", 0),
        ([1, 2], ["1", "77", "2"], "3", 3),
    ]
    assert cases.get_column(schema.CASE_ID).to_list() == [0, 1, 2]
    assert cases.schema == pl.Schema(schema.CASES_SCHEMA)
    train = PreparedDataset.open(out).train_sessions()
    assert [s.tolist() for s in train] == [[1, 2, 3], [4, 5], [6]]


def test_benchmark_chains_cases_into_test_sessions(tmp_path: Path) -> None:
    train = tmp_path / "train_sessions.txt"
    train.write_text("1 2 3 4\n", encoding="utf-8")
    test = tmp_path / "test.tsv"
    test.write_text("prefix\ttarget\n1 2 3\t4\n1 2\t3\n1\t2\n3\t1\n", encoding="utf-8")
    cfg = load_config(DataConfig, REPO / "configs" / "data" / "diginetica_srgnn.yaml")
    out = tmp_path / "out"
    prepare(cfg, out, input_path=str(train), test_input=str(test))
    cases = PreparedDataset.open(out).cases("test")
    assert cases.get_column(schema.SESSION_ID).to_list() == ["test:1"] * 3 + ["test:2"]
    events = pl.read_parquet(out / dataset.TEST)
    assert events.group_by(schema.SESSION_ID, maintain_order=True).agg(schema.ITEM_ID).rows() == [
        ("test:1", ["1", "2", "3", "4"]),
        ("test:2", ["3", "1"]),
    ]


def test_missing_inputs_are_clear_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no input"):
        prepare(_config(), tmp_path / "o")
    given = _config(split={"kind": "given"})
    with pytest.raises(DataError, match="needs a test file"):
        prepare(given, tmp_path / "o", input_path=str(tiny))
    with pytest.raises(DataError, match="--test-input only applies"):
        prepare(_config(), tmp_path / "o", input_path=str(tiny), test_input=str(tiny))


def test_cli_strict_and_lenient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)  # the preset's relative input resolves against the working dir
    preset = "tests/data/bad_inputs/bad_events.yaml"
    code = main(
        ["data", "prepare", "--config", preset, "--output", str(tmp_path / "s"), "--strict"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "shoprec: error: tests/data/bad_inputs/bad_events.csv:5: unparseable timestamp, "
        "column 'timestamp', value 'yesterday' (11 more bad row(s) after it) [--strict]"
    )
    assert main(["data", "prepare", "--config", preset, "--output", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "rows quarantined" in out and "unknown event type" in out
    assert pl.read_parquet(tmp_path / "l" / dataset.QUARANTINE).height == 12


def test_no_valid_row_is_an_error_with_the_quarantine_kept(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.csv"
    path.write_text(HEADER + "\nu1,s1,A,later,view\nu1,s1,A,never,view\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"none of its 2 rows is valid; most common: unparseable"):
        prepare(_config(), out, input_path=str(path))
    assert pl.read_parquet(out / dataset.QUARANTINE).height == 2
    assert not (out / dataset.MANIFEST).exists()

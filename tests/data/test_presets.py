"""Every preset in configs/data on its real file (../shared/data), with exact known counts.

The published numbers (README of ../shared/data) are asserted where they exist; the others are
what the files give, checked once by hand and pinned so any change in the pipeline shows up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from shoprec import schema
from shoprec.config import ConfigError, load_config
from shoprec.data import dataset
from shoprec.data.config import DataConfig
from shoprec.data.prepare import prepare

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "configs" / "data"
SHARED_PREFIX = Path("../shared/data")

Prepared = Callable[[str], dict[str, Any]]
# CDNOW totals computed independently: awk '{n+=$4; d+=$5} END {print n, d}' CDNOW_sample.txt
CDNOW_CDS = 16_479
CDNOW_DOLLARS = 244_091.94


def _load(name: str, overrides: list[str] | None = None) -> DataConfig:
    return load_config(DataConfig, PRESETS / f"{name}.yaml", overrides)


def _shared(shared_data: Path, preset_path: str | None) -> str:
    """A preset's ``../shared/data/...`` path, re-rooted at the shared_data fixture."""
    assert preset_path is not None
    return str(shared_data / Path(preset_path).relative_to(SHARED_PREFIX))


@pytest.fixture(scope="module")
def prepared(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Prepare a preset on its real file once per module; returns the manifest."""
    cache: dict[str, dict[str, Any]] = {}

    def run(name: str) -> dict[str, Any]:
        if name not in cache:
            cfg = _load(name)
            out = tmp_path_factory.mktemp(name)
            test_input = _shared(shared_data, cfg.test_input) if cfg.test_input else None
            manifest = prepare(
                cfg, out, input_path=_shared(shared_data, cfg.input), test_input=test_input
            )
            manifest["_dir"] = str(out)
            cache[name] = manifest
        return cache[name]

    return run


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads(path: Path) -> None:
    cfg = load_config(DataConfig, path)
    assert cfg.name == path.stem


def test_preset_inputs_are_relative_to_the_repo_root(shared_data: Path) -> None:
    for path in sorted(PRESETS.glob("*.yaml")):
        cfg = load_config(DataConfig, path)
        for given in (cfg.input, cfg.test_input):
            if given is None or not given.startswith(str(SHARED_PREFIX)):
                continue
            assert Path(_shared(shared_data, given)).is_file(), (path.name, given)


def test_a_preset_typo_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((PRESETS / "otto.yaml").read_text() + "\nfliters: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid config\n  fliters: unknown key"):
        load_config(DataConfig, bad)
    with pytest.raises(ConfigError, match="columns: \\['sku'\\] not mappable"):
        _load("otto", ["columns.sku=aid"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("timestamp.timezone=Mars/Olympus", "'Mars/Olympus' is not a known zone"),
        ("timestamp.unit=format", "needs timestamp.format"),
        ("read.separator=;;", "at most 1 character"),
        ("constants.item_id=x", "\\['item_id'\\] given in both 'columns' and 'constants'"),
        ("extra_columns.reason=type", "extra_columns: \\['reason'\\] clash"),
    ],
)
def test_preset_mistakes_fail_before_reading(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load("otto", [override])


def test_yoochoose_session_rec(prepared: Prepared) -> None:
    m = prepared("yoochoose_session_rec")
    assert (m["rows_read"], m["rows_accepted"], m["rows_duplicate"]) == (83_846, 83_845, 1)
    assert (m["train"]["sessions"], m["test"]["sessions"]) == (17_794, 3_416)
    assert (m["train"]["events"], m["test"]["events"]) == (70_277, 13_568)
    assert (m["items"], m["train_prefixes"], m["test_cases"]) == (2_933, 52_483, 10_152)
    assert m["unseen_dropped"] == {"test": 0}
    assert m["time_range"] == {
        "min": "2014-04-01T01:02:21.719000+00:00",
        "max": "2014-04-08T00:50:01.534000+00:00",
    }


def test_diginetica_views(prepared: Prepared) -> None:
    m = prepared("diginetica_views")
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"]) == (12_391, 12_391, 0)
    assert m["accepted"] == {"events": 12_391, "items": 7_139, "users": 1_270, "sessions": 2_986}
    assert m["time_range"] == {
        "min": "2016-01-03T00:00:07.112000+00:00",
        "max": "2016-06-01T00:18:44.305000+00:00",
    }
    # support >= 5 / length >= 2 leave little of this 12k-row sample
    assert m["filters"]["removed_events"] == 10_878
    assert (m["items"], m["train"]["sessions"], m["test"]["sessions"]) == (221, 380, 36)
    assert (m["train_prefixes"], m["test_cases"], m["unseen_dropped"]) == (996, 88, {"test": 11})


def test_diginetica_purchases(prepared: Prepared) -> None:
    m = prepared("diginetica_purchases")
    assert (m["rows_read"], m["rows_accepted"], m["rows_duplicate"]) == (18_025, 17_997, 28)
    assert m["accepted"] == {"events": 17_997, "items": 11_244, "users": 4_425, "sessions": 12_630}
    assert m["event_types"] == {"purchase": 17_997}
    train = pl.read_parquet(Path(m["_dir"]) / dataset.TRAIN)
    assert train.get_column("order_id").n_unique() == 13_506
    assert not (Path(m["_dir"]) / dataset.TEST).exists()  # split: none


def test_otto(prepared: Prepared) -> None:
    m = prepared("otto")
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"]) == (862, 862, 0)
    assert m["accepted"] == {"events": 862, "items": 510, "users": 0, "sessions": 20}
    assert m["event_types"] == {"cart": 52, "purchase": 10, "view": 800}
    assert m["time_range"] == {
        "min": "2022-07-31T22:00:00.025000+00:00",
        "max": "2022-08-28T21:59:57.885000+00:00",
    }
    assert (m["train"]["sessions"], m["test"]["sessions"], m["test_cases"]) == (10, 8, 10)


def test_cdnow(prepared: Prepared) -> None:
    m = prepared("cdnow")
    assert (m["rows_read"], m["rows_accepted"], m["rows_duplicate"]) == (6_919, 6_919, 0)
    assert m["accepted"]["users"] == 2_357
    assert m["accepted"]["items"] == 1  # the constant item "cd"
    assert m["time_range"] == {
        "min": "1997-01-01T00:00:00+00:00",
        "max": "1998-06-30T00:00:00+00:00",
    }
    train = pl.read_parquet(Path(m["_dir"]) / dataset.TRAIN)
    totals = train.select(pl.col(schema.QUANTITY).sum(), pl.col(schema.PRICE).sum().round(2))
    assert totals.row(0) == (CDNOW_CDS, CDNOW_DOLLARS)
    first = train.filter(pl.col(schema.USER_ID) == "0001").sort(schema.TIMESTAMP).row(0, named=True)
    assert (first[schema.QUANTITY], first[schema.PRICE], first[schema.EVENT_TYPE]) == (
        2,
        29.33,
        "purchase",
    )


def test_retailrocket_sample(tmp_path: Path) -> None:
    t0 = 1433221332117  # 2015-06-02 05:02:12.117 UTC, unix ms
    minute = 60_000
    rows = [
        (t0, 1, "view", "i1", ""),
        (t0 + 5 * minute, 1, "view", "i2", ""),
        (t0 + 6 * minute, 1, "addtocart", "i2", ""),
        (t0 + 7 * minute, 1, "transaction", "i2", "100"),
        (t0 + 120 * minute, 1, "view", "i3", ""),  # > 30 min later: a new session
        (t0, 2, "view", "i1", ""),
        (t0 + 10 * minute, 2, "view", "i3", ""),
        (t0 + 11 * minute, 2, "wishlist", "i3", ""),  # not in the strict mapping
    ]
    path = tmp_path / "events.csv"
    lines = ["timestamp,visitorid,event,itemid,transactionid"] + [
        ",".join(map(str, r)) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = _load(
        "retailrocket",
        ["filters.min_item_support=1", "filters.min_session_length=1", "split.kind=none"],
    )
    out = tmp_path / "out"
    m = prepare(cfg, out, input_path=str(path))
    assert (m["rows_read"], m["rows_accepted"], m["rows_quarantined"]) == (8, 7, 1)
    assert m["quarantine_reasons"] == {"unknown event type": 1}
    assert m["event_types"] == {"cart": 1, "purchase": 1, "view": 5}
    assert m["accepted"]["sessions"] == 3
    train = pl.read_parquet(out / dataset.TRAIN)
    sessions = train.group_by(schema.SESSION_ID, maintain_order=True).agg(
        schema.ITEM_ID, schema.EVENT_TYPE
    )
    assert sorted(sessions.get_column(schema.ITEM_ID).to_list()) == [
        ["i1", "i2", "i2", "i2"],
        ["i1", "i3"],
        ["i3"],
    ]
    bought = train.filter(pl.col(schema.EVENT_TYPE) == schema.PURCHASE)
    assert bought.select("order_id", schema.TIMESTAMP).rows()[0][0] == "100"
    assert str(train.get_column(schema.TIMESTAMP).min()) == "2015-06-02 05:02:12.117000+00:00"


@pytest.mark.slow
def test_diginetica_srgnn_split(prepared: Prepared) -> None:
    m = prepared("diginetica_srgnn")
    assert (m["train"]["sessions"], m["train"]["events"]) == (186_670, 906_140)
    assert (m["train_prefixes"], m["test_cases"], m["items"]) == (719_470, 60_858, 43_097)
    assert (m["unscorable_targets"], m["prefix_items_removed"]) == (0, 0)
    assert m["synthetic_timestamps"] is True
    cases = pl.read_parquet(Path(m["_dir"]) / dataset.TEST_CASES)
    first = cases.row(0, named=True)
    assert first[schema.PREFIX_IDS] == ["21553", "20071", "8762", "21566", "6381"]
    assert first[schema.TARGET_ID] == "21566"


@pytest.mark.slow
def test_yoochoose_srgnn_1_64_split(prepared: Prepared) -> None:
    m = prepared("yoochoose_srgnn_1_64")
    assert (m["train"]["sessions"], m["train"]["events"]) == (116_167, 486_026)
    assert (m["train_prefixes"], m["test_cases"], m["items"]) == (369_859, 55_898, 17_376)
    assert m["unscorable_targets"] == 412
    assert m["prefix_items_removed"] == 2_706
    cases = pl.read_parquet(Path(m["_dir"]) / dataset.TEST_CASES)
    unscorable = cases.filter(pl.col(schema.TARGET_IDX) == schema.PADDING_IDX)
    assert unscorable.height == 412
    assert unscorable.get_column(schema.TARGET_ID).n_unique() == 306
    # README: 369 items occur only in test (as a target or inside a prefix)
    known = set(pl.read_parquet(Path(m["_dir"]) / dataset.ITEMS).get_column(schema.ITEM_ID))
    in_test = set(cases.get_column(schema.TARGET_ID)) | set(
        cases.get_column(schema.PREFIX_IDS).explode().drop_nulls()
    )
    assert len(in_test - known) == 369

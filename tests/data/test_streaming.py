"""``prepare(..., streaming=True)``, the path for logs larger than memory, makes the same dataset.

The streaming path keeps wide rows on disk and only one bucket of whole sessions in memory at
a time (see ``experiments/2026-11-22-streaming.md`` for a 30M-event, 2.2 GB export prepared
under a 1.5 GB address-space limit that the in-memory path cannot meet). Here, on a small
messy export (shuffled rows, exact duplicates, bad rows, a bucket size of a few hundred
events so that sessions are spread over dozens of buckets), every output file and the
manifest must equal the in-memory path's, for given and derived session ids and for the
split and filter variants that take other branches. A few seconds in all.

What is *not* tested here: the memory bound itself. Under a hard limit (``RLIMIT_AS``) Python
and Polars' streaming engine alone take ~0.6 GB of address space, so an input larger than the
limit needs a ~1 GB file and a minute or more; that proof is the experiment's, not a unit
test's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import shoprec.data.prepare as prepare_module
from shoprec.config import load_config
from shoprec.data.config import DataConfig
from shoprec.data.prepare import prepare
from shoprec.data.synth import SynthConfig, write_synthetic
from tests.conftest import REPO_ROOT

PRESET = REPO_ROOT / "configs" / "data" / "synthetic.yaml"


@pytest.fixture(scope="module")
def messy_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic export, shuffled, with 300 exact duplicates and 4 bad rows."""
    root = tmp_path_factory.mktemp("streaming")
    csv = write_synthetic(SynthConfig(users=300, days=30, seed=11, n_items=400), root / "raw")
    header, *rows = csv.read_text(encoding="utf-8").splitlines()
    rng = random.Random(3)
    rows += rng.sample(rows, 300)
    broken = rows[5].split(",")
    broken[4] = "not a time"
    rows += ["only,two", "", "9,,,,2024-01-01T00:00:00Z,view,c1,1.0,", ",".join(broken)]
    rng.shuffle(rows)
    out = root / "messy.csv"
    out.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["sessions.use_given=false"],
        ["split.valid_days=0", "sessions.remove_consecutive_repeats=false"],
        ["split.kind=none", "filters.iterative=false", "filters.min_item_support=8"],
    ],
    ids=["given-ids", "derived-ids", "no-valid", "no-split"],
)
def test_streaming_prepare_makes_the_same_dataset(
    messy_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]
) -> None:
    config = load_config(
        DataConfig, PRESET, ["split.test_days=5", "split.valid_days=5", *overrides]
    )
    in_memory = prepare(config, tmp_path / "mem", input_path=str(messy_export))
    monkeypatch.setattr(prepare_module, "_BUCKET_ROWS", 400)  # dozens of buckets
    streamed = prepare(config, tmp_path / "stream", input_path=str(messy_export), streaming=True)

    assert in_memory["rows_duplicate"] >= 300 and in_memory["rows_quarantined"] == 4
    for key in ("created_at", "seconds"):
        in_memory.pop(key), streamed.pop(key)
    assert json.dumps(streamed, sort_keys=True) == json.dumps(in_memory, sort_keys=True)
    files = sorted(p.name for p in (tmp_path / "mem").iterdir())
    assert sorted(p.name for p in (tmp_path / "stream").iterdir()) == files  # no spill left
    for name in files:
        if name.endswith(".parquet"):
            assert_frame_equal(
                pl.read_parquet(tmp_path / "stream" / name),
                pl.read_parquet(tmp_path / "mem" / name),
            )

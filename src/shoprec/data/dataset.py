"""The prepared dataset on disk: what ``shoprec data prepare`` writes and every later step reads.

Layout of a prepared dataset folder ``DIR``::

    DIR/manifest.json        counts, time range, hashes, the config used (see ``prepare``)
    DIR/train.parquet        canonical events + ``item_idx``, sorted by session start, time
    DIR/valid.parquet        same columns (only when a validation window is configured)
    DIR/test.parquet         same columns; only items known to train
    DIR/items.parquet        item_idx (1..N, 0 = padding), item_id, count (train support),
                             category (when the source has one)
    DIR/valid_cases.parquet  next-item cases of the validation sessions (``schema.CASES_SCHEMA``)
    DIR/test_cases.parquet   next-item cases, one row per (prefix -> target), in test-file order
    DIR/quarantine.parquet   rejected rows with reason and source line (``QUARANTINE_SCHEMA``)

Everything is Parquet plus JSON so later steps never re-read the source export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.errors import ShoprecError

MANIFEST = "manifest.json"
TRAIN = "train.parquet"
VALID = "valid.parquet"
TEST = "test.parquet"
ITEMS = "items.parquet"
VALID_CASES = "valid_cases.parquet"
TEST_CASES = "test_cases.parquet"
QUARANTINE = "quarantine.parquet"


class DatasetError(ShoprecError, FileNotFoundError):
    """A prepared dataset folder that is missing or incomplete."""


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to a prepared dataset folder (lazy where it can be)."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> PreparedDataset:
        path = Path(root)
        for name in (MANIFEST, TRAIN, ITEMS):
            if not (path / name).is_file():
                raise DatasetError(
                    f"{path}: not a prepared dataset ({name} missing); "
                    "run `shoprec data prepare` first"
                )
        return cls(path)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        with open(self.root / MANIFEST, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data

    def events(self, split: str = "train") -> pl.LazyFrame:
        """Events of ``train``, ``valid`` or ``test`` as a LazyFrame."""
        return pl.scan_parquet(self.root / f"{split}.parquet")

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    @cached_property
    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / ITEMS).sort(schema.ITEM_IDX)

    @property
    def n_items(self) -> int:
        """Number of real items (indices 1..n_items; 0 is padding)."""
        return self.items.height

    def cases(self, split: str = "test") -> pl.DataFrame:
        """Next-item evaluation cases of ``test`` or ``valid``, in case order."""
        path = self.root / f"{split}_cases.parquet"
        if not path.is_file():
            raise DatasetError(f"{path}: no {split} cases in this dataset")
        return pl.read_parquet(path).sort(schema.CASE_ID)

    def item_ids(self) -> np.ndarray:
        """Original item id for each index; position 0 (padding) holds an empty string."""
        ids = self.items.get_column(schema.ITEM_ID).to_list()
        return np.array(["", *ids], dtype=object)

    def train_sessions(self) -> list[np.ndarray]:
        """Train sessions as arrays of item_idx, in session order (the order of train.parquet)."""
        return sessions_of(self.events("train"))


def sessions_of(events: pl.LazyFrame) -> list[np.ndarray]:
    """Group events (already sorted by session start, time) into arrays of ``item_idx``."""
    df = (
        events.select(schema.SESSION_ID, schema.ITEM_IDX)
        .with_row_index("_row")
        .group_by(schema.SESSION_ID, maintain_order=True)
        .agg(pl.col(schema.ITEM_IDX), pl.col("_row").min().alias("_first"))
        .sort("_first")
        .collect()
    )
    return [np.asarray(s, dtype=np.int64) for s in df.get_column(schema.ITEM_IDX).to_list()]

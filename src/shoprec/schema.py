"""The canonical event schema: column names and dtypes live here and nowhere else.

Every reader maps an export format onto these columns; every later step (sessionization,
splits, training, churn features, serving) reads them by these constants.
"""

from __future__ import annotations

from typing import Final

import polars as pl

# --- canonical event columns -------------------------------------------------------------
USER_ID: Final = "user_id"  # nullable: anonymous visitors
SESSION_ID: Final = "session_id"  # nullable in a source; derived by sessionization when absent
ITEM_ID: Final = "item_id"  # the store's own item id, kept as a string
TIMESTAMP: Final = "timestamp"  # UTC, microseconds
EVENT_TYPE: Final = "event_type"  # view, cart, purchase, or a mapped extra
CATEGORY: Final = "category"  # optional
PRICE: Final = "price"  # optional, >= 0
QUANTITY: Final = "quantity"  # optional, >= 1

# --- bookkeeping columns ---------------------------------------------------------------------
SOURCE_FILE: Final = "source_file"  # which input file a row came from
SOURCE_LINE: Final = "source_line"  # 1-based physical line in that file (header = line 1)
REASON: Final = "reason"  # why a row was quarantined
ITEM_IDX: Final = "item_idx"  # dense item index fitted on train; 0 is padding / unknown
ITEM_COUNT: Final = "count"  # train support of an item (items table)
CASE_ID: Final = "case_id"  # order of an evaluation case (test-file order)
PREFIX_IDX: Final = "prefix_idx"  # list of item_idx seen before the target
PREFIX_IDS: Final = "prefix_ids"  # the same prefix as original item ids
TARGET_IDX: Final = "target_idx"  # item_idx of the next item; 0 if unseen in train
TARGET_ID: Final = "target_id"  # original id of the next item

# --- event types -------------------------------------------------------------------------------
VIEW: Final = "view"
CART: Final = "cart"
PURCHASE: Final = "purchase"
CORE_EVENT_TYPES: Final = (VIEW, CART, PURCHASE)

PADDING_IDX: Final = 0

UTC_TIMESTAMP = pl.Datetime("us", "UTC")

# Required canonical columns and their dtypes, in output order.
EVENT_SCHEMA: Final[dict[str, pl.DataType]] = {
    USER_ID: pl.String(),
    SESSION_ID: pl.String(),
    ITEM_ID: pl.String(),
    TIMESTAMP: UTC_TIMESTAMP,
    EVENT_TYPE: pl.String(),
}
# Optional canonical columns: present in the output only when the source maps them.
OPTIONAL_SCHEMA: Final[dict[str, pl.DataType]] = {
    CATEGORY: pl.String(),
    PRICE: pl.Float64(),
    QUANTITY: pl.Int64(),
}
CANONICAL_COLUMNS: Final = (*EVENT_SCHEMA, *OPTIONAL_SCHEMA)

ITEMS_SCHEMA: Final[dict[str, pl.DataType]] = {
    ITEM_IDX: pl.Int32(),
    ITEM_ID: pl.String(),
    ITEM_COUNT: pl.Int64(),
}

CASES_SCHEMA: Final[dict[str, pl.DataType]] = {
    CASE_ID: pl.Int64(),
    SESSION_ID: pl.String(),
    PREFIX_IDX: pl.List(pl.Int32()),
    PREFIX_IDS: pl.List(pl.String()),
    TARGET_IDX: pl.Int32(),
    TARGET_ID: pl.String(),
}

QUARANTINE_SCHEMA: Final[dict[str, pl.DataType]] = {
    SOURCE_FILE: pl.String(),
    SOURCE_LINE: pl.Int64(),
    REASON: pl.String(),
    "column": pl.String(),
    "value": pl.String(),
    "raw": pl.String(),
}

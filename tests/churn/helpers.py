"""Helpers for the churn tests: hand-built canonical event frames and a small config."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from shoprec import schema
from shoprec.churn.config import ChurnConfig

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    """``T0`` + ``n`` days."""
    return T0 + timedelta(days=n)


def events(rows: Sequence[tuple[Any, ...]]) -> pl.DataFrame:
    """Canonical events from ``(user, day, event_type[, price, quantity, session, category])``.

    Missing trailing fields are null; the session defaults to ``user/day-as-int``.
    """
    cols: dict[str, list[Any]] = {c: [] for c in schema.CANONICAL_COLUMNS}
    for r in rows:
        user, d, et = r[0], r[1], r[2]
        price = r[3] if len(r) > 3 else None
        qty = r[4] if len(r) > 4 else None
        session = r[5] if len(r) > 5 else f"{user}/{int(d)}"
        cat = r[6] if len(r) > 6 else None
        cols[schema.USER_ID].append(user)
        cols[schema.SESSION_ID].append(session)
        cols[schema.ITEM_ID].append("i1")
        cols[schema.TIMESTAMP].append(day(d))
        cols[schema.EVENT_TYPE].append(et)
        cols[schema.CATEGORY].append(cat)
        cols[schema.PRICE].append(price)
        cols[schema.QUANTITY].append(qty)
    return pl.DataFrame(cols, schema={**schema.EVENT_SCHEMA, **schema.OPTIONAL_SCHEMA})


def small_config(**kw: Any) -> ChurnConfig:
    base: dict[str, Any] = {
        "horizon_days": 10,
        "train_cutoffs": [day(30)],
        "valid_cutoffs": [day(40)],
        "test_cutoffs": [day(50)],
    }
    base.update(kw)
    return ChurnConfig.model_validate(base)

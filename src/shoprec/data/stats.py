"""``shoprec data stats DIR``: a readable summary of a prepared dataset.

Everything but the top items comes from ``manifest.json``, so the summary is instant even for
a large dataset and always agrees with what ``prepare`` counted.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console, JustifyMethod
from rich.table import Table

from shoprec import schema
from shoprec.data.dataset import PreparedDataset

__all__ = ["print_stats", "stats_tables", "top_items"]

TOP_ITEMS = 10


def _when(value: Any) -> str:
    """An ISO timestamp from the manifest, shortened to the minute for the table."""
    if not isinstance(value, str):
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))


def stats_tables(root: Path) -> list[Table]:
    """The summary as rich tables (separate from printing, so tests can render them)."""
    ds = PreparedDataset.open(root)
    m = ds.manifest
    tables: list[Table] = []

    overview = Table(title=f"{m.get('name', root)}  ({root})", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value", justify="right")
    accepted = m.get("accepted", {})
    time_range = m.get("time_range", {})
    rows = [
        ("rows read", m.get("rows_read")),
        ("rows accepted", m.get("rows_accepted")),
        ("rows quarantined", m.get("rows_quarantined")),
        ("exact duplicates removed", m.get("rows_duplicate")),
        ("accepted sessions", accepted.get("sessions")),
        ("accepted items", accepted.get("items")),
        ("accepted users", accepted.get("users")),
        ("first event", _when(time_range.get("min"))),
        ("last event", _when(time_range.get("max"))),
        ("items in the index (train)", m.get("items")),
        ("train prefixes", m.get("train_prefixes")),
        ("test cases", m.get("test_cases")),
        ("unscorable test targets", m.get("unscorable_targets")),
    ]
    if m.get("synthetic_timestamps"):
        rows.append(("timestamps", "synthetic (benchmark split)"))
    for label, value in rows:
        overview.add_row(label, _n(value))
    tables.append(overview)

    parts = Table(title="split (train cases = prefixes)")
    for col in ("part", "sessions", "events", "cases", "from", "to"):
        justify: JustifyMethod = "left" if col in ("part", "from", "to") else "right"
        parts.add_column(col, justify=justify, no_wrap=True)
    for name in ("train", "valid", "test"):
        p = m.get(name)
        if not isinstance(p, dict):
            continue
        span = p.get("time_range", {})
        parts.add_row(
            name,
            _n(p.get("sessions")),
            _n(p.get("events")),
            _n(p.get("cases", p.get("prefixes"))),
            _when(span.get("min")),
            _when(span.get("max")),
        )
    tables.append(parts)

    dropped = Table(title="events removed after validation")
    dropped.add_column("step")
    dropped.add_column("events", justify="right")
    filters = m.get("filters", {})
    dropped.add_row("support/length filters", _n(filters.get("removed_events")))
    dropped.add_row("split: straddling sessions", _n(m.get("split", {}).get("dropped_events")))
    for part, n in m.get("unseen_dropped", {}).items():
        dropped.add_row(f"{part}: items unseen in train", _n(n))
    for part, d in m.get("short_sessions_dropped", {}).items():
        dropped.add_row(f"{part}: sessions too short", _n(d.get("events")))
    if "prefix_items_removed" in m:
        dropped.add_row("test prefixes: items unseen in train", _n(m["prefix_items_removed"]))
    tables.append(dropped)

    kinds = Table(title="event types")
    kinds.add_column("event_type")
    kinds.add_column("events", justify="right")
    for kind, n in m.get("event_types", {}).items():
        kinds.add_row(kind, _n(n))
    tables.append(kinds)

    reasons = m.get("quarantine_reasons", {})
    if reasons:
        q = Table(title="quarantine reasons")
        q.add_column("reason")
        q.add_column("rows", justify="right")
        for reason, n in reasons.items():
            q.add_row(reason, _n(n))
        tables.append(q)

    top = top_items(root)
    t = Table(title=f"top {TOP_ITEMS} train items")
    for col in top.columns:
        t.add_column(col, justify="right" if top.schema[col].is_numeric() else "left")
    for row in top.iter_rows():
        t.add_row(*[_n(v) for v in row])
    tables.append(t)
    return tables


def print_stats(root: Path, console: Console | None = None) -> None:
    """Print the summary tables of the prepared dataset at ``root``."""
    console = console or Console()
    for table in stats_tables(Path(root)):
        console.print(table)


def top_items(root: Path, n: int = TOP_ITEMS) -> pl.DataFrame:
    """The ``n`` most frequent train items (item_idx, item_id, count)."""
    items = PreparedDataset.open(root).items
    return items.sort(schema.ITEM_COUNT, descending=True, maintain_order=True).head(n)

"""Embedded default store: one sqlite file in WAL mode with ``synchronous=FULL``.

Why these settings: WAL lets readers (recently viewed, session history) run while a writer
commits, and ``synchronous=FULL`` fsyncs the WAL on every commit, so an event batch whose
acknowledgement the service sent survives ``kill -9`` and a power cut (sqlite.org/wal.html,
"synchronous"). One transaction per batch keeps the fsync cost per batch, not per event.

Tables::

    events     one row per distinct event key (the de-duplication table), indexed by
               session and by user: session histories and churn histories
    recent     (shopper, item) -> latest view time: "recently viewed" is an index range scan
    purchased  (shopper, item)

Each thread gets its own connection (sqlite connections are not shared across threads);
several service workers may open the same file, sqlite's locking serialises their writers.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from shoprec.schema import PURCHASE, VIEW
from shoprec.store.base import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreOptions,
    StoreUnavailable,
    cutoff_micros,
    from_micros,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_key  TEXT PRIMARY KEY,
    user_id    TEXT,
    session_id TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    event_id   TEXT,
    category   TEXT,
    price      REAL,
    quantity   INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, ts);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts) WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS recent (
    shopper   TEXT NOT NULL,
    item_id   TEXT NOT NULL,
    viewed_at INTEGER NOT NULL,
    PRIMARY KEY (shopper, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_by_time ON recent (shopper, viewed_at DESC, item_id DESC);
CREATE TABLE IF NOT EXISTS purchased (
    shopper TEXT NOT NULL,
    item_id TEXT NOT NULL,
    PRIMARY KEY (shopper, item_id)
) WITHOUT ROWID;
"""

_INSERT_EVENT = """
INSERT OR IGNORE INTO events
    (event_key, user_id, session_id, item_id, event_type, ts, event_id, category, price, quantity)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPSERT_RECENT = """
INSERT INTO recent (shopper, item_id, viewed_at) VALUES (?, ?, ?)
ON CONFLICT (shopper, item_id) DO UPDATE SET viewed_at = max(viewed_at, excluded.viewed_at)
"""
_INSERT_PURCHASED = "INSERT OR IGNORE INTO purchased (shopper, item_id) VALUES (?, ?)"


F = TypeVar("F", bound=Callable[..., Any])


def _unavailable_on_sqlite_errors(method: F) -> F:
    """Turn sqlite's OperationalError (locked past busy_timeout, disk I/O, disk full) into
    :class:`StoreUnavailable`; programming errors still surface as themselves."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"sqlite store unavailable: {exc}") from exc

    return cast(F, wrapper)


class SqliteStore(EventStore):
    """:class:`EventStore` over one sqlite file; survives restarts and ``kill -9``."""

    def __init__(
        self, path: str | Path, options: StoreOptions | None = None, busy_timeout_s: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.options = options or StoreOptions()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)  # runs in its own transaction

    # --- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one commit.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _write(self) -> _Transaction:
        return _Transaction(self._conn())

    # --- writes -------------------------------------------------------------------------------
    @_unavailable_on_sqlite_errors
    def add_events(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        accepted = duplicates = 0
        with self._write() as conn:
            for e in events:
                ts = e.micros
                cur = conn.execute(
                    _INSERT_EVENT,
                    (
                        e.key,
                        e.user_id,
                        e.session_id,
                        e.item_id,
                        e.event_type,
                        ts,
                        e.event_id,
                        e.category,
                        e.price,
                        e.quantity,
                    ),
                )
                if cur.rowcount == 0:
                    duplicates += 1
                    continue
                accepted += 1
                shoppers = [s.key for s in e.shoppers()]
                if e.event_type == VIEW:
                    conn.executemany(_UPSERT_RECENT, [(s, e.item_id, ts) for s in shoppers])
                elif e.event_type == PURCHASE:
                    conn.executemany(_INSERT_PURCHASED, [(s, e.item_id) for s in shoppers])
        return accepted, duplicates

    # --- reads --------------------------------------------------------------------------------
    @_unavailable_on_sqlite_errors
    def recently_viewed(
        self,
        shopper: Shopper,
        limit: int = 20,
        *,
        exclude_purchased: bool = False,
        max_age: timedelta | None = None,
        now: datetime | None = None,
    ) -> list[tuple[str, datetime]]:
        cutoff = cutoff_micros(max_age, now)
        sql = "SELECT item_id, viewed_at FROM recent WHERE shopper = ?"
        args: list[object] = [shopper.key]
        if cutoff is not None:
            sql += " AND viewed_at >= ?"
            args.append(cutoff)
        if exclude_purchased:
            sql += " AND item_id NOT IN (SELECT item_id FROM purchased WHERE shopper = ?)"
            args.append(shopper.key)
        sql += " ORDER BY viewed_at DESC, item_id DESC LIMIT ?"
        args.append(limit)
        rows = self._conn().execute(sql, args).fetchall()
        return [(item, from_micros(ts)) for item, ts in rows]

    @_unavailable_on_sqlite_errors
    def session_items(self, session_id: str, limit: int | None = None) -> list[str]:
        rows = self._conn().execute(
            "SELECT item_id FROM events WHERE session_id = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
            (session_id, -1 if limit is None else limit),
        )
        return [item for (item,) in rows.fetchall()][::-1]

    @_unavailable_on_sqlite_errors
    def purchased(self, shopper: Shopper) -> set[str]:
        rows = self._conn().execute(
            "SELECT item_id FROM purchased WHERE shopper = ?", (shopper.key,)
        )
        return {item for (item,) in rows.fetchall()}

    @_unavailable_on_sqlite_errors
    def events_of(self, user_id: str) -> list[StoredEvent]:
        rows = self._conn().execute(
            "SELECT session_id, item_id, event_type, ts, user_id, event_id, category, price,"
            " quantity FROM events WHERE user_id = ? ORDER BY ts, rowid",
            (user_id,),
        )
        return [
            StoredEvent(s, i, t, from_micros(ts), u, eid, cat, price, qty)
            for s, i, t, ts, u, eid, cat, price, qty in rows.fetchall()
        ]

    @_unavailable_on_sqlite_errors
    def count(self) -> int:
        (n,) = self._conn().execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on one connection.

    IMMEDIATE takes the write lock up front, so two writers wait on ``busy_timeout`` instead of
    failing half-way with SQLITE_BUSY on lock upgrade.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

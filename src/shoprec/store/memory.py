"""In-process store (``memory://``): the reference semantics, for tests and throwaway demos.

Nothing survives the process; use sqlite (the default) or Redis for anything real.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from shoprec.schema import PURCHASE, VIEW
from shoprec.store.base import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreOptions,
    cutoff_micros,
    from_micros,
)


class MemoryStore(EventStore):
    """Dicts behind one lock; the simplest correct implementation of :class:`EventStore`."""

    def __init__(self, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._recent: dict[str, dict[str, int]] = defaultdict(dict)  # shopper -> item -> µs
        self._bought: dict[str, set[str]] = defaultdict(set)
        self._sessions: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        self._users: dict[str, list[tuple[int, int, StoredEvent]]] = defaultdict(list)
        self._seq = 0

    def add_events(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        accepted = duplicates = 0
        with self._lock:
            for e in events:
                if e.key in self._keys:
                    duplicates += 1
                    continue
                self._keys.add(e.key)
                accepted += 1
                self._seq += 1
                ts = e.micros
                for shopper in e.shoppers():
                    if e.event_type == VIEW:
                        seen = self._recent[shopper.key]
                        seen[e.item_id] = max(ts, seen.get(e.item_id, ts))
                    elif e.event_type == PURCHASE:
                        self._bought[shopper.key].add(e.item_id)
                self._sessions[e.session_id].append((ts, self._seq, e.item_id))
                if e.user_id is not None:
                    self._users[e.user_id].append((ts, self._seq, e))
        return accepted, duplicates

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
        with self._lock:
            seen = dict(self._recent.get(shopper.key, {}))
            bought = set(self._bought.get(shopper.key, ())) if exclude_purchased else set()
        # Newest first; ties by item id descending, the order Redis' ZREVRANGE gives.
        rows = sorted(((ts, item) for item, ts in seen.items() if item not in bought), reverse=True)
        if cutoff is not None:
            rows = [r for r in rows if r[0] >= cutoff]
        return [(item, from_micros(ts)) for ts, item in rows[:limit]]

    def session_items(self, session_id: str, limit: int | None = None) -> list[str]:
        with self._lock:
            rows = sorted(self._sessions.get(session_id, []))
        items = [item for _, _, item in rows]
        return items[-limit:] if limit else items

    def purchased(self, shopper: Shopper) -> set[str]:
        with self._lock:
            return set(self._bought.get(shopper.key, ()))

    def events_of(self, user_id: str) -> list[StoredEvent]:
        with self._lock:
            rows = sorted(self._users.get(user_id, []), key=lambda r: (r[0], r[1]))
        return [e for _, _, e in rows]

    def count(self) -> int:
        with self._lock:
            return len(self._keys)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass

"""The event store interface: what the storefront service remembers between requests.

The service needs four answers from live traffic, each in well under a millisecond:

* what a shopper (a signed-in user, or an anonymous session) viewed recently, newest first;
* the items of the current session, oldest first (the next-item model's input);
* what a shopper bought (so we stop recommending it);
* the full event history of one user (the churn model's input).

Every backend answers the same questions with the same semantics, and ``add_events`` returns
only after the write is durable *for that backend* (sqlite: fsync of the WAL; Redis: the
server's acknowledgement, as durable as that server's persistence settings). Events are
idempotent: each has a key (the client's ``event_id``, else a hash of its content), and a key
seen before is counted as a duplicate and changes nothing, so a client may retry a batch whose
acknowledgement it never received.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import polars as pl

from shoprec import schema
from shoprec.errors import ShoprecError

__all__ = [
    "EventStore",
    "Shopper",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "StoredEvent",
    "events_to_frame",
    "from_micros",
    "to_micros",
]


class StoreError(ShoprecError, ValueError):
    """A store URL or option that cannot be used; the message names the bad part."""


class StoreUnavailable(ShoprecError):
    """The backend cannot be reached or is locked past its timeout; retrying later may work.

    Backends raise this instead of their driver's errors so the service can answer 503 with a
    clear message, without knowing which backend it runs on.
    """


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(ts: datetime) -> int:
    """UTC microseconds since the epoch; a naive datetime is taken to be UTC already.

    >>> to_micros(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    1000000
    >>> to_micros(datetime(1970, 1, 1, 0, 0, 1))
    1000000
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    """Inverse of :func:`to_micros` (always timezone-aware UTC).

    >>> from_micros(1_000_000).isoformat()
    '1970-01-01T00:00:01+00:00'
    """
    return _EPOCH + timedelta(microseconds=int(us))


@dataclass(frozen=True, slots=True)
class Shopper:
    """Whose history a question is about: a signed-in user or an anonymous session.

    Both kinds share one key space in the backends (``u:<id>`` / ``s:<id>``) so that an
    anonymous visitor gets the same "recently viewed" rail as a signed-in one.

    >>> Shopper.user("alice").key, Shopper.session("abc").key
    ('u:alice', 's:abc')
    """

    kind: Literal["user", "session"]
    id: str

    @classmethod
    def user(cls, user_id: str) -> Shopper:
        return cls("user", user_id)

    @classmethod
    def session(cls, session_id: str) -> Shopper:
        return cls("session", session_id)

    @property
    def key(self) -> str:
        return ("u:" if self.kind == "user" else "s:") + self.id


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One storefront event as the store keeps it (canonical names from :mod:`shoprec.schema`).

    ``category``, ``price`` and ``quantity`` are optional; they are kept because the churn
    features use them (spend, breadth of categories).
    """

    session_id: str
    item_id: str
    event_type: str
    timestamp: datetime
    user_id: str | None = None
    event_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None

    @property
    def key(self) -> str:
        """The de-duplication key: the client's event id, else a hash of the content.

        Hashing the content makes a retried event without an id idempotent too: the same
        shopper, item, type and microsecond twice is the same event.
        """
        if self.event_id is not None:
            return "id:" + self.event_id
        raw = "\x1f".join(
            (
                self.user_id or "",
                self.session_id,
                self.item_id,
                self.event_type,
                str(to_micros(self.timestamp)),
            )
        )
        return "h:" + hashlib.blake2b(raw.encode("utf-8"), digest_size=16).hexdigest()

    @property
    def micros(self) -> int:
        return to_micros(self.timestamp)

    def shoppers(self) -> list[Shopper]:
        """The histories this event belongs to: its session, and its user when signed in."""
        out = [Shopper.session(self.session_id)]
        if self.user_id is not None:
            out.append(Shopper.user(self.user_id))
        return out


@dataclass(frozen=True)
class StoreOptions:
    """Retention limits. Redis enforces them on write; sqlite keeps everything (one node's disk).

    ``recent_cap``: items kept per shopper in "recently viewed"; ``recent_ttl``: a shopper's
    recently-viewed list expires this long after its last view; ``session_cap``: items kept per
    session history; ``user_events_cap``: events kept per user for churn; ``dedup_ttl``: how
    long an event key is remembered for de-duplication (Redis; sqlite remembers forever).
    """

    recent_cap: int = 100
    recent_ttl: timedelta = timedelta(days=30)
    session_cap: int = 200
    user_events_cap: int = 5000
    dedup_ttl: timedelta = timedelta(days=7)


class EventStore(ABC):
    """Recently viewed items, session histories, purchases and per-user events."""

    options: StoreOptions

    @abstractmethod
    def add_events(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        """Store ``events``; return ``(accepted, duplicates)`` once the write is durable.

        A duplicate is an event whose key was stored before (or earlier in the same batch).
        """

    @abstractmethod
    def recently_viewed(
        self,
        shopper: Shopper,
        limit: int = 20,
        *,
        exclude_purchased: bool = False,
        max_age: timedelta | None = None,
        now: datetime | None = None,
    ) -> list[tuple[str, datetime]]:
        """Distinct viewed items with their latest view time, newest first, at most ``limit``.

        ``exclude_purchased`` drops items this shopper bought; ``max_age`` drops views older
        than ``now - max_age`` (``now`` defaults to the wall clock).
        """

    @abstractmethod
    def session_items(self, session_id: str, limit: int | None = None) -> list[str]:
        """Item ids of every event of the session in time order (oldest first), repeats kept;
        the last ``limit`` when given (Redis keeps at most ``options.session_cap``)."""

    @abstractmethod
    def purchased(self, shopper: Shopper) -> set[str]:
        """Item ids this shopper bought."""

    @abstractmethod
    def events_of(self, user_id: str) -> list[StoredEvent]:
        """Every stored event of a signed-in user, in time order (the churn model's input)."""

    @abstractmethod
    def count(self) -> int:
        """Number of distinct events accepted so far."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the backend answers (used by the service's readiness probe)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cutoff_micros(max_age: timedelta | None, now: datetime | None) -> int | None:
    """The oldest view time (µs) still inside ``max_age`` of ``now``; ``None`` for no limit."""
    if max_age is None:
        return None
    return to_micros(now or datetime.now(UTC)) - int(max_age / timedelta(microseconds=1))


def events_to_frame(events: Sequence[StoredEvent]) -> pl.DataFrame:
    """Canonical event frame (required + optional columns of :mod:`shoprec.schema`).

    >>> e = StoredEvent("s1", "i1", "view", datetime(2026, 1, 1, tzinfo=UTC), user_id="u1")
    >>> events_to_frame([e]).columns
    ['user_id', 'session_id', 'item_id', 'timestamp', 'event_type', 'category', 'price', 'quantity']
    """
    return pl.DataFrame(
        {
            schema.USER_ID: [e.user_id for e in events],
            schema.SESSION_ID: [e.session_id for e in events],
            schema.ITEM_ID: [e.item_id for e in events],
            schema.TIMESTAMP: [e.micros for e in events],
            schema.EVENT_TYPE: [e.event_type for e in events],
            schema.CATEGORY: [e.category for e in events],
            schema.PRICE: [e.price for e in events],
            schema.QUANTITY: [e.quantity for e in events],
        },
        schema={**schema.EVENT_SCHEMA, schema.TIMESTAMP: pl.Int64(), **schema.OPTIONAL_SCHEMA},
    ).with_columns(pl.col(schema.TIMESTAMP).cast(schema.UTC_TIMESTAMP))

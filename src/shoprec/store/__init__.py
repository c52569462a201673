"""Shopper state for the storefront service, behind one interface (:class:`EventStore`).

``open_store(url)`` picks the backend from a URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` — the embedded default:
  one file, survives restarts and ``kill -9``; one node (several workers may share it).
* ``redis://host:port/db[?prefix=shoprec:]`` — shared state for several replicas.
* ``memory://`` — in-process, for tests.

The Redis backend is imported only when asked for, so the default needs no Redis client.
"""

from __future__ import annotations

from shoprec.store.base import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    events_to_frame,
)

__all__ = [
    "EventStore",
    "Shopper",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "StoredEvent",
    "events_to_frame",
    "open_store",
]


def open_store(url: str, options: StoreOptions | None = None) -> EventStore:
    """Open the store a URL names (see the module docstring for the forms).

    >>> open_store("memory://").count()
    0
    >>> open_store("ftp://x")
    Traceback (most recent call last):
    ...
    shoprec.store.base.StoreError: unknown store URL 'ftp://x': use sqlite:///PATH, redis://HOST:PORT/DB or memory://
    """  # noqa: E501
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"store URL {url!r} has no scheme: use sqlite:///PATH or redis://...")
    if scheme == "memory":
        from shoprec.store.memory import MemoryStore

        return MemoryStore(options)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"sqlite URL {url!r} must look like sqlite:///path/to/file.db")
        from shoprec.store.sqlite import SqliteStore

        return SqliteStore(rest[1:], options)
    if scheme in ("redis", "rediss", "unix"):
        from shoprec.store.redis import RedisStore

        return RedisStore.from_url(url, options)
    raise StoreError(
        f"unknown store URL {url!r}: use sqlite:///PATH, redis://HOST:PORT/DB or memory://"
    )

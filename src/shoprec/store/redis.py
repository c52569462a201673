"""Redis store: the backend for several service replicas sharing one shopper state.

Keys (all under a configurable prefix, default ``shoprec:``)::

    rv:<shopper>      sorted set item -> latest view time (µs): ZADD GT keeps the newest view,
                      ZREMRANGEBYRANK caps it, EXPIRE gives it a TTL (the usual storefront
                      "recently viewed" structure; re-viewing an item moves it to the front)
    bought:<shopper>  set of purchased items (same TTL as rv)
    sess:<session>    sorted set of the session's events, score = time, member =
                      16-digit time + 12-hex event hash + item id (so repeats are kept), capped
    ev:<user>         list of the user's events as JSON, capped (the churn input)
    seen:<event key>  SET NX EX marker: the de-duplication record
    count             number of accepted events

Each event is written by one Lua script, which Redis runs atomically: the de-duplication marker
and the data appear together or not at all, so a crash between them cannot turn a retried event
into a lost "duplicate". A batch is one pipelined round trip. Durability is the server's:
``add_events`` returns after Redis acknowledged every write; with ``appendfsync always`` that is
on disk, with the default settings it is in memory only (the Redis on this machine keeps
nothing on disk). Single instance or primary only: the keys of one event span hash slots.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from shoprec.schema import PURCHASE, VIEW
from shoprec.store.base import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    cutoff_micros,
    from_micros,
)

# KEYS: seen, sess, count, rv(session), bought(session), rv(user), bought(user), ev(user)
# ARGV: ts, item, kind ("v" view, "p" purchase, "-" other), sess_member, dedup_ttl_s, rv_cap,
#       rv_ttl_s, sess_cap, has_user ("1"/"0"), event_json, ev_cap
_ADD_EVENT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[5]) then
  return 0
end
local ts = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], ts, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[8]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('INCR', KEYS[3])
local last = 5
if ARGV[9] == '1' then last = 7 end
for i = 4, last, 2 do
  if ARGV[3] == 'v' then
    redis.call('ZADD', KEYS[i], 'GT', ts, ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[6]) - 1)
    redis.call('EXPIRE', KEYS[i], ARGV[7])
  elseif ARGV[3] == 'p' then
    redis.call('SADD', KEYS[i + 1], ARGV[2])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[7])
  end
end
if ARGV[9] == '1' then
  redis.call('RPUSH', KEYS[8], ARGV[10])
  redis.call('LTRIM', KEYS[8], -tonumber(ARGV[11]), -1)
end
return 1
"""

_KIND = {VIEW: "v", PURCHASE: "p"}
F = TypeVar("F", bound=Callable[..., Any])


def _unavailable_on_redis_errors(method: F) -> F:
    """Turn a connection or timeout error of redis-py into :class:`StoreUnavailable`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store unavailable: {exc}") from exc

    return cast(F, wrapper)


_MEMBER_PREFIX = 16 + 12  # zero-padded µs + event hash, then the item id


def _seconds(td: timedelta) -> int:
    return max(1, int(td.total_seconds()))


class RedisStore(EventStore):
    """:class:`EventStore` on a Redis server (one instance or a primary)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "shoprec:",
        options: StoreOptions | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.options = options or StoreOptions()
        self._add = client.register_script(_ADD_EVENT)

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> RedisStore:
        """``redis://host:port/db[?prefix=shoprec:]``; other query options go to redis-py."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("prefix", "shoprec:")
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            client = redis.Redis.from_url(
                clean, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
            )
        except ValueError as exc:
            raise StoreError(f"bad Redis URL {url!r}: {exc}") from exc
        return cls(client, prefix=prefix, options=options)

    # --- keys ---------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # --- writes -------------------------------------------------------------------------------
    @_unavailable_on_redis_errors
    def add_events(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        if not events:
            return 0, 0
        o = self.options
        pipe = self.client.pipeline(transaction=False)
        for e in events:
            key = e.key
            ts = e.micros
            tag = hashlib.blake2b(key.encode("utf-8"), digest_size=6).hexdigest()
            member = f"{ts:016d}{tag}{e.item_id}"
            user = e.user_id
            has_user = user is not None
            session = Shopper.session(e.session_id).key
            # Without a user the script ignores the user keys; "-" only keeps KEYS' positions.
            shopper = Shopper.user(user).key if user is not None else "-"
            keys = [
                self._k("seen", key),
                self._k("sess", e.session_id),
                self._k("count"),
                self._k("rv", session),
                self._k("bought", session),
                self._k("rv", shopper),
                self._k("bought", shopper),
                self._k("ev", user if user is not None else "-"),
            ]
            payload = json.dumps(
                [
                    e.session_id,
                    e.item_id,
                    e.event_type,
                    ts,
                    user,
                    e.event_id,
                    e.category,
                    e.price,
                    e.quantity,
                ],
                ensure_ascii=False,
            )
            args: list[Any] = [
                ts,
                e.item_id,
                _KIND.get(e.event_type, "-"),
                member,
                _seconds(o.dedup_ttl),
                o.recent_cap,
                _seconds(o.recent_ttl),
                o.session_cap,
                "1" if has_user else "0",
                payload,
                o.user_events_cap,
            ]
            self._add(keys=keys, args=args, client=pipe)
        results = pipe.execute()
        accepted = sum(int(r) for r in results)
        return accepted, len(events) - accepted

    # --- reads --------------------------------------------------------------------------------
    @_unavailable_on_redis_errors
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
        pipe = self.client.pipeline(transaction=False)
        # The set is capped at recent_cap, so reading all of it (within max_age) is bounded and
        # leaves enough rows after dropping purchased items.
        pipe.zrevrangebyscore(
            self._k("rv", shopper.key),
            "+inf",
            "-inf" if cutoff is None else cutoff,
            withscores=True,
        )
        if exclude_purchased:
            pipe.smembers(self._k("bought", shopper.key))
        res = pipe.execute()
        rows: list[tuple[str, float]] = res[0]
        bought: set[str] = {str(b) for b in res[1]} if exclude_purchased else set()
        out = [(item, from_micros(int(ts))) for item, ts in rows if item not in bought]
        return out[:limit]

    @_unavailable_on_redis_errors
    def session_items(self, session_id: str, limit: int | None = None) -> list[str]:
        start = 0 if limit is None else -limit
        members = self.client.zrange(self._k("sess", session_id), start, -1)
        return [str(m)[_MEMBER_PREFIX:] for m in members]

    @_unavailable_on_redis_errors
    def purchased(self, shopper: Shopper) -> set[str]:
        return {str(m) for m in self.client.smembers(self._k("bought", shopper.key))}

    @_unavailable_on_redis_errors
    def events_of(self, user_id: str) -> list[StoredEvent]:
        rows = [json.loads(r) for r in self.client.lrange(self._k("ev", user_id), 0, -1)]
        rows.sort(key=lambda r: r[3])  # stable: arrival order breaks ties in time
        return [
            StoredEvent(s, i, t, from_micros(ts), u, eid, cat, price, qty)
            for s, i, t, ts, u, eid, cat, price, qty in rows
        ]

    @_unavailable_on_redis_errors
    def count(self) -> int:
        return int(self.client.get(self._k("count")) or 0)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()

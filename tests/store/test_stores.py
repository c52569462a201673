"""Every EventStore backend answers the same questions the same way.

The in-memory store is the reference; sqlite and Redis are checked against hand-written
expectations and, with hypothesis, against the reference on random event streams.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoprec.store import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    open_store,
)
from shoprec.store.memory import MemoryStore
from shoprec.store.sqlite import SqliteStore
from tests.conftest import require

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def open_redis(options: StoreOptions | None = None) -> EventStore:
    """A Redis store under a fresh key prefix, so parallel runs never see each other's keys."""
    require(redis_up(), "Redis is not reachable at 127.0.0.1:6379")
    return open_store(f"{REDIS_URL}?prefix=test-{uuid.uuid4().hex}:", options)


def drop_redis_keys(store: EventStore) -> None:
    from shoprec.store.redis import RedisStore

    assert isinstance(store, RedisStore)
    keys = list(store.client.scan_iter(match=store.prefix + "*", count=1000))
    if keys:
        store.client.delete(*keys)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    kind = request.param
    if kind == "memory":
        s: EventStore = open_store("memory://")
    elif kind == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/events.db")
    else:
        s = open_redis()
    yield s
    if kind == "redis":
        drop_redis_keys(s)
    s.close()


def ev(
    item: str,
    minute: float,
    kind: str = "view",
    *,
    session: str = "s1",
    user: str | None = "u1",
    event_id: str | None = None,
) -> StoredEvent:
    return StoredEvent(
        session_id=session,
        item_id=item,
        event_type=kind,
        timestamp=T0 + timedelta(minutes=minute),
        user_id=user,
        event_id=event_id,
    )


def items(rows: list[tuple[str, datetime]]) -> list[str]:
    return [item for item, _ in rows]


# --- de-duplication ----------------------------------------------------------------------------
def test_duplicate_event_ids_are_counted_once(store: EventStore) -> None:
    assert store.add_events([ev("a", 0, event_id="e1"), ev("b", 1, event_id="e2")]) == (2, 0)
    # a retried batch: both duplicates, even though "b" now has another payload
    assert store.add_events([ev("a", 0, event_id="e1"), ev("z", 9, event_id="e2")]) == (0, 2)
    # a duplicate inside one batch
    assert store.add_events([ev("c", 2, event_id="e3"), ev("c", 2, event_id="e3")]) == (1, 1)
    assert store.count() == 3
    assert items(store.recently_viewed(Shopper.user("u1"))) == ["c", "b", "a"]


def test_events_without_id_are_deduplicated_by_content(store: EventStore) -> None:
    assert store.add_events([ev("a", 0), ev("a", 0), ev("a", 1)]) == (2, 1)
    assert store.add_events([ev("a", 1)]) == (0, 1)
    assert store.session_items("s1") == ["a", "a"]


# --- recently viewed ---------------------------------------------------------------------------
def test_recently_viewed_is_distinct_newest_first_with_latest_time(store: EventStore) -> None:
    store.add_events([ev("a", 0), ev("b", 1), ev("a", 2), ev("c", 3, "cart"), ev("d", 4)])
    rows = store.recently_viewed(Shopper.user("u1"), limit=10)
    assert items(rows) == ["d", "a", "b"]  # carts are not views; "a" moved to the front
    assert rows[1][1] == T0 + timedelta(minutes=2)
    assert items(store.recently_viewed(Shopper.user("u1"), limit=2)) == ["d", "a"]


def test_a_late_arriving_older_view_does_not_move_an_item_back(store: EventStore) -> None:
    store.add_events([ev("a", 5), ev("b", 3)])
    store.add_events([ev("a", 1)])  # older view of "a", delivered late
    rows = store.recently_viewed(Shopper.user("u1"))
    assert rows == [("a", T0 + timedelta(minutes=5)), ("b", T0 + timedelta(minutes=3))]


def test_user_and_session_histories_are_separate(store: EventStore) -> None:
    store.add_events(
        [
            ev("a", 0, session="s1", user="u1"),
            ev("b", 1, session="s2", user="u1"),
            ev("c", 2, session="s3", user=None),
        ]
    )
    assert items(store.recently_viewed(Shopper.user("u1"))) == ["b", "a"]
    assert items(store.recently_viewed(Shopper.session("s1"))) == ["a"]
    assert items(store.recently_viewed(Shopper.session("s3"))) == ["c"]
    assert store.recently_viewed(Shopper.user("nobody")) == []


def test_exclude_purchased_and_max_age(store: EventStore) -> None:
    store.add_events([ev("a", 0), ev("b", 10), ev("c", 20), ev("b", 21, "purchase")])
    me = Shopper.user("u1")
    assert items(store.recently_viewed(me, exclude_purchased=True)) == ["c", "a"]
    assert items(store.recently_viewed(me, exclude_purchased=False)) == ["c", "b", "a"]
    now = T0 + timedelta(minutes=25)
    assert items(store.recently_viewed(me, max_age=timedelta(minutes=15), now=now)) == ["c", "b"]
    assert store.purchased(me) == {"b"}
    assert store.purchased(Shopper.session("s1")) == {"b"}


def test_equal_view_times_break_ties_by_item_id_descending(store: EventStore) -> None:
    store.add_events([ev("a", 0), ev("c", 0), ev("b", 0)])
    assert items(store.recently_viewed(Shopper.user("u1"))) == ["c", "b", "a"]


# --- sessions and users ------------------------------------------------------------------------
def test_session_items_keep_time_order_and_repeats(store: EventStore) -> None:
    store.add_events([ev("b", 2), ev("a", 1), ev("c", 3, "cart"), ev("a", 4)])
    assert store.session_items("s1") == ["a", "b", "c", "a"]
    assert store.session_items("s1", limit=2) == ["c", "a"]
    assert store.session_items("unknown") == []


def test_events_of_returns_a_users_events_in_time_order(store: EventStore) -> None:
    store.add_events([ev("b", 2, session="s2", event_id="x"), ev("a", 1), ev("z", 0, user=None)])
    got = store.events_of("u1")
    assert [(e.item_id, e.session_id, e.event_id) for e in got] == [
        ("a", "s1", None),
        ("b", "s2", "x"),
    ]
    assert got[0].timestamp == T0 + timedelta(minutes=1)
    assert got[0].timestamp.tzinfo is not None
    assert store.events_of("nobody") == []


def test_unicode_ids_round_trip(store: EventStore) -> None:
    store.add_events([ev("чайник ☕", 0, user="ü", session="sé")])
    assert items(store.recently_viewed(Shopper.user("ü"))) == ["чайник ☕"]
    assert store.session_items("sé") == ["чайник ☕"]


def test_ping(store: EventStore) -> None:
    assert store.ping()


# --- backend specifics -------------------------------------------------------------------------
def test_sqlite_survives_reopen_and_keeps_deduplicating(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.db"
    with SqliteStore(path) as s:
        s.add_events([ev("a", 0, event_id="e1"), ev("b", 1)])
    with SqliteStore(path) as s:
        assert s.count() == 2
        assert s.add_events([ev("a", 0, event_id="e1")]) == (0, 1)
        assert items(s.recently_viewed(Shopper.user("u1"))) == ["b", "a"]
        (mode,) = s._conn().execute("PRAGMA journal_mode").fetchone()
        (sync,) = s._conn().execute("PRAGMA synchronous").fetchone()
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_sqlite_is_shared_by_threads(tmp_path: Path) -> None:
    import threading

    s = SqliteStore(tmp_path / "e.db")

    def write(n: int) -> None:
        for i in range(20):
            s.add_events([ev(f"i{n}-{i}", i, session=f"s{n}")])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.count() == 80
    assert len(s.session_items("s3")) == 20
    s.close()


def test_redis_caps_and_expires_per_shopper_state() -> None:
    opts = StoreOptions(recent_cap=3, session_cap=4, user_events_cap=5)
    s = open_redis(opts)
    try:
        s.add_events([ev(f"i{i}", i) for i in range(10)])
        assert items(s.recently_viewed(Shopper.user("u1"), limit=10)) == ["i9", "i8", "i7"]
        assert s.session_items("s1") == ["i6", "i7", "i8", "i9"]
        assert [e.item_id for e in s.events_of("u1")] == ["i5", "i6", "i7", "i8", "i9"]
        assert s.count() == 10
        from shoprec.store.redis import RedisStore

        assert isinstance(s, RedisStore)
        ttl = s.client.ttl(s.prefix + "rv:u:u1")
        assert 0 < ttl <= opts.recent_ttl.total_seconds()
        assert 0 < s.client.ttl(s.prefix + "seen:" + ev("i0", 0).key) <= 7 * 86400
    finally:
        drop_redis_keys(s)
        s.close()


def test_redis_store_reports_an_unreachable_server() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = open_store(f"redis://127.0.0.1:{port}/0")
    assert not s.ping()
    with pytest.raises(StoreUnavailable, match="Redis store unavailable"):
        s.add_events([ev("a", 0)])
    with pytest.raises(StoreUnavailable):
        s.recently_viewed(Shopper.user("u1"))
    s.close()


def test_sqlite_locked_past_its_timeout_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    import sqlite3

    s = SqliteStore(tmp_path / "e.db", busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            s.add_events([ev("a", 0)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert s.add_events([ev("a", 0)]) == (1, 0)  # the lock is gone: writes work again
    s.close()


@pytest.mark.parametrize(
    "url",
    ["ftp://x", "nothing", "sqlite://relative.db", "sqlite:///"],
)
def test_bad_store_urls_are_named(url: str) -> None:
    with pytest.raises(StoreError, match="URL"):
        open_store(url)


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel/events.db")
    absolute = open_store(f"sqlite:///{tmp_path}/abs/events.db")
    assert isinstance(rel, SqliteStore) and isinstance(absolute, SqliteStore)
    assert rel.path == Path("rel/events.db")
    assert (tmp_path / "abs" / "events.db").is_file()
    rel.close()
    absolute.close()


# --- every backend agrees with the reference on random streams ---------------------------------
_event = st.builds(
    StoredEvent,
    session_id=st.sampled_from(["s1", "s2", "s3"]),
    item_id=st.sampled_from(["a", "b", "c", "d", "e"]),
    event_type=st.sampled_from(["view", "view", "cart", "purchase"]),
    timestamp=st.integers(0, 50).map(lambda m: T0 + timedelta(minutes=m)),
    user_id=st.sampled_from([None, "u1", "u2"]),
    event_id=st.one_of(st.none(), st.sampled_from(["e1", "e2", "e3", "e4"])),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_event, min_size=1, max_size=6), min_size=1, max_size=5))
def test_backends_agree_with_the_reference(batches: list[list[StoredEvent]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backends: list[EventStore] = [SqliteStore(Path(tmp) / "e.db")]
        if redis_up():
            backends.append(open_redis())
        ref = MemoryStore()
        try:
            for batch in batches:
                expected = ref.add_events(batch)
                for b in backends:
                    assert b.add_events(batch) == expected
            shoppers = [Shopper.user(u) for u in ("u1", "u2")]
            shoppers += [Shopper.session(s) for s in ("s1", "s2", "s3")]
            for b in backends:
                assert b.count() == ref.count()
                for sh in shoppers:
                    for excl in (False, True):
                        assert b.recently_viewed(sh, 10, exclude_purchased=excl) == (
                            ref.recently_viewed(sh, 10, exclude_purchased=excl)
                        )
                    assert b.purchased(sh) == ref.purchased(sh)
                for u in ("u1", "u2"):
                    assert [e.key for e in b.events_of(u)] == [e.key for e in ref.events_of(u)]
                for s in ("s1", "s2", "s3"):
                    # same multiset; order can differ only among events of the same microsecond
                    assert sorted(b.session_items(s)) == sorted(ref.session_items(s))
        finally:
            for b in backends:
                if b is not backends[0]:
                    drop_redis_keys(b)
                b.close()

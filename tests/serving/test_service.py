"""Every storefront endpoint and its error paths, in-process through the whole HTTP stack.

The test bundle (tests/serving/fakes.py) ranks by item transitions: a -> b (3), b -> c (2),
b -> d (1), e -> f, f -> g; train popularity b > a > c = f > d = e = g.
"""

from __future__ import annotations

import sys
import types
import typing
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from starlette.testclient import TestClient

from shoprec import schema

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def view(item: str, minute: float, session: str, user: str | None = None, **kw: Any) -> dict:
    e = {
        "session_id": session,
        "item_id": item,
        "event_type": "view",
        "timestamp": (T0 + timedelta(minutes=minute)).isoformat(),
        **kw,
    }
    if user is not None:
        e["user_id"] = user
    return e


def post(c: TestClient, path: str, body: Any, status: int = 200, **kw: Any) -> Any:
    r = c.post(path, json=body, **kw)
    assert r.status_code == status, r.text
    return r.json()


def error_of(c: TestClient, path: str, body: Any, status: int) -> str:
    """The readable message of an error response (ours: {"error"}; BentoML's adds "detail")."""
    data = post(c, path, body, status)
    assert isinstance(data, dict) and isinstance(data["error"], str), data
    return data["error"] + " " + str(data.get("detail", ""))


def ids(data: dict) -> list[str]:
    return [i["item_id"] for i in data["items"]]


# --- events -------------------------------------------------------------------------------------
def test_events_are_acknowledged_and_duplicates_not_counted_twice(client: TestClient) -> None:
    s, u = uid(), uid()
    batch = [view("a", 0, s, u, event_id=f"{s}-1"), view("b", 1, s, u, event_id=f"{s}-2")]
    assert post(client, "/events", {"events": batch}) == {"accepted": 2, "duplicates": 0}
    assert post(client, "/events", {"events": batch}) == {"accepted": 0, "duplicates": 2}
    # the same event sent again without an id is recognised by its content
    single = view("c", 2, s, u)
    assert post(client, "/events", {"events": [single]}) == {"accepted": 1, "duplicates": 0}
    assert post(client, "/events", {"events": [single]}) == {"accepted": 0, "duplicates": 1}
    rv = post(client, "/recently_viewed", {"user_id": u})
    assert ids(rv) == ["c", "b", "a"]


def test_event_times_are_utc_and_default_to_now(client: TestClient) -> None:
    s = uid()
    events = [
        {"session_id": s, "item_id": "a", "event_type": "view", "timestamp": "2026-03-01T12:00:00"},
        {"session_id": s, "item_id": "b", "event_type": "view", "timestamp": 1772366460},
        {"session_id": s, "item_id": "c", "event_type": "view"},
    ]
    post(client, "/events", {"events": events})
    rv = post(client, "/recently_viewed", {"session_id": s})
    assert ids(rv) == ["c", "b", "a"]
    times = {i["item_id"]: datetime.fromisoformat(i["viewed_at"]) for i in rv["items"]}
    assert times["a"] == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert times["b"] == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    assert abs(times["c"] - datetime.now(UTC)) < timedelta(minutes=5)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"item_id": "a", "event_type": "view"}, "session_id"),
        (
            {"session_id": "s", "item_id": "a", "event_type": "click"},
            "'view', 'cart' or 'purchase'",
        ),
        ({"session_id": "s", "item_id": "", "event_type": "view"}, "item_id"),
        ({"session_id": "s", "item_id": "a\nb", "event_type": "view"}, "control characters"),
        ({"session_id": "s", "item_id": 7, "event_type": "view"}, "item_id"),
        ({"session_id": "s", "item_id": "a", "event_type": "view", "colour": "red"}, "colour"),
        ({"session_id": "s", "item_id": "a", "event_type": "view", "price": -1}, "price"),
        (
            {"session_id": "s", "item_id": "a", "event_type": "view", "timestamp": "soon"},
            "timestamp",
        ),
    ],
)
def test_bad_events_get_400_naming_the_field(client: TestClient, event: dict, message: str) -> None:
    assert message in error_of(client, "/events", {"events": [event]}, 400)


def test_implausible_event_times_are_refused(client: TestClient) -> None:
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    e = {"session_id": "s", "item_id": "a", "event_type": "view", "timestamp": future}
    assert "events[0].timestamp" in error_of(client, "/events", {"events": [e]}, 400)
    e["timestamp"] = "1960-01-01T00:00:00Z"
    assert "plausible" in error_of(client, "/events", {"events": [e]}, 400)


def test_empty_missing_and_oversized_batches(serve: Any) -> None:
    with serve(SHOPREC_SERVING_SET="limits.max_batch_events=3") as c:
        assert "events" in error_of(c, "/events", {"events": []}, 400)
        assert "events" in error_of(c, "/events", {}, 400)
        batch = [view(f"i{i}", i, "s") for i in range(4)]
        assert "at most 3" in error_of(c, "/events", {"events": batch}, 413)
        assert post(c, "/events", {"events": batch[:3]})["accepted"] == 3


def test_api_key_is_required_when_configured(serve: Any) -> None:
    with serve(SHOPREC_API_KEY="s3cret") as c:
        body = {"events": [view("a", 0, "s1")]}
        assert "x-api-key" in error_of(c, "/events", body, 401)
        r = c.post("/events", json=body, headers={"x-api-key": "wrong"})
        assert r.status_code == 401
        r = c.post("/events", json=body, headers={"x-api-key": "s3cret"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        r = c.post("/next_items", json={"items": ["a"]}, headers={"x-api-key": "s3cret"})
        assert r.status_code == 200
        assert c.post("/next_items", json={"items": ["a"]}).status_code == 401
        assert c.get("/livez").status_code == 200  # probes stay open


# --- recently viewed ----------------------------------------------------------------------------
def test_recently_viewed_is_newest_first_and_skips_purchases(client: TestClient) -> None:
    s, u = uid(), uid()
    events = [view("a", 0, s, u), view("b", 1, s, u), view("a", 2, s, u), view("c", 3, s, u)]
    events.append({**view("c", 4, s, u), "event_type": "purchase"})
    post(client, "/events", {"events": events})
    assert ids(post(client, "/recently_viewed", {"user_id": u})) == ["a", "b"]
    body = {"user_id": u, "exclude_purchased": False}
    assert ids(post(client, "/recently_viewed", body)) == ["c", "a", "b"]
    assert ids(post(client, "/recently_viewed", {**body, "limit": 1})) == ["c"]
    assert ids(post(client, "/recently_viewed", {"session_id": s})) == ["a", "b"]
    assert post(client, "/recently_viewed", {"user_id": uid()}) == {"items": []}


def test_recently_viewed_max_age(client: TestClient) -> None:
    s = uid()
    now = datetime.now(UTC)
    old = {**view("old", 0, s), "timestamp": (now - timedelta(days=3)).isoformat()}
    new = {**view("new", 0, s), "timestamp": (now - timedelta(hours=1)).isoformat()}
    post(client, "/events", {"events": [old, new]})
    assert ids(post(client, "/recently_viewed", {"session_id": s, "max_age_days": 1})) == ["new"]
    assert ids(post(client, "/recently_viewed", {"session_id": s})) == ["new", "old"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one of user_id or session_id"),
        ({"user_id": "u", "session_id": "s"}, "exactly one of user_id or session_id"),
        ({"user_id": "u", "limit": 0}, "limit must be between 1 and 100"),
        ({"user_id": "u", "limit": 101}, "limit must be between 1 and 100"),
        ({"user_id": "u", "limit": "many"}, "limit"),
        ({"user_id": "u", "max_age_days": -1}, "max_age_days"),
        ({"user_id": ["u"]}, "user_id"),
    ],
)
def test_recently_viewed_bad_requests(client: TestClient, body: dict, message: str) -> None:
    assert message in error_of(client, "/recently_viewed", body, 400)


# --- next items ---------------------------------------------------------------------------------
def test_next_items_from_items_with_reasons(client: TestClient) -> None:
    data = post(client, "/next_items", {"items": ["a"], "k": 3})
    assert ids(data) == ["b", "c", "f"]  # a is excluded: it is the session
    first = data["items"][0]
    assert first == {
        "item_id": "b",
        "score": 3.0,
        "reason": "because you viewed a",
        "fallback": False,
    }
    assert [i["fallback"] for i in data["items"]] == [False, True, True]
    assert data["fallback"] is False and data["unknown_items"] == []


def test_next_items_from_a_stored_session(client: TestClient) -> None:
    s = uid()
    post(client, "/events", {"events": [view("e", 0, s), view("a", 1, s)]})
    data = post(client, "/next_items", {"session_id": s, "k": 2})
    assert ids(data) == ["b", "c"]
    assert data["items"][0]["reason"] == "because you viewed a"


def test_new_visitors_and_unknown_items_get_popular_items(client: TestClient) -> None:
    data = post(client, "/next_items", {"session_id": uid(), "k": 3})
    assert ids(data) == ["b", "a", "c"]
    assert data["fallback"] is True
    assert {i["reason"] for i in data["items"]} == {"popular now"}
    data = post(client, "/next_items", {"items": ["new-1", "new-2"], "k": 2})
    assert ids(data) == ["b", "a"] and data["fallback"] is True
    assert data["unknown_items"] == ["new-1", "new-2"]
    data = post(client, "/next_items", {"items": ["new-1", "a"], "k": 1})
    assert ids(data) == ["b"] and data["unknown_items"] == ["new-1"]


def test_next_items_exclusion_flags(client: TestClient) -> None:
    s, u = uid(), uid()
    post(client, "/events", {"events": [{**view("b", 0, uid(), u), "event_type": "purchase"}]})
    body = {"items": ["e", "a"], "k": 3, "user_id": u}
    assert ids(post(client, "/next_items", body)) == ["c", "f", "d"]  # b bought, a/e viewed
    body["exclude_purchased"] = False
    assert ids(post(client, "/next_items", body)) == ["b", "c", "f"]
    body["exclude_viewed"] = False
    assert ids(post(client, "/next_items", body)) == ["b", "a", "c"]
    # purchases within the stored session are excluded too
    post(
        client,
        "/events",
        {"events": [view("a", 0, s), {**view("b", 1, s), "event_type": "purchase"}]},
    )
    assert "b" not in ids(post(client, "/next_items", {"session_id": s, "k": 5}))


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": ["a"], "k": 0}, 400, "k must be between 1 and 100, got 0"),
        ({"items": ["a"], "k": 101}, 400, "k must be between 1 and 100, got 101"),
        ({"items": ["a"], "k": "ten"}, 400, "k"),
        ({"items": ["a"], "k": 2.5}, 400, "k"),
        ({"k": 3}, 400, "exactly one of items or session_id"),
        ({"user_id": "u"}, 400, "exactly one of items or session_id"),
        ({"items": ["a"], "session_id": "s"}, 400, "exactly one of items or session_id"),
        ({"items": []}, 400, "items is empty"),
        ({"items": "a"}, 400, "items"),
        ({"items": [1, 2]}, 400, "items"),
        ({"items": ["a"] * 201}, 413, "at most 200"),
        ({"items": ["a"], "exclude_viewed": "maybe"}, 400, "exclude_viewed"),
        ({"items": ["a"], "surprise": 1}, 400, "surprise"),
    ],
)
def test_next_items_bad_requests(client: TestClient, body: dict, status: int, message: str) -> None:
    assert message in error_of(client, "/next_items", body, status)


def test_without_batching_the_answers_are_the_same(serve: Any) -> None:
    bodies = [{"items": ["a"], "k": 4}, {"items": ["b", "e"], "k": 2}, {"items": ["zz"]}]
    with serve() as c:
        batched = [post(c, "/next_items", b) for b in bodies]
    with serve(SHOPREC_SERVING_SET="batching.enabled=false") as c:
        assert [post(c, "/next_items", b) for b in bodies] == batched
    with serve(SHOPREC_SERVING_SET="batching.inline_alone=false") as c:  # always the thread
        assert [post(c, "/next_items", b) for b in bodies] == batched


def test_requests_in_flight_are_counted_and_back_to_zero_after_every_kind_of_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from serving.service import IN_FLIGHT

    from shoprec.inference import Recommender

    seen: list[tuple[int, str]] = []
    original = Recommender.next_items_batch

    def spy(self: Recommender, *args: Any, **kwargs: Any) -> Any:
        seen.append((IN_FLIGHT.n, threading.current_thread().name))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Recommender, "next_items_batch", spy)
    before = IN_FLIGHT.n
    post(client, "/next_items", {"items": ["a"]})
    # the only request in flight: scored on the event loop's thread, not the model thread
    assert len(seen) == 1 and seen[0][0] == before + 1
    assert not seen[0][1].startswith("model")
    assert client.get("/livez").status_code == 200
    assert client.post("/next_items", content=b"a=b", headers={"content-type": "text/plain"})
    assert client.post("/next_items", content=b"x" * 2_000_000).status_code == 413
    assert client.post("/next_items", json={"items": []}).status_code == 400
    assert IN_FLIGHT.n == before


# --- cart add-ons -------------------------------------------------------------------------------
def test_cart_addons(client: TestClient) -> None:
    data = post(client, "/cart_addons", {"cart_items": ["a"], "k": 3})
    assert ids(data) == ["d", "b", "c"]
    assert [i["reason"] for i in data["items"]] == [
        "often bought with a",
        "goes with a",
        "popular now",
    ]
    data = post(client, "/cart_addons", {"cart_items": ["a", "b", "c", "d", "e", "f"], "k": 5})
    assert ids(data) == ["g"]  # everything else is in the cart
    data = post(client, "/cart_addons", {"cart_items": ["new"], "k": 2})
    assert ids(data) == ["b", "a"] and data["fallback"] and data["unknown_items"] == ["new"]


def test_cart_addons_skip_purchased_items(client: TestClient) -> None:
    u = uid()
    post(client, "/events", {"events": [{**view("d", 0, uid(), u), "event_type": "purchase"}]})
    assert ids(post(client, "/cart_addons", {"cart_items": ["a"], "k": 1, "user_id": u})) == ["b"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"cart_items": []}, 400, "cart_items is empty"),
        ({}, 400, "cart_items"),
        ({"cart_items": ["a"], "k": -1}, 400, "k must be between"),
        ({"cart_items": ["a"] * 101}, 413, "at most 100"),
        ({"cart_items": [None]}, 400, "cart_items"),
    ],
)
def test_cart_addons_bad_requests(
    client: TestClient, body: dict, status: int, message: str
) -> None:
    assert message in error_of(client, "/cart_addons", body, status)


# --- churn risk ---------------------------------------------------------------------------------
def test_churn_risk_without_a_churn_model_is_a_clear_409(client: TestClient) -> None:
    assert "no churn model loaded" in error_of(client, "/churn_risk", {"user_id": "u"}, 409)
    assert "user_id" in error_of(client, "/churn_risk", {}, 400)


def test_churn_risk_with_a_churn_model(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[pl.DataFrame] = []

    def score_customers(bundle: object, events: pl.DataFrame, at: datetime) -> pl.DataFrame:
        seen.append(events)
        users = events.filter(pl.col(schema.TIMESTAMP) < at).get_column(schema.USER_ID).unique()
        return pl.DataFrame(
            {
                "user_id": users,
                "probability": [0.25] * len(users),
                "segment": ["active"] * len(users),
                "driver_1": ["recency_days"] * len(users),
                "contribution_1": [-0.5] * len(users),
            }
        )

    fake = types.ModuleType("shoprec.churn")
    fake.score_customers = score_customers  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shoprec.churn", fake)
    (tmp_path / "churn").mkdir()
    with serve(SHOPREC_CHURN_BUNDLE=str(tmp_path / "churn")) as c:
        post(c, "/events", {"events": [view("a", 0, "s1", "u1", price=9.5, quantity=2)]})
        data = post(c, "/churn_risk", {"user_id": "u1", "at": "2026-04-01T00:00:00Z"})
        assert data == {
            "user_id": "u1",
            "probability": 0.25,
            "segment": "active",
            "drivers": [{"feature": "recency_days", "contribution": -0.5}],
            "at": "2026-04-01T00:00:00Z",
        }
        assert seen[0].get_column(schema.PRICE).to_list() == [9.5]
        assert "no events" in error_of(c, "/churn_risk", {"user_id": "nobody"}, 404)
        before = {"user_id": "u1", "at": "2020-01-01T00:00:00Z"}
        assert "no events" in error_of(c, "/churn_risk", before, 404)


# --- transport, probes and docs -------------------------------------------------------------------
def test_non_json_huge_and_malformed_bodies_are_4xx(client: TestClient) -> None:
    r = client.post("/next_items", content=b"a=b", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = client.post("/next_items", content=b"x" * 2_000_000)
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    r = client.post("/next_items", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text
    r = client.post("/next_items", content=b'["a"]', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert client.get("/next_items").status_code == 405


def test_answers_are_the_json_of_their_declared_models(client: TestClient) -> None:
    from pydantic import BaseModel
    from serving.api import RecentlyViewedResponse, RecommendationsResponse

    post(client, "/events", {"events": [view("a", 0, "s-json", "u-json")]})
    cases: list[tuple[str, dict, type[BaseModel]]] = [
        ("/next_items", {"items": ["a", "zz"], "k": 3}, RecommendationsResponse),
        ("/cart_addons", {"cart_items": ["a"], "k": 3}, RecommendationsResponse),
        ("/recently_viewed", {"user_id": "u-json"}, RecentlyViewedResponse),
    ]
    for path, body, model in cases:
        r = client.post(path, json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        # exactly the bytes pydantic (BentoML's JSON serde) writes for the parsed model
        assert r.content == model.model_validate_json(r.content).model_dump_json().encode()
        assert int(r.headers["content-length"]) == len(r.content)


def test_probes_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    post(client, "/next_items", {"items": ["a"]})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "next_items" in metrics.text
    spec = client.get("/docs.json").json()
    for route in ("/events", "/recently_viewed", "/next_items", "/cart_addons", "/churn_risk"):
        assert "post" in spec["paths"][route], route


def test_readiness_follows_the_store(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoprec.store.sqlite import SqliteStore

    with serve() as c:
        assert c.get("/readyz").status_code == 200
        monkeypatch.setattr(SqliteStore, "ping", lambda self: False)
        assert c.get("/readyz").status_code == 503


def test_an_unreachable_store_is_a_503_with_a_message(serve: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with serve(SHOPREC_STORE_URL=f"redis://127.0.0.1:{port}/0") as c:
        assert c.get("/readyz").status_code == 503
        data = post(c, "/events", {"events": [view("a", 0, "s1")]}, 503)
        assert data == {"error": "event store unavailable; retry later"}
        assert post(c, "/recently_viewed", {"user_id": "u"}, 503)["error"]
        assert ids(post(c, "/next_items", {"items": ["a"], "k": 1})) == ["b"]  # no store needed


def test_a_missing_bundle_stops_startup_with_a_clear_message(serve: Any, tmp_path: Path) -> None:
    from shoprec.export import BundleError

    with (
        pytest.raises(BundleError, match="not a shoprec bundle"),
        serve(SHOPREC_NEXT_ITEM_BUNDLE=str(tmp_path / "nothing")),
    ):
        pass


def test_event_types_are_the_schema_core_types() -> None:
    from serving.api import EventType

    assert set(typing.get_args(EventType)) == set(schema.CORE_EVENT_TYPES)


def test_without_any_bundle_startup_says_how_to_provide_one(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bentoml

    from shoprec.errors import ShoprecError

    def not_found(tag: str) -> None:
        raise bentoml.exceptions.NotFound(f"{tag} not found")

    monkeypatch.setattr(bentoml.models, "get", not_found)
    with (
        pytest.raises(ShoprecError, match="SHOPREC_NEXT_ITEM_BUNDLE"),
        serve(SHOPREC_NEXT_ITEM_BUNDLE=None),
    ):
        pass


def fake_bento(*tags: str) -> Any:
    """What BentoML sets as ``Service.bento`` when it serves a built Bento: the tags its
    ``bento.yaml`` records."""
    from bentoml._internal.tag import Tag

    models = [types.SimpleNamespace(tag=Tag.from_taglike(t)) for t in tags]
    return types.SimpleNamespace(info=types.SimpleNamespace(all_models=models))


def test_a_bento_serves_the_model_version_it_was_built_with(
    serve: Any, test_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bentoml
    from serving.service import Storefront

    asked: list[str] = []

    def get(tag: str) -> Any:
        asked.append(str(tag))
        if str(tag).startswith("next-item:"):
            return types.SimpleNamespace(path=str(test_bundle))
        raise bentoml.exceptions.NotFound(f"{tag} not found")

    monkeypatch.setattr(bentoml.models, "get", get)
    # a Bento built with next-item:v1 loads exactly that version, never next-item:latest, and
    # no churn model it was not built with
    monkeypatch.setattr(Storefront, "bento", fake_bento("next-item:v1"), raising=False)
    with serve(SHOPREC_NEXT_ITEM_BUNDLE=None) as c:
        assert ids(post(c, "/next_items", {"items": ["a"], "k": 1})) == ["b"]
    assert asked == ["next-item:v1"]

    # a Bento that records a churn model the store lacks fails loudly
    from shoprec.errors import ShoprecError

    asked.clear()
    monkeypatch.setattr(Storefront, "bento", fake_bento("next-item:v1", "churn:c7"))
    with pytest.raises(ShoprecError, match="churn:c7"), serve(SHOPREC_NEXT_ITEM_BUNDLE=None):
        pass
    assert asked == ["next-item:v1", "churn:c7"]

    # outside a Bento (bentoml serve serving.service:Storefront): the store's latest
    asked.clear()
    monkeypatch.setattr(Storefront, "bento", None)
    with serve(SHOPREC_NEXT_ITEM_BUNDLE=None):
        pass
    assert asked == ["next-item:latest", "churn:latest"]


def test_the_service_on_the_redis_store(serve: Any) -> None:
    from shoprec.store import open_store
    from tests.conftest import require
    from tests.store.test_stores import drop_redis_keys, redis_up

    require(redis_up(), "Redis is not reachable at 127.0.0.1:6379")
    url = f"redis://127.0.0.1:6379/0?prefix=svc-{uid()}:"
    try:
        with serve(SHOPREC_STORE_URL=url) as c:
            events = [view("a", 0, "s1", "u1", event_id="x1"), view("b", 1, "s1", "u1")]
            assert post(c, "/events", {"events": events}) == {"accepted": 2, "duplicates": 0}
            assert post(c, "/events", {"events": events}) == {"accepted": 0, "duplicates": 2}
            assert ids(post(c, "/recently_viewed", {"user_id": "u1"})) == ["b", "a"]
            assert ids(post(c, "/next_items", {"session_id": "s1", "k": 2})) == ["c", "d"]
            assert c.get("/readyz").status_code == 200
    finally:
        with open_store(url) as store:
            drop_redis_keys(store)

"""Nothing a client sends produces a 5xx.

Schemathesis generates valid and invalid requests for every operation of the service's own
``/docs.json``; hypothesis adds arbitrary JSON documents and raw bytes. Every answer must be
below 500, every 4xx must carry a readable ``error`` and every 200 must match its response
model. Derandomised and bounded (a few hundred requests, well under a minute).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from serving.api import (
    ChurnRiskResponse,
    EventsResponse,
    RecentlyViewedResponse,
    RecommendationsResponse,
)
from starlette.testclient import TestClient

ROUTES: dict[str, type[BaseModel]] = {
    "/events": EventsResponse,
    "/recently_viewed": RecentlyViewedResponse,
    "/next_items": RecommendationsResponse,
    "/cart_addons": RecommendationsResponse,
    "/churn_risk": ChurnRiskResponse,
}
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def check(route: str, status: int, text: str) -> None:
    assert status < 500, f"{route} answered {status}: {text[:300]}"
    body = json.loads(text)
    if status == 200:
        ROUTES[route].model_validate(body)
    else:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), text[:300]


def send(c: TestClient, route: str, body: Any) -> None:
    if isinstance(body, NotSet):  # schemathesis: no body at all
        r = c.post(route)
    elif isinstance(body, bytes | str):
        r = c.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = c.post(route, json=body)
    check(route, r.status_code, r.text)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_schema_driven_requests_never_get_a_5xx(serve: Any, route: str) -> None:
    started = time.monotonic()
    with serve() as c:
        # seed the store so that reads find something to work on
        c.post(
            "/events",
            json={
                "events": [
                    {"session_id": "s", "item_id": "a", "event_type": "view", "user_id": "u"}
                ]
            },
        )
        spec = c.get("/docs.json").json()
        op = schemathesis.openapi.from_dict(spec)[route]["POST"]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                send(c, route, case.body)

            run()
    assert time.monotonic() - started < 60


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["items", "session_id", "user_id", "k", "cart_items", "events", "limit", "at", "max_age_days"]
)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_arbitrary_json_and_bytes_never_get_a_5xx(serve: Any, route: str) -> None:
    with serve() as c:

        @FUZZ
        @given(body=_json | st.dictionaries(_fields, _json, max_size=4) | st.binary(max_size=64))
        def run(body: Any) -> None:
            send(c, route, body)

        run()


_item = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "new", "ü", "x" * 256])
_maybe_id = st.none() | st.sampled_from(["s1", "u1", "nobody"])


@st.composite
def _realistic(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Plausible requests (catalogue ids, k near its limits): reach the logic, not the parser."""
    route = draw(st.sampled_from(["/next_items", "/cart_addons", "/recently_viewed"]))
    k = draw(st.integers(-1, 102))
    body: dict[str, Any] = {}
    if route == "/next_items":
        if draw(st.booleans()):
            body["items"] = draw(st.lists(_item, max_size=6))
        if draw(st.booleans()):
            body["session_id"] = draw(st.sampled_from(["s1", "fresh"]))
        body.update(k=k, exclude_viewed=draw(st.booleans()), exclude_purchased=draw(st.booleans()))
    elif route == "/cart_addons":
        body.update(cart_items=draw(st.lists(_item, max_size=6)), k=k)
    else:
        body.update(limit=k, exclude_purchased=draw(st.booleans()))
        if draw(st.booleans()):
            body["max_age_days"] = draw(st.floats(0, 4000))
    for key in ("user_id", "session_id") if route == "/recently_viewed" else ("user_id",):
        if (value := draw(_maybe_id)) is not None:
            body[key] = value
    return route, body


def test_plausible_requests_keep_the_promises(serve: Any) -> None:
    events = [
        {"session_id": "s1", "user_id": "u1", "item_id": i, "event_type": t}
        for i, t in [("a", "view"), ("b", "view"), ("c", "purchase"), ("new", "view")]
    ]
    with serve() as c:
        c.post("/events", json={"events": events})

        @settings(FUZZ, max_examples=150)
        @given(request=_realistic())
        def run(request: tuple[str, dict[str, Any]]) -> None:
            route, body = request
            r = c.post(route, json=body)
            check(route, r.status_code, r.text)
            if r.status_code != 200 or route == "/recently_viewed":
                return
            got = [i["item_id"] for i in r.json()["items"]]
            assert len(got) == len(set(got)) <= body["k"]
            if route == "/cart_addons":
                assert not set(got) & set(body["cart_items"])
            elif body.get("exclude_viewed") and body.get("items"):
                assert not set(got) & set(body["items"])
            if body.get("exclude_purchased", True) and body.get("user_id") == "u1":
                assert "c" not in got

        run()

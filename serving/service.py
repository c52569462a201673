"""The storefront service: recently viewed, next items, cart add-ons and churn risk over HTTP.

A thin IO shell (ARCHITECTURE: serving/ is a thin shell over ``shoprec.inference``): request
models in ``api.py``, limits in ``config.yaml``, state in a :mod:`shoprec.store` backend,
recommendations from :class:`shoprec.inference.Recommender`.

Run it::

    SHOPREC_NEXT_ITEM_BUNDLE=path/to/bundle bentoml serve serving.service:Storefront

A built Bento (``shoprec package``) loads the exact model versions it was built with (the tags
its ``bento.yaml`` records), never whatever ``next-item:latest`` is by then.

Every endpoint is a POST with a JSON body. A request the service cannot answer because of what
the client sent gets a 4xx with ``{"error": "..."}`` (BentoML's own validation errors add a
``detail`` list); nothing a client sends produces a 5xx. ``/livez``, ``/readyz`` (the store
answers), ``/metrics`` and ``/docs.json`` come from BentoML.

``GET /demo/`` is a storefront demo page over these endpoints (``serving/pages.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio.to_thread
import bentoml
import torch
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api import (
    CartAddonsRequest,
    ChurnRiskRequest,
    ChurnRiskResponse,
    Driver,
    EventsRequest,
    EventsResponse,
    NextItemsRequest,
    RecentlyViewedRequest,
    RecentlyViewedResponse,
    RecommendationsResponse,
    RecommendedItem,
    ViewedItem,
)
from serving.batching import MicroBatcher
from serving.config import ServingConfig, load_serving_config
from serving.pages import demo_app
from shoprec.errors import ShoprecError
from shoprec.export import load_bundle
from shoprec.inference import ChurnScorer, Recommendation, Recommender
from shoprec.store import (
    EventStore,
    Shopper,
    StoredEvent,
    StoreUnavailable,
    events_to_frame,
    open_store,
)

logger = logging.getLogger("shoprec.serving")

BUNDLE_ENV = "SHOPREC_NEXT_ITEM_BUNDLE"
CHURN_ENV = "SHOPREC_CHURN_BUNDLE"
STORE_ENV = "SHOPREC_STORE_URL"
STATE_ENV = "SHOPREC_STATE_DIR"
API_KEY_ENV = "SHOPREC_API_KEY"
BENTO_MODEL = "next-item"
CHURN_BENTO_MODEL = "churn"

IMPORT_CONFIG = load_serving_config()


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status`` (4xx: the client must
    change the request; 503: the store is down, retry later)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Counter:
    def __init__(self) -> None:
        self.n = 0


IN_FLIGHT = _Counter()  # HTTP requests this process is handling now (counted by RequestGuard)


class RequestGuard:
    """Refuse what BentoML would mishandle, before it parses anything; count requests in flight.

    * 415 for a POST body that is not JSON: the endpoints only take JSON, and BentoML's form
      and multipart parsers answer some malformed bodies with a 500;
    * 413 for a body over ``max_bytes``. The body is read here (bounded) and replayed to the
      app, so a chunked upload without a Content-Length is bounded too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        IN_FLIGHT.n += 1
        try:
            await self._http(scope, receive, send)
        finally:
            IN_FLIGHT.n -= 1

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        media = dict(scope.get("headers", [])).get(b"content-type", b"application/json")
        if media.split(b";")[0].strip().lower() not in (b"application/json", b""):
            reply = JSONResponse({"error": "send the body as application/json"}, status_code=415)
            await reply(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client disconnected
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                reply = JSONResponse(
                    {"error": f"request body over {self.max_bytes} bytes"}, status_code=413
                )
                await reply(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body]), send)


def _replay(messages: list[Message]) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive


def _reject(ctx: bentoml.Context, exc: ApiError) -> Any:
    """The error response; typed Any because BentoML accepts a Response in place of the model."""
    ctx.response.status_code = exc.status  # BentoML copies this onto any returned response
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _json_body(model: BaseModel) -> Response:
    """The 200 answer: the model's JSON, the bytes BentoML's own serializer would send.

    Returning a ready response skips BentoML's generic output path (streaming checks,
    a serde round, header plumbing), which cost more main-thread time per request than the
    JSON itself (experiments/2026-12-04-serving-s8.md)."""
    return Response(model.model_dump_json().encode(), media_type="application/json")


def _running_bento() -> Any:
    """The Bento this service was loaded from (``bentoml serve TAG``), else None (``bentoml
    serve serving.service:Storefront`` from a checkout, or in-process tests)."""
    return getattr(cast(Any, Storefront), "bento", None)


def _pinned_tag(name: str) -> str | None:
    """The exact tag of BentoML model ``name`` recorded in the running Bento (``bento.yaml``,
    written by ``shoprec package``); None when the Bento records no such model."""
    bento = _running_bento()
    for info in bento.info.all_models if bento is not None else []:
        if info.tag.name == name:
            return str(info.tag)
    return None


def _model_tag(name: str) -> str | None:
    """The tag to load: the one the running Bento was built with, so a later ``shoprec
    package`` (a newer ``name:latest`` in the same model store) never changes what a deployed
    Bento serves; ``name:latest`` outside a Bento; None inside a Bento that records none."""
    if _running_bento() is not None:
        return _pinned_tag(name)
    return f"{name}:latest"


def _resolve_bundle() -> tuple[Path, str]:
    """The next-item bundle and where it came from: ``SHOPREC_NEXT_ITEM_BUNDLE``, else the
    BentoML model the running Bento was built with (see :func:`_model_tag`)."""
    if path := os.environ.get(BUNDLE_ENV):
        return Path(path), f"{BUNDLE_ENV}={path}"
    tag = _model_tag(BENTO_MODEL) or f"{BENTO_MODEL}:latest"  # an older Bento: no pinned tag
    try:
        return Path(bentoml.models.get(tag).path), f"BentoML model {tag}"
    except bentoml.exceptions.NotFound:
        raise ShoprecError(
            f"no next-item bundle: set {BUNDLE_ENV}=path/to/bundle or import the BentoML "
            f"model {tag}"
        ) from None


def _resolve_churn() -> Path | None:
    """The churn bundle: ``SHOPREC_CHURN_BUNDLE``; else, when the next-item bundle comes from
    the BentoML model store too, the churn model the running Bento was built with (outside a
    Bento: the store's ``churn:latest`` if it has one); else none (``/churn_risk`` answers 409).
    A Bento that records a churn model the store does not have fails loudly."""
    if path := os.environ.get(CHURN_ENV):
        return Path(path)
    if os.environ.get(BUNDLE_ENV):
        return None
    tag = _model_tag(CHURN_BENTO_MODEL)
    if tag is None:
        return None
    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        if _running_bento() is not None:
            raise ShoprecError(
                f"the Bento records churn model {tag}, the model store lacks it"
            ) from None
        return None


def _loop_name() -> str:
    """The running event loop's class (uvicorn picks uvloop when it is installed)."""
    try:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        return "none"


def _store_url(config: ServingConfig) -> str:
    if url := os.environ.get(STORE_ENV) or config.store.url:
        return url
    state = Path(os.environ.get(STATE_ENV) or config.store.state_dir)
    return f"sqlite:///{state / 'events.sqlite'}"


def _recommendations(recs: list[Recommendation], unknown: list[str]) -> RecommendationsResponse:
    return RecommendationsResponse(
        items=[
            RecommendedItem(item_id=r.item_id, score=r.score, reason=r.reason, fallback=r.fallback)
            for r in recs
        ],
        fallback=bool(recs) and all(r.fallback for r in recs),
        unknown_items=unknown,
    )


NextItemsJob = tuple[list[str], int, set[str]]


@bentoml.service(name="storefront", **IMPORT_CONFIG.server.bentoml_options())
class Storefront:
    """Recently viewed items, next items, cart add-ons and churn risk for one online store."""

    def __init__(self) -> None:
        if logger.level == logging.NOTSET:  # BentoML's root is WARNING: keep the startup line
            logger.setLevel(logging.INFO)
        self.config = load_serving_config()
        limits = self.config.limits
        torch.set_num_threads(self.config.server.torch_threads)
        bundle_path, source = _resolve_bundle()
        self.recommender = Recommender(
            load_bundle(bundle_path),
            max_session_len=limits.model_session_len,
            coarse=self.config.model.coarse,
            state_cache=self.config.model.state_cache,
            matrix_gru_from=self.config.model.matrix_gru_from,
        )
        self.store: EventStore = open_store(_store_url(self.config), self.config.store.options())
        self.churn: ChurnScorer | None = None
        if churn_path := _resolve_churn():
            self.churn = ChurnScorer(churn_path)  # a configured but broken churn model fails loudly
        self.api_key = os.environ.get(API_KEY_ENV) or None
        b = self.config.batching
        self.batcher: MicroBatcher[NextItemsJob, list[Recommendation]] | None = (
            MicroBatcher(
                self._score_jobs,
                b.max_batch_size,
                b.max_wait_ms / 1000,
                alone=(lambda: IN_FLIGHT.n <= 1) if b.inline_alone else None,
                gather_s=b.gather_ms / 1000,
            )
            if b.enabled
            else None
        )
        logger.info(
            "storefront ready: next-item %s (%s, %d items, top-k %s), store %s, churn %s, "
            "batching %s, state cache %d, event loop %s",
            source,
            self.recommender.model.name,
            self.recommender.n_items,
            f"{self.recommender.dot.coarse.kind} candidates + exact rescoring"
            if self.recommender.dot
            else "full ranking",
            type(self.store).__name__,
            "on" if self.churn else "off",
            "on" if self.batcher else "off",
            self.recommender.states.capacity if self.recommender.states else 0,
            _loop_name(),
        )

    def __is_ready__(self) -> bool:
        return self.store.ping()

    @bentoml.on_shutdown
    def _close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.store.close()

    # --- plumbing ---
    async def _guarded(self, ctx: bentoml.Context, handler: Callable[[], Awaitable[Any]]) -> Any:
        """Check the API key, run the handler and render its model as the JSON response; turn
        an ApiError into its 4xx response and an unreachable store into a 503 (the one 5xx: it
        is about the server, never the request). Typed Any: BentoML takes a Response in place
        of the endpoint's declared model, which still documents the body in /docs.json."""
        try:
            if self.api_key is not None:
                given = ctx.request.headers.get("x-api-key", "")
                if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                    raise ApiError(401, "missing or wrong x-api-key header")
            result = await handler()
        except ApiError as exc:
            return _reject(ctx, exc)
        except StoreUnavailable as exc:  # our fault, not the client's: 503, retry later
            logger.error("store unavailable: %s", exc)
            return _reject(ctx, ApiError(503, "event store unavailable; retry later"))
        return _json_body(result)

    def _check_k(self, k: int) -> None:
        lo, hi = self.config.limits.k_min, self.config.limits.k_max
        if not lo <= k <= hi:
            raise ApiError(400, f"k must be between {lo} and {hi}, got {k}")

    def _check_size(self, what: str, n: int, limit: int) -> None:
        if n > limit:
            raise ApiError(413, f"{what}: at most {limit} per request, got {n}")

    def _bought(self, user_id: str | None, session_id: str | None) -> set[str]:
        out: set[str] = set()
        if user_id is not None:
            out |= self.store.purchased(Shopper.user(user_id))
        if session_id is not None:
            out |= self.store.purchased(Shopper.session(session_id))
        return out

    def _score_jobs(self, jobs: list[NextItemsJob]) -> list[list[Recommendation]]:
        return self.recommender.next_items_batch(
            [s for s, _, _ in jobs], [k for _, k, _ in jobs], [e for _, _, e in jobs]
        )

    # --- events ---
    @bentoml.api(route="/events")
    async def events(self, req: EventsRequest, /, ctx: bentoml.Context) -> EventsResponse:
        """Record storefront events (one or a batch); answers after they are durably stored.

        Events already stored (same ``event_id``, or same content when there is no id) are
        counted as duplicates and change nothing, so a client can safely retry."""

        async def handle() -> EventsResponse:
            self._check_size("events", len(req.events), self.config.limits.max_batch_events)
            now = datetime.now(UTC)
            latest = now + timedelta(seconds=self.config.limits.max_future_skew_s)
            events = []
            for i, e in enumerate(req.events):
                ts = e.timestamp or now
                ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
                if ts > latest or ts.year < 1970:
                    raise ApiError(
                        400, f"events[{i}].timestamp {ts.isoformat()} is not a plausible time"
                    )
                events.append(
                    StoredEvent(
                        session_id=e.session_id,
                        item_id=e.item_id,
                        event_type=e.event_type,
                        timestamp=ts,
                        user_id=e.user_id,
                        event_id=e.event_id,
                        category=e.category,
                        price=e.price,
                        quantity=e.quantity,
                    )
                )
            # The write (an fsync for sqlite) runs off the event loop.
            accepted, duplicates = await anyio.to_thread.run_sync(self.store.add_events, events)
            return EventsResponse(accepted=accepted, duplicates=duplicates)

        result: EventsResponse = await self._guarded(ctx, handle)
        return result

    # --- recently viewed ---
    @bentoml.api(route="/recently_viewed")
    async def recently_viewed(
        self, req: RecentlyViewedRequest, /, ctx: bentoml.Context
    ) -> RecentlyViewedResponse:
        """Distinct items the shopper viewed, newest first."""

        async def handle() -> RecentlyViewedResponse:
            if (req.user_id is None) == (req.session_id is None):
                raise ApiError(400, "give exactly one of user_id or session_id")
            top = self.config.limits.max_recently_viewed
            if not 1 <= req.limit <= top:
                raise ApiError(400, f"limit must be between 1 and {top}, got {req.limit}")
            shopper = (
                Shopper.user(req.user_id)
                if req.user_id is not None
                else Shopper.session(str(req.session_id))
            )
            rows = self.store.recently_viewed(
                shopper,
                req.limit,
                exclude_purchased=req.exclude_purchased,
                max_age=None if req.max_age_days is None else timedelta(days=req.max_age_days),
            )
            return RecentlyViewedResponse(
                items=[ViewedItem(item_id=i, viewed_at=t) for i, t in rows]
            )

        result: RecentlyViewedResponse = await self._guarded(ctx, handle)
        return result

    # --- next items ---
    @bentoml.api(route="/next_items")
    async def next_items(
        self, req: NextItemsRequest, /, ctx: bentoml.Context
    ) -> RecommendationsResponse:
        """The best next items for a session, each with a reason; popular items for a new
        visitor (``fallback: true``)."""

        async def handle() -> RecommendationsResponse:
            self._check_k(req.k)
            if (req.items is None) == (req.session_id is None):
                raise ApiError(400, "give exactly one of items or session_id")
            limit = self.config.limits.max_session_items
            if req.items is not None:
                if not req.items:
                    raise ApiError(400, "items is empty: send the session's items, or a session_id")
                self._check_size("items", len(req.items), limit)
                session = req.items
            else:
                session = self.store.session_items(str(req.session_id), limit=limit)
            exclude = set(session) if req.exclude_viewed else set()
            if req.exclude_purchased:
                exclude |= self._bought(req.user_id, req.session_id)
            job: NextItemsJob = (session, req.k, exclude)
            if self.batcher is not None:
                recs = await self.batcher.submit(job)
            else:
                recs = self._score_jobs([job])[0]
            return _recommendations(recs, self.recommender.unknown(session))

        result: RecommendationsResponse = await self._guarded(ctx, handle)
        return result

    # --- cart add-ons ---
    @bentoml.api(route="/cart_addons")
    async def cart_addons(
        self, req: CartAddonsRequest, /, ctx: bentoml.Context
    ) -> RecommendationsResponse:
        """Items that go with the cart (never one already in it)."""

        async def handle() -> RecommendationsResponse:
            self._check_k(req.k)
            if not req.cart_items:
                raise ApiError(400, "cart_items is empty")
            self._check_size("cart_items", len(req.cart_items), self.config.limits.max_cart_items)
            exclude = self._bought(req.user_id, req.session_id) if req.exclude_purchased else set()
            recs = self.recommender.cart_addons(req.cart_items, req.k, exclude)
            return _recommendations(recs, self.recommender.unknown(req.cart_items))

        result: RecommendationsResponse = await self._guarded(ctx, handle)
        return result

    # --- churn risk ---
    @bentoml.api(route="/churn_risk")
    async def churn_risk(self, req: ChurnRiskRequest, /, ctx: bentoml.Context) -> ChurnRiskResponse:
        """A signed-in customer's churn probability, segment and top drivers, from their events."""

        async def handle() -> ChurnRiskResponse:
            scorer = self.churn
            if scorer is None:
                raise ApiError(409, f"no churn model loaded (set {CHURN_ENV} to a churn bundle)")
            at = req.at or datetime.now(UTC)
            at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
            events = self.store.events_of(req.user_id)
            if not any(e.timestamp < at for e in events):
                raise ApiError(404, f"no events recorded for user {req.user_id!r} before {at}")
            try:
                risks = await anyio.to_thread.run_sync(scorer.score, events_to_frame(events), at)
            except ShoprecError as exc:
                raise ApiError(422, f"cannot score user {req.user_id!r}: {exc}") from exc
            mine = [r for r in risks if r.user_id == req.user_id]
            if not mine:
                raise ApiError(404, f"the churn model has no score for user {req.user_id!r}")
            r = mine[0]
            return ChurnRiskResponse(
                user_id=r.user_id,
                probability=r.probability,
                segment=r.segment,
                drivers=[Driver(feature=d.feature, contribution=d.contribution) for d in r.drivers],
                at=at,
            )

        result: ChurnRiskResponse = await self._guarded(ctx, handle)
        return result


# mypy sees the decorated class, BentoML returns a Service wrapping it.
cast(Any, Storefront).add_asgi_middleware(
    RequestGuard, max_bytes=IMPORT_CONFIG.limits.max_body_bytes
)
# The storefront demo page (GET /demo/, serving/pages.py).
cast(Any, Storefront).mount_asgi_app(demo_app(), path="/demo")

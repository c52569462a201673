"""The storefront demo page, mounted on the service at ``/demo``.

``GET /demo/`` is a plain HTML/JS page (``serving/static``: no build step, no external
resources) that drives the service's own endpoints the way a shop front would: a product grid,
view events, "Recently viewed", "You may also like" with reasons, a cart and its add-ons.

``GET /demo/catalog?limit=N`` lists the loaded bundle's items, most popular first, with their
category and price when the bundle's item table has them; it reads the running service
instance (``bentoml.get_current_service()``), so the page always shows what the model knows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from shoprec import schema

STATIC = Path(__file__).with_name("static")
MAX_CATALOG = 500
DEFAULT_CATALOG = 48


def _limit(request: Request) -> int | None:
    raw = request.query_params.get("limit", str(DEFAULT_CATALOG))
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= MAX_CATALOG else None


def catalog_rows(items: pl.DataFrame, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most popular items (train count, then item index) of a bundle's items."""
    sort_by = [c for c in (schema.ITEM_COUNT, schema.ITEM_IDX) if c in items.columns]
    descending = [c == schema.ITEM_COUNT for c in sort_by]
    top = items.sort(sort_by, descending=descending).head(limit)
    rows = []
    for rank, row in enumerate(top.iter_rows(named=True), start=1):
        entry: dict[str, Any] = {"item_id": str(row[schema.ITEM_ID]), "rank": rank}
        for column in (schema.CATEGORY, schema.PRICE, schema.ITEM_COUNT):
            if row.get(column) is not None:
                entry[column] = row[column]
        rows.append(entry)
    return rows


async def catalog(request: Request) -> Response:
    limit = _limit(request)
    if limit is None:
        return JSONResponse(
            {"error": f"limit must be an integer between 1 and {MAX_CATALOG}"}, status_code=400
        )
    try:
        service = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return JSONResponse({"error": "the service is not started yet"}, status_code=503)
    recommender = service.recommender
    bundle = recommender.bundle
    return JSONResponse(
        {
            "items": catalog_rows(bundle.items, limit),
            "model": str(bundle.meta.get("model_name", "")),
            "n_items": int(recommender.n_items),
            "churn": service.churn is not None,
        }
    )


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def demo_app() -> Starlette:
    """The ASGI app to mount at ``/demo`` (``/demo`` itself redirects to ``/demo/``)."""
    return Starlette(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            Route("/catalog", catalog, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
    )

"""The storefront demo page in a real headless browser (Debian's chromium, driven by Playwright).

The service runs in-process under uvicorn on 127.0.0.1 (the real ASGI app, the whole HTTP
stack) over a tiny vsknn bundle trained on the synthetic storefront. The browser opens
``/demo/``, clicks products, adds one to the cart, and the test checks what a shopper sees:
the recently-viewed strip, "You may also like" changing from popular items to picks with
reasons, the cart and its add-ons; and that the page made no request outside the service and
logged no error. A screenshot lands in the test's tmp folder.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and ``pip install playwright``
(never ``playwright install``: the browser comes from Debian). Without them the test skips,
except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import require
from tests.serving.conftest import storefront_app
from tests.serving.test_restart import free_port

CHROMIUM = Path(os.environ.get("SHOPREC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The browser, or a skip (a failure under CI=true) before anything is trained."""
    require(CHROMIUM.is_file(), f"{CHROMIUM} not found (apt-get install -y chromium)")
    require(
        importlib.util.find_spec("playwright") is not None,
        "playwright is not installed (pip install playwright; the browser comes from Debian)",
    )
    return CHROMIUM


@pytest.fixture(scope="module")
def vsknn_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoprec.training.config import ExperimentConfig
    from shoprec.training.fit import fit

    config = ExperimentConfig.model_validate(
        {
            "name": "page_vsknn",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path_factory.mktemp("page-runs")),
            "model": {"name": "vsknn", "k": 20, "sample_size": 100},
            "evaluation": {"enabled": False},
        }
    )
    return fit(config).bundle_dir


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="demo-page-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server thread died on start-up"
        assert time.monotonic() < deadline, "the server did not start in 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def items_in(page: Any, selector: str) -> list[str]:
    found: list[str] = page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.item)")
    return found


def test_shopper_journey_in_a_headless_browser(
    chromium: Path, vsknn_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("SHOPREC_NEXT_ITEM_BUNDLE", str(vsknn_bundle))
    monkeypatch.setenv("SHOPREC_STORE_URL", f"sqlite:///{tmp_path / 'events.sqlite'}")
    for key in ("SHOPREC_API_KEY", "SHOPREC_CHURN_BUNDLE", "SHOPREC_SERVING_SET"):
        monkeypatch.delenv(key, raising=False)

    with live_server(storefront_app()) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            requests: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} for {r.url}") if r.status >= 400 else None,
            )
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            journey(page, base, tmp_path)
            assert not problems, problems
            outside = [u for u in requests if not u.startswith(base)]
            assert not outside, f"the page reached outside the service: {outside}"
        finally:
            browser.close()


def journey(page: Any, base: str, tmp_path: Path) -> None:
    page.goto(f"{base}/demo/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.title() == "shoprec storefront demo"
    assert "vsknn" in page.inner_text("#model-info")

    # a new shopper: a grid of popular products, nothing viewed, popular picks
    grid = items_in(page, "#product-grid .product")
    assert len(grid) >= 20
    assert items_in(page, "#recently-viewed li") == []
    assert "Popular right now" in page.inner_text("#recs-note")
    popular = items_in(page, "#recommendations li")
    assert popular == grid[: len(popular)] and len(popular) == 8
    session = page.inner_text("#session-id")
    assert session.startswith("demo-")

    # view a product: it tops the recently-viewed strip, picks now come with reasons
    first, second = grid[0], grid[4]
    page.click(f"#product-grid .product[data-item='{first}'] .thumb")
    page.wait_for_selector(f"#recently-viewed li[data-item='{first}']")
    page.wait_for_function("document.querySelector('#recs-note').textContent.includes('Picked')")
    page.wait_for_function("document.body.dataset.pending === '0'")
    picks = items_in(page, "#recommendations li")
    assert picks and picks != popular and first not in picks
    reasons = page.eval_on_selector_all(
        "#recommendations li .reason", "els => els.map(e => e.textContent)"
    )
    assert all(r.strip() for r in reasons)
    assert any(not r.startswith("popular now") for r in reasons), reasons

    # a second product: newest first, and the picks follow the session
    page.click(f"#product-grid .product[data-item='{second}'] .name")
    page.wait_for_selector(f"#recently-viewed li:first-child[data-item='{second}']")
    page.wait_for_function("document.body.dataset.pending === '0'")
    assert items_in(page, "#recently-viewed li") == [second, first]
    assert first not in items_in(page, "#recommendations li")
    assert second not in items_in(page, "#recommendations li")
    assert "viewed" in page.get_attribute(f".product[data-item='{first}']", "class")

    # add a product to the cart: it is in the cart, add-ons appear, never the cart item itself
    third = grid[1]
    page.click(f"#product-grid .product[data-item='{third}'] button")
    page.wait_for_selector(f"#cart li[data-item='{third}']")
    page.wait_for_selector("#cart-addons li")
    page.wait_for_function("document.body.dataset.pending === '0'")
    assert page.inner_text("#cart-count") == "1"
    addons = items_in(page, "#cart-addons li")
    assert addons and third not in addons
    # the add-to-cart button did not also count as a view of the card
    assert items_in(page, "#recently-viewed li") == [second, first]

    # the events reached the service: it answers the same for this shopper over plain HTTP
    with httpx.Client(base_url=base, timeout=10) as client:
        r = client.post("/recently_viewed", json={"session_id": session})
        assert [i["item_id"] for i in r.json()["items"]] == [second, first]

    shot = tmp_path / "demo-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # a new shopper starts clean
    page.click("#new-shopper")
    page.wait_for_function("document.querySelector('#recs-note').textContent.includes('Popular')")
    page.wait_for_function("document.body.dataset.pending === '0'")
    assert items_in(page, "#recently-viewed li") == []
    assert items_in(page, "#cart li") == []
    assert page.inner_text("#session-id") != session

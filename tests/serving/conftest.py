"""Fixtures for in-process service tests: the whole HTTP stack through ``Storefront.to_asgi()``.

BentoML's Prometheus client needs ``PROMETHEUS_MULTIPROC_DIR`` in-process, and the service class
reads ``serving/config.yaml`` when it is imported, so the environment is prepared here, before
any test imports ``serving.service``. Everything else (bundle, store, limits, API key) is read
when the service instance starts, i.e. when a TestClient enters.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from tests.serving import fakes

# --doctest-modules would import it, and importing it registers the fake model for good: it is
# meant for the `bentoml serve` subprocess of test_restart.py only.
collect_ignore = ["fake_service.py"]

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="shoprec-prom-")


@functools.cache
def storefront_app() -> ASGIApp:
    """The service's ASGI app, built once per process.

    Building it twice registers BentoML's Prometheus metrics twice (DuplicateTimeseries), and
    there is no need to: every TestClient that enters runs the app's lifespan, which creates a
    fresh ``Storefront`` instance from the environment of that moment.
    """
    from serving.service import Storefront

    return Storefront.to_asgi()


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakes.make_bundle(tmp_path_factory.mktemp("bundle") / "next-item")


@pytest.fixture()
def serve(test_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``with serve(SHOPREC_API_KEY="k") as client:`` a fresh service over the test bundle.

    Keyword arguments become environment variables for that service (None removes one); the
    store defaults to a fresh sqlite file.
    """

    fakes.register(monkeypatch)

    @contextmanager
    def start(**env: str | None) -> Iterator[TestClient]:
        defaults: dict[str, str | None] = {
            "SHOPREC_NEXT_ITEM_BUNDLE": str(test_bundle),
            "SHOPREC_STORE_URL": f"sqlite:///{tmp_path}/events.sqlite",
            "SHOPREC_CHURN_BUNDLE": None,
            "SHOPREC_API_KEY": None,
            "SHOPREC_SERVING_SET": None,
        }
        for key, value in {**defaults, **env}.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        with TestClient(storefront_app()) as client:
            yield client

    return start


@pytest.fixture()
def client(serve: Callable[..., Any]) -> Iterator[TestClient]:
    """A fresh service with the default settings.

    Function-scoped on purpose: the ASGI app is shared (see :func:`storefront_app`) and can host
    one live instance at a time, and a fresh instance costs only a few tens of milliseconds.
    """
    with serve() as c:
        yield c

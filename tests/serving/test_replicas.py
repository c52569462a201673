"""Several Bento replicas behind one Redis store see one shopper state.

Starts two real ``bentoml serve serving.service:Storefront`` processes on two free ports of
127.0.0.1, both with ``SHOPREC_STORE_URL`` on the same Redis under a fresh key prefix and a
real next-item bundle (a ``pop`` model fitted on the tiny synthetic dataset). Events posted to
replica A are what replica B answers for recently viewed (per session and per user), B
recommends next items from the session history A recorded, and B recognises events that A
stored as duplicates (de-duplication is shared too, so a client may retry on any replica).
The key prefix is deleted afterwards. Two server start-ups in parallel: ~20-40 s here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoprec.training.config import ExperimentConfig
from shoprec.training.fit import fit
from tests.conftest import REPO_ROOT, require
from tests.serving.test_restart import free_port, kill_tree, wait_ready

BENTOML = Path(sys.executable).with_name("bentoml")
REDIS = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture()
def pop_bundle(tiny_dataset: Path, tmp_path: Path) -> Path:
    config = ExperimentConfig.model_validate(
        {
            "name": "replicas_pop",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": "pop"},
        }
    )
    return fit(config).bundle_dir


def _keys(prefix: str, delete: bool = False) -> list[bytes]:
    """The Redis keys under ``prefix`` (deleted first when ``delete``)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if delete and keys:
            client.delete(*keys)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
        return keys
    finally:
        client.close()


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards."""
    require(redis_up(), "Redis is not reachable at 127.0.0.1:6379")
    prefix = f"test-replicas-{uuid.uuid4().hex}:"
    yield prefix
    assert _keys(prefix, delete=True) == []


@contextmanager
def replica(
    tmp: Path, name: str, port: int, bundle: Path, store_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``bentoml serve`` of the real service on 127.0.0.1:``port`` (killed on exit)."""
    env = {
        **os.environ,
        "SHOPREC_NEXT_ITEM_BUNDLE": str(bundle),
        "SHOPREC_STORE_URL": store_url,
        "BENTOML_HOME": str(tmp / f"bentoml-{name}"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    for key in ("SHOPREC_API_KEY", "SHOPREC_CHURN_BUNDLE", "SHOPREC_SERVING_SET"):
        env.pop(key, None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve manages its own
    log = tmp / f"{name}.log"
    command: list[str | Path] = [BENTOML, "serve", "serving.service:Storefront", "--host"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        kill_tree(proc)


def view(n: int, session: str, user: str, item: str) -> dict[str, Any]:
    return {
        "event_id": f"{session}-e{n}",
        "session_id": session,
        "user_id": user,
        "item_id": item,
        "event_type": "view",
        "timestamp": 1_772_366_400 + n,
    }


def test_replicas_share_recently_viewed_through_redis(
    pop_bundle: Path, redis_prefix: str, tmp_path: Path, tiny_dataset: Path
) -> None:
    import polars as pl

    items = pl.read_parquet(tiny_dataset / "items.parquet").get_column("item_id").to_list()
    viewed = [str(i) for i in items[:4]]
    store_url = f"{REDIS}?prefix={redis_prefix}"
    ports = {"a": free_port(), "b": free_port()}
    while ports["b"] == ports["a"]:
        ports["b"] = free_port()
    with ExitStack() as stack:
        procs = {
            name: stack.enter_context(replica(tmp_path, name, port, pop_bundle, store_url))
            for name, port in ports.items()
        }
        for name, proc in procs.items():  # both start at once; wait for each to answer
            wait_ready(ports[name], proc, tmp_path / f"{name}.log")
        a = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{ports['a']}", timeout=10))
        b = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{ports['b']}", timeout=10))
        assert a.base_url != b.base_url and procs["a"].pid != procs["b"].pid

        events = [view(n, "s-shared", "u-shared", item) for n, item in enumerate(viewed)]
        r = a.post("/events", json={"events": events})
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": len(events), "duplicates": 0}
        assert _keys(redis_prefix), "replica A did not write to Redis"

        # B answers from what A stored: newest first, per session and per user
        for body in ({"session_id": "s-shared"}, {"user_id": "u-shared"}):
            r = b.post("/recently_viewed", json=body)
            assert r.status_code == 200, r.text
            assert [i["item_id"] for i in r.json()["items"]] == viewed[::-1]

        # B recommends from the session history A recorded (never an item already viewed)
        r = b.post("/next_items", json={"session_id": "s-shared", "k": 5})
        assert r.status_code == 200, r.text
        recs = [i["item_id"] for i in r.json()["items"]]
        assert recs and not set(recs) & set(viewed)

        # a retry on the other replica is recognised: de-duplication is shared as well
        r = b.post("/events", json={"events": events})
        assert r.json() == {"accepted": 0, "duplicates": len(events)}

        # and the other way round: B writes, A reads
        r = b.post("/events", json={"events": [view(9, "s-shared", "u-shared", viewed[0])]})
        assert r.json() == {"accepted": 1, "duplicates": 0}
        r = a.post("/recently_viewed", json={"session_id": "s-shared", "limit": 1})
        assert [i["item_id"] for i in r.json()["items"]] == [viewed[0]]

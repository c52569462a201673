"""Every acknowledged event survives ``kill -9`` of the real server.

Starts ``bentoml serve`` on 127.0.0.1 with the test bundle and a sqlite store, streams event
batches from a background thread, SIGKILLs the server and its workers while requests are in
flight, restarts the server on the same store and checks that every acknowledged event is
there: on disk (sqlite) and to the service (re-sending them yields only duplicates).
Two server start-ups make this the slowest serving test (~30 s here).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil

from tests.conftest import REPO_ROOT
from tests.serving import fakes

BENTOML = Path(sys.executable).with_name("bentoml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(tmp: Path, port: int, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "SHOPREC_NEXT_ITEM_BUNDLE": str(tmp / "bundle"),
        "SHOPREC_STORE_URL": f"sqlite:///{tmp / 'events.sqlite'}",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    for key in ("SHOPREC_API_KEY", "SHOPREC_CHURN_BUNDLE", "SHOPREC_SERVING_SET"):
        env.pop(key, None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve manages its own
    with (tmp / log_name).open("wb") as log:
        command = [BENTOML, "serve", "tests.serving.fake_service:Storefront"]
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(port, proc, tmp / log_name)
        yield proc
    finally:
        kill_tree(proc)


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and every process under it, all at once.

    BentoML's workers run in process groups of their own, so killing the group of
    ``bentoml serve`` alone would leave the worker that holds the store running.
    """
    try:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait(timeout=30)


def event(n: int) -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "session_id": f"s{n}",
        "user_id": f"u{n % 5}",
        "item_id": f"i{n % 7}",
        "event_type": "view",
        "timestamp": 1_772_366_400 + n,
    }


def test_acknowledged_events_survive_kill_9_and_restart(tmp_path: Path) -> None:
    fakes.make_bundle(tmp_path / "bundle")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=5) as client:
            while not stop.is_set():
                batch = [n, n + 1, n + 2]
                try:
                    r = client.post("/events", json={"events": [event(i) for i in batch]})
                except httpx.HTTPError:
                    return  # the server is gone; this batch was never acknowledged
                if r.status_code == 200 and r.json() == {"accepted": 3, "duplicates": 0}:
                    acked.extend(batch)
                n += 3

    with server(tmp_path, port, "first.log") as proc:
        sender = threading.Thread(target=stream)
        sender.start()
        deadline = time.monotonic() + 60
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        kill_tree(proc)  # mid-stream: the sender is still posting
        stop.set()
        sender.join(timeout=30)
    assert len(acked) >= 150, f"only {len(acked)} events acknowledged before the deadline"

    # 1. on disk, before anything restarts
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    missing = {f"e{n}" for n in acked} - stored
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"

    # 2. through the restarted service
    with server(tmp_path, port, "second.log"), httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/events", json={"events": [event(n) for n in acked[:500]]})
        assert r.json() == {"accepted": 0, "duplicates": len(acked[:500])}
        last = acked[-1]
        r = client.post("/recently_viewed", json={"session_id": f"s{last}"})
        assert [i["item_id"] for i in r.json()["items"]] == [f"i{last % 7}"]

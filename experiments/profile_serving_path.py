"""Where a ``next_items`` request's time goes, in one process (2026-12-04-serving-s8.md).

Two probes over a next-item bundle, with the request pool of ``bench_serving.py``
(random sessions of up to 10 items, Zipf over the bundle's items):

* ``asgi``: the service's whole ASGI stack (``Storefront.to_asgi()``, lifespan included), no
  sockets: wall time and the event loop thread's CPU time per request, p50, for ``/livez`` and
  ``/next_items``, each measured twice in alternation. ``--stub-model`` replaces the model
  with a fixed list, which leaves BentoML's request and response path alone.
* ``stages``: ``Recommender.next_items_batch`` on ``--batch`` sessions at a time (1: one
  session, what a lone request costs), timed per stage (the GRU's ``SessionStates.vectors``,
  ``DotScorer.top_of_vectors`` and its int8 kernel, ``_reasons``), with the GRU stepped as
  matrix products for batches of ``--matrix-gru-from`` sessions or more (0: never).

    .venv/bin/python experiments/profile_serving_path.py stages --bundle runs/NAME/bundle \\
        [--batch 8 --matrix-gru-from 4]
    SHOPREC_SERVING_SET="model.state_cache=0 batching.enabled=false" \\
        .venv/bin/python experiments/profile_serving_path.py asgi --bundle B [--stub-model]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import bench_serving as bs  # noqa: E402


def _sessions(bundle: Path) -> list[list[str]]:
    return bs.pool_sessions(bs.workload(bs.catalogue(bundle), 0, 2000)["next_items"])


def stages(bundle: Path, n: int, batch: int = 1, matrix_gru_from: int = 0) -> None:
    import torch

    from shoprec.export import load_bundle
    from shoprec.inference import Recommender

    torch.set_num_threads(1)
    rec = Recommender(load_bundle(bundle), state_cache=0, matrix_gru_from=matrix_gru_from)
    assert rec.states is not None and rec.dot is not None
    times: dict[str, list[float]] = collections.defaultdict(list)

    def timed(obj: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            times[label].append(time.perf_counter() - t)
            return out

        setattr(obj, name, wrapper)

    timed(rec.states, "vectors", "SessionStates.vectors (the GRU)")
    timed(rec.dot, "top_of_vectors", "DotScorer.top_of_vectors")
    timed(rec.dot, "bounds", "  bounds (coarse scores + radius)")
    timed(rec.dot.coarse, "_kernel", "    int8 kernel")
    timed(rec, "_reasons", "_reasons")
    sessions = _sessions(bundle)
    batches = [[sessions[(i * batch + j) % len(sessions)] for j in range(batch)] for i in range(n)]
    for part in batches[:50]:  # warm-up
        rec.next_items_batch(part, 10, [set(s) for s in part])
    times.clear()
    total = []
    for part in batches:
        t = time.perf_counter()
        rec.next_items_batch(part, 10, [set(s) for s in part])
        total.append(time.perf_counter() - t)
    print(f"batch {batch}, matrix_gru_from {matrix_gru_from}: p50 per batch")
    print(f"{'Recommender.next_items_batch, whole':40s} p50 {np.median(total) * 1e3:.3f} ms")
    for label, v in times.items():
        print(f"{label:40s} p50 {np.median(v) * 1e3:.3f} ms")


def asgi(bundle: Path, n: int, stub_model: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="shoprec-asgi-"))
    os.environ["SHOPREC_NEXT_ITEM_BUNDLE"] = str(bundle)
    os.environ["SHOPREC_STORE_URL"] = f"sqlite:///{work / 'events.sqlite'}"
    os.environ.setdefault("SHOPREC_SERVING_SET", "model.state_cache=0")
    if stub_model:
        from shoprec import inference

        fixed = [inference.Recommendation(f"x{i}", 1.0 - i / 10, "stub") for i in range(10)]

        def stub(self: Any, sessions: Any, k: Any, excludes: Any = None) -> Any:
            return [list(fixed) for _ in sessions]

        inference.Recommender.next_items_batch = stub  # type: ignore[method-assign]
    from serving.service import Storefront

    app = Storefront.to_asgi()  # type: ignore[attr-defined]
    bodies = [json.dumps({"items": s, "k": 10}).encode() for s in _sessions(bundle)]

    async def call(method: str, path: str, body: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 3000),
            "state": {},
        }
        sent = False
        out: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            out.append(message)

        await app(scope, receive, send)
        return int(out[0]["status"])

    async def main() -> None:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        started = asyncio.Event()

        async def lsend(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup"):
                started.set()

        life = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, lsend)
        )
        await started.wait()
        for label, method, path in [
            ("livez", "GET", "/livez"),
            ("next_items", "POST", "/next_items"),
            ("livez (again)", "GET", "/livez"),
            ("next_items (again)", "POST", "/next_items"),
        ]:
            walls, cpus = [], []
            for i in range(n):
                body = b"" if method == "GET" else bodies[i % len(bodies)]
                w0, c0 = time.perf_counter(), time.thread_time()
                status = await call(method, path, body)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.thread_time() - c0)
                assert status == 200, status
            print(
                f"{label:20s} wall p50 {np.median(walls) * 1e3:.3f} ms, "
                f"event-loop thread CPU p50 {np.median(cpus) * 1e3:.3f} ms"
            )
        await inbox.put({"type": "lifespan.shutdown"})
        await life

    asyncio.run(main())


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=["asgi", "stages"])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=None, help="requests per measurement")
    ap.add_argument("--stub-model", action="store_true", help="asgi: a fixed list, no model")
    ap.add_argument("--batch", type=int, default=1, help="stages: sessions per call")
    ap.add_argument(
        "--matrix-gru-from", type=int, default=0, help="stages: Recommender(matrix_gru_from=)"
    )
    args = ap.parse_args()
    bundle = args.bundle.resolve()
    if args.probe == "stages":
        stages(bundle, args.n or 1000, args.batch, args.matrix_gru_from)
    else:
        asgi(bundle, args.n or 300, args.stub_model)


if __name__ == "__main__":
    cli()

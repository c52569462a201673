"""Bounded load test of the storefront service on 127.0.0.1: latency and throughput.

What it does, all on this machine and nothing else:

1. builds a Diginetica-sized bundle: a GRU4Rec over 43,097 items with 512 units (the official
   Diginetica paramfile, i.e. what a Diginetica champion looks like; random weights), Zipf
   train counts, item and cart neighbours from synthetic Zipf sessions; or a V-SKNN
   (``--model vsknn``), fitted on a prepared dataset's train sessions with ``--data`` (e.g.
   ``runs/data/diginetica_srgnn``); or uses ``--bundle`` when given a real one. Requests use
   the bundle's own item ids, Zipf-distributed over its popularity order;
2. starts ``bentoml serve serving.service:Storefront`` with a fresh sqlite store (once per
   ``--batching`` mode and per ``--server-set`` variant), seeds it with shoppers' views;
3. runs closed-loop load for ``--duration`` seconds per scenario, at each ``--concurrency``, on
   ``GET /livez`` (the floor: BentoML's own cheapest route), ``POST /next_items`` and
   ``POST /recently_viewed``, with a minimal keep-alive HTTP/1.1 client (the load generator
   shares the 2 cores with the server, so it has to be cheap);
4. stops by itself, kills the server, writes ``--out``.json (every number + the command).

    .venv/bin/python experiments/bench_serving.py --duration 60 --out experiments/DATE-serving
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DIGINETICA_ITEMS = 43_097  # items in the usual Diginetica train split (SR-GNN preprocessing)


# --- the bundle --------------------------------------------------------------------------------
def build_bundle(
    path: Path, n_items: int, layers: list[int], seed: int, model_name: str = "gru4rec"
) -> Path:
    """A GRU4Rec (or V-SKNN) bundle over ``n_items`` with Zipf popularity and co-occurrence
    neighbours, from synthetic sessions."""
    import polars as pl
    import torch

    from shoprec import schema
    from shoprec.export import save_bundle
    from shoprec.inference import build_cart_neighbours, build_item_neighbours
    from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from shoprec.models.sknn import VSKNN

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    lengths = rng.geometric(0.2, size=100_000)
    clicks = rng.choice(np.arange(1, n_items + 1), size=int(lengths.sum()), p=popularity)
    sessions = np.split(clicks, np.cumsum(lengths)[:-1])
    counts = np.bincount(clicks, minlength=n_items + 1)[1:]
    model: Any = (
        VSKNN.fit(sessions, n_items)
        if model_name == "vsknn"
        else GRU4Rec(GRU4RecConfig(n_items=n_items, layers=layers)).eval()
    )
    aux = build_item_neighbours(sessions, n_items, top_n=50)
    aux.update(build_cart_neighbours([s[:3] for s in sessions[::4]], n_items, top_n=50))
    items = pl.DataFrame(
        {
            schema.ITEM_IDX: np.arange(1, n_items + 1, dtype=np.int32),
            schema.ITEM_ID: [str(100_000 + i) for i in range(1, n_items + 1)],
            schema.ITEM_COUNT: counts.astype(np.int64),
        },
        schema=schema.ITEMS_SCHEMA,
    )
    return save_bundle(path, model, items, aux=aux, extra={"note": "bench: synthetic"})


def build_from_data(path: Path, data: Path, model_name: str, layers: list[int], seed: int) -> Path:
    """A bundle over a prepared dataset's catalogue: V-SKNN fitted on its train sessions (as
    ``shoprec train`` would), or a GRU4Rec with random weights; neighbours from the sessions."""
    import torch

    from shoprec.data.dataset import PreparedDataset
    from shoprec.export import save_bundle
    from shoprec.inference import build_item_neighbours
    from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from shoprec.models.sknn import VSKNN

    torch.manual_seed(seed)
    dataset = PreparedDataset.open(data)
    sessions = dataset.train_sessions()
    n_items = dataset.n_items
    model: Any = (
        VSKNN.fit(sessions, n_items)
        if model_name == "vsknn"
        else GRU4Rec(GRU4RecConfig(n_items=n_items, layers=layers)).eval()
    )
    aux = build_item_neighbours(sessions, n_items)  # what shoprec train puts in a bundle
    return save_bundle(path, model, dataset.items, aux=aux, extra={"note": f"bench: {data}"})


def catalogue(bundle: Path) -> list[str]:
    """The bundle's item ids, most popular first (train count, then index)."""
    import polars as pl

    from shoprec import schema

    items = pl.read_parquet(bundle / "items.parquet")
    if schema.ITEM_COUNT in items.columns:
        items = items.sort([schema.ITEM_COUNT, schema.ITEM_IDX], descending=[True, False])
    else:
        items = items.sort(schema.ITEM_IDX)
    return [str(x) for x in items.get_column(schema.ITEM_ID).to_list()]


# --- the server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(bundle: Path, work: Path, port: int, overrides: str, log_path: list[Path]) -> Any:
    env = {
        **os.environ,
        "SHOPREC_NEXT_ITEM_BUNDLE": str(bundle),
        "SHOPREC_STORE_URL": f"sqlite:///{work / f'events-{port}.sqlite'}",
        "SHOPREC_SERVING_SET": overrides,
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    for key in ("SHOPREC_API_KEY", "SHOPREC_CHURN_BUNDLE", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    log_path.append(work / f"server-{port}.log")
    log = log_path[-1].open("wb")
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml), "serve", "serving.service:Storefront", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log.name}")
            with suppress(OSError):
                status = asyncio.run(one_request(port, "GET", "/readyz", None))
                if status == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"server not ready after 180 s; see {log.name}")
        yield proc
    finally:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for p in tree:
            with suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        psutil.wait_procs(tree, timeout=20)
        for p in tree:
            with suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=20)
        log.close()


# --- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------
def encode(method: str, path: str, body: Any) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def one_request(port: int, method: str, path: str, body: Any) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode(method, path, body))
        await writer.drain()
        status, _ = await read_response(reader)
        return status
    finally:
        writer.close()


def summary(latencies_ns: list[int], elapsed: float) -> dict[str, Any]:
    ms = np.array(latencies_ns, dtype=np.float64) / 1e6
    return {
        "requests": len(ms),
        "throughput_rps": round(len(ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def outcome(
    latencies: dict[str, list[int]], errors: dict[str, int], elapsed: float
) -> dict[str, Any]:
    """A scenario's errors and duration, and its latency summary (one per request kind when
    the pool mixes kinds)."""
    out: dict[str, Any] = {"errors": errors, "duration_s": round(elapsed, 2)}
    kinds = [k for k in latencies if latencies[k]]
    if len(kinds) == 1:
        out.update(summary(latencies[kinds[0]], elapsed))
    else:
        out.update({kind: summary(latencies[kind], elapsed) for kind in kinds})
    return out


async def load(
    port: int, requests: list[tuple[str, bytes]], concurrency: int, duration: float
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` connections, each sends its next request when answered.

    ``requests`` are (kind, bytes); latencies are summarised per kind, so a pool that alternates
    the floor and an endpoint measures both under the same contention (``--paired``).
    """
    latencies: dict[str, list[int]] = {kind: [] for kind, _ in requests}
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + duration

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # each connection walks the pool in order from its own (even) start: a paired pool
        # then alternates floor / endpoint on every connection
        i = 2 * (offset * len(requests) // (2 * concurrency))
        try:
            while time.perf_counter() < stop_at:
                kind, request = requests[i % len(requests)]
                t0 = time.perf_counter_ns()
                writer.write(request)
                try:
                    status, _ = await read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                latencies[kind].append(time.perf_counter_ns() - t0)
                if status != 200:
                    errors[f"{kind}:{status}"] = errors.get(f"{kind}:{status}", 0) + 1
                i += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    return outcome(latencies, errors, elapsed)


async def open_loop(
    port: int,
    requests: list[tuple[str, bytes]],
    rate: float,
    duration: float,
    seed: int = 0,
    connections: int = 64,
) -> dict[str, Any]:
    """Open loop: requests arrive as a Poisson process of ``rate`` per second, whatever the
    answers, each sent on a free one of ``connections`` keep-alive connections. A latency
    counts from the request's scheduled arrival, so time spent waiting for a free connection
    counts too (no coordinated omission). The real arrival rate is reported; the client's
    timers tick at about 1 ms, so arrivals closer than that come together."""
    rng = random.Random(seed)
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: dict[str, list[int]] = {kind: [] for kind, _ in requests}
    errors: dict[str, int] = {}

    async def one(kind: str, request: bytes, scheduled: float) -> None:
        reader, writer = await free.get()
        try:
            writer.write(request)
            status, _ = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            latencies[kind].append(int((time.perf_counter() - scheduled) * 1e9))
            if status != 200:
                errors[f"{kind}:{status}"] = errors.get(f"{kind}:{status}", 0) + 1
        free.put_nowait((reader, writer))

    tasks = []
    started = time.perf_counter()
    arrival = started
    i = 0
    while True:
        arrival += rng.expovariate(rate)
        if arrival - started > duration:
            break
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        kind, request = requests[i % len(requests)]
        i += 1
        tasks.append(asyncio.create_task(one(kind, request, arrival)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    while not free.empty():
        free.get_nowait()[1].close()
    out = outcome(latencies, errors, elapsed)
    out["offered_rps"] = rate
    return out


def scenario(
    kind: str, level: float, port: int, pool: list[tuple[str, bytes]], duration: float, seed: int
) -> Coroutine[Any, Any, dict[str, Any]]:
    """``kind`` "poisson": :func:`open_loop` at ``level`` requests/s; "closed": :func:`load`
    with ``level`` connections."""
    if kind == "poisson":
        return open_loop(port, pool, level, duration, seed)
    return load(port, pool, int(level), duration)


# --- workload ------------------------------------------------------------------------------------
def workload(ids: list[str], seed: int, n_users: int) -> dict[str, Any]:
    """Events for ``n_users`` shoppers and request pools for each endpoint: items drawn
    Zipf(0.9) over ``ids`` (most popular first). ``next_items`` asks for each shopper's last
    10 views once (a random session per request: no GRU state cache hits within a pass of the
    pool); ``next_items_clicks`` replays each shopper's session click by click, the whole
    session so far after each click (what a storefront sends; a state cache hits there)."""
    rng = random.Random(seed)
    weights = [1.0 / (i**0.9) for i in range(1, len(ids) + 1)]
    events, next_items, recent, clicks = [], [], [], []
    for u in range(n_users):
        length = rng.randint(2, 20)
        items = rng.choices(ids, weights=weights, k=length)
        events += [
            {
                "event_id": f"bench-{u}-{j}",
                "user_id": f"user-{u}",
                "session_id": f"sess-{u}",
                "item_id": item,
                "event_type": "view",
                "timestamp": 1_772_366_400 + u * 100 + j,
            }
            for j, item in enumerate(items)
        ]
        body = {"items": items[-10:], "k": 10}
        next_items.append(("next_items", encode("POST", "/next_items", body)))
        for j in range(1, length + 1):  # the storefront after each click: the session so far
            body = {"items": items[:j], "k": 10}
            clicks.append(("next_items_clicks", encode("POST", "/next_items", body)))
        body = {"user_id": f"user-{u}", "limit": 10}
        recent.append(("recently_viewed", encode("POST", "/recently_viewed", body)))
    return {
        "events": events,
        "livez": [("livez", encode("GET", "/livez", None))],
        "next_items": next_items,
        "next_items_clicks": clicks,
        "recently_viewed": recent,
    }


async def seed_store(port: int, events: list[dict[str, Any]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(0, len(events), 500):
        writer.write(encode("POST", "/events", {"events": events[i : i + 500]}))
        status, body = await read_response(reader)
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {body[:200]!r}")
    writer.close()


def pool_sessions(pool: list[tuple[str, bytes]]) -> list[list[str]]:
    return [json.loads(r.split(b"\r\n\r\n", 1)[1])["items"] for _, r in pool]


def interleave_clicks(clicks: list[list[str]], streams: int) -> list[list[str]]:
    """The click-by-click requests of ``streams`` shoppers at a time, round robin: a batch of
    ``streams`` requests then holds one click of each (as concurrent shoppers would send)."""
    sessions: list[list[list[str]]] = []
    for request in clicks:
        if len(request) == 1 or not sessions:
            sessions.append([])
        sessions[-1].append(request)
    out: list[list[str]] = []
    for lo in range(0, len(sessions), streams):
        group = sessions[lo : lo + streams]
        for step in range(max(len(g) for g in group)):
            out += [g[step] for g in group if step < len(g)]
    return out


def model_cost(
    bundle: Path,
    pools: dict[str, Any],
    reps: int = 200,
    pool: str = "next_items",
    state_cache: int = 0,
) -> dict[str, Any]:
    """In-process cost of Recommender.next_items_batch for 1 and 8 sessions (k=10, viewed
    items excluded, as the endpoint): what the model path costs without HTTP, on the same
    machine and in the same minute as the load test. Wall and CPU (thread) ms per call,
    p50/p99 over ``reps`` calls on different sessions. By default the random sessions with
    no state cache (every GRU step runs); ``pool="next_items_clicks", state_cache=N`` gives
    the click-by-click cost with the cache (labelled so in the output)."""
    import torch

    from shoprec.export import load_bundle
    from shoprec.inference import Recommender

    torch.set_num_threads(1)  # as the service (serving/config.yaml: server.torch_threads)
    rec = Recommender(load_bundle(bundle), state_cache=state_cache)
    sessions = pool_sessions(pools[pool])
    out: dict[str, Any] = {
        "workload": pool,
        "state_cache": rec.states.capacity if rec.states else 0,
        "top_k": f"{rec.dot.coarse.kind} candidates + exact" if rec.dot else "full ranking",
    }
    for b in (1, 8):
        wall, cpu, cands = [], [], []
        order = sessions if pool == "next_items" else interleave_clicks(sessions, b)
        for j in range(reps + 10):
            batch = [order[(j * b + q) % len(order)] for q in range(b)]
            excl = [set(s) for s in batch]
            c0, t0 = time.thread_time(), time.perf_counter()
            rec.next_items_batch(batch, 10, excl)
            if j >= 10:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                if rec.dot is not None:
                    cands.append(rec.dot.last_candidates)
        for name, values in (("wall", wall), ("cpu", cpu)):
            ms = np.array(values) * 1e3
            out[f"batch_{b}_{name}_ms"] = {
                "p50": round(float(np.percentile(ms, 50)), 3),
                "p99": round(float(np.percentile(ms, 99)), 3),
            }
        if cands:
            out[f"batch_{b}_candidates_p50"] = float(np.percentile(cands, 50))
            out[f"batch_{b}_candidates_p99"] = float(np.percentile(cands, 99))
    if rec.states is not None:
        out["state_lookups"] = dict(rec.states.lookups)
    return out


def compare_in_process(
    bundle: Path, pools: dict[str, Any], baseline: Path, reps: int = 150
) -> dict[str, Any]:
    """Before/after in one process: ``baseline`` is another version's ``inference.py`` (e.g.
    ``git show HEAD:src/shoprec/inference.py``), loaded as its own module over the same
    bundle. Calls alternate between the two (the order flips every call), on the same
    random sessions (no state cache), and the lists are asserted identical on every call."""
    import importlib.util

    import torch

    from shoprec.export import load_bundle
    from shoprec.inference import Recommender

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("baseline_inference", baseline)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    loaded = load_bundle(bundle)
    recs = {"before": module.Recommender(loaded), "after": Recommender(loaded)}
    sessions = pool_sessions(pools["next_items"])
    out: dict[str, Any] = {"baseline": str(baseline), "reps": reps}
    for b in (1, 8):
        times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in recs}
        score_diff = 0.0
        for j in range(reps + 10):
            batch = [sessions[(j * b + q) % len(sessions)] for q in range(b)]
            excl = [set(x) for x in batch]
            lists = {}
            for name in sorted(recs, reverse=bool(j % 2)):
                c0, t0 = time.thread_time(), time.perf_counter()
                lists[name] = recs[name].next_items_batch(batch, 10, excl)
                if j >= 10:
                    times[name]["wall"].append(time.perf_counter() - t0)
                    times[name]["cpu"].append(time.thread_time() - c0)
            for got, want in zip(lists["after"], lists["before"], strict=True):
                assert [r.item_id for r in got] == [r.item_id for r in want], (batch, got, want)
                score_diff = max(
                    score_diff, *(abs(g.score - w.score) for g, w in zip(got, want, strict=True))
                )
        for name, kinds in times.items():
            for kind, values in kinds.items():
                ms = np.array(values) * 1e3
                out[f"batch_{b}_{name}_{kind}_ms"] = {
                    "p50": round(float(np.percentile(ms, 50)), 3),
                    "p99": round(float(np.percentile(ms, 99)), 3),
                }
        out[f"batch_{b}_max_score_diff"] = score_diff
        out[f"batch_{b}_lists_identical"] = reps + 10
    return out


# --- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[],
        help="open loop instead: Poisson arrivals at these requests/s (--concurrency ignored)",
    )
    ap.add_argument("--endpoints", nargs="+", default=["livez", "next_items", "recently_viewed"])
    ap.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on"])
    ap.add_argument(
        "--server-set",
        nargs="+",
        default=[""],
        help="serving config overrides, one server per value (e.g. 'server.workers=2'); "
        "each is run with every --batching mode",
    )
    ap.add_argument("--items", type=int, default=DIGINETICA_ITEMS)
    ap.add_argument("--model", choices=["gru4rec", "vsknn"], default="gru4rec")
    ap.add_argument(
        "--layers", type=int, nargs="+", default=[512], help="GRU4Rec layers (official: 512)"
    )
    ap.add_argument("--data", type=Path, help="build the bundle over this prepared dataset")
    ap.add_argument("--bundle", type=Path, help="a real next-item bundle instead of building one")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--paired",
        action="store_true",
        help="alternate /livez and the endpoint on every connection: both measured under the "
        "same load (for a shared machine; the endpoint's throughput is then only half the mix)",
    )
    ap.add_argument(
        "--baseline-inference",
        type=Path,
        help="also compare in-process with this version of src/shoprec/inference.py "
        "(before/after, alternating calls, identical lists asserted)",
    )
    ap.add_argument(
        "--in-process-only", action="store_true", help="measure in-process only, no server"
    )
    ap.add_argument("--out", type=Path, help="write OUT.json")
    args = ap.parse_args(argv)

    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime at start: {uptime_start}", flush=True)
    with tempfile.TemporaryDirectory(prefix="shoprec-bench-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        if args.bundle:
            bundle = args.bundle
        elif args.data:
            bundle = build_from_data(work / "bundle", args.data, args.model, args.layers, args.seed)
        else:
            bundle = build_bundle(work / "bundle", args.items, args.layers, args.seed, args.model)
        print(f"bundle ready in {time.perf_counter() - t:.1f} s: {bundle}", flush=True)
        meta = json.loads((bundle / "bundle.json").read_text())
        pools = workload(catalogue(bundle), args.seed, args.users)
        warm_pools = workload(catalogue(bundle), args.seed + 1, args.users)
        floor_req = pools["livez"][0]
        cost = model_cost(bundle, pools)
        print(f"in-process model cost: {cost}", flush=True)
        cost_clicks = model_cost(bundle, pools, pool="next_items_clicks", state_cache=10_000)
        print(f"in-process, click by click, state cache on: {cost_clicks}", flush=True)
        compare = None
        if args.baseline_inference:
            compare = compare_in_process(bundle, pools, args.baseline_inference)
            print(f"in-process before/after: {compare}", flush=True)
        runs = []
        servers = []
        variants = [(v, m) for v in args.server_set for m in args.batching]
        if args.in_process_only:
            variants = []
        for variant, mode in variants:
            port = free_port()
            overrides = f"batching.enabled={str(mode == 'on').lower()} {variant}".strip()
            logs: list[Path] = []
            with serve(bundle, work, port, overrides, logs):
                ready = [
                    line.strip()
                    for line in logs[0].read_text(errors="replace").splitlines()
                    if "storefront ready" in line
                ]
                servers.append({"overrides": overrides, "ready_log": ready})
                print(f"server {overrides!r}: {ready}", flush=True)
                asyncio.run(seed_store(port, pools["events"]))
                for endpoint in args.endpoints:
                    pool = pools[endpoint]
                    if args.paired and endpoint != "livez":
                        floor = pools["livez"][0]
                        pool = [r for request in pool for r in (floor, request)]
                    # the click-by-click pool warms up on other shoppers' sessions: its own
                    # requests would be in the state cache when the timed run replays them
                    warm = pool
                    if endpoint == "next_items_clicks":
                        other = warm_pools["next_items"]
                        warm = (
                            [x for req in other for x in (floor_req, req)] if args.paired else other
                        )
                    # open loop (--rates) or closed loop (--concurrency): one scenario each
                    levels = [("poisson", r) for r in args.rates] or [
                        ("closed", float(c)) for c in args.concurrency
                    ]
                    for kind, level in levels:
                        labels = (
                            {"arrivals": "poisson"}
                            if kind == "poisson"
                            else {"concurrency": int(level)}
                        )
                        if args.warmup:
                            asyncio.run(
                                scenario(kind, level, port, warm, args.warmup, args.seed + 1)
                            )
                        load_before = os.getloadavg()[0]
                        stats = asyncio.run(
                            scenario(kind, level, port, pool, args.duration, args.seed)
                        )
                        stats.update(
                            endpoint=endpoint,
                            **labels,
                            batching=mode,
                            server_set=variant,
                            loadavg_1m_before=round(load_before, 2),
                            loadavg_1m_after=round(os.getloadavg()[0], 2),
                        )
                        runs.append(stats)
                        print(json.dumps(stats), flush=True)
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "uptime_at_start": uptime_start,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "bundle": {
            "path": str(args.bundle) if args.bundle else f"built ({args.data or 'synthetic'})",
            "model": meta["model_name"],
            "model_config": meta["model_config"],
            "n_items": meta["n_items"],
        },
        "model_cost_in_process": cost,
        "model_cost_in_process_clicks_cache_on": cost_clicks,
        "in_process_before_after": compare,
        "servers": servers,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

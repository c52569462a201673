"""Can ``prepare`` handle an event log larger than the memory it may use?

Generates (once, cached) a synthetic storefront CSV of ``--events`` events (30M: ~2.2 GB), then
runs ``shoprec.data.prepare.prepare`` with ``configs/data/synthetic.yaml`` on it in a fresh
subprocess under a hard address-space limit (``RLIMIT_AS``, set before the interpreter starts)
smaller than the CSV, and records whether it finishes, the wall time, the child's peak RSS
(``wait4`` rusage) and the stage it was in when it died (every pipeline function that
``prepare`` calls is wrapped to log entry/exit with the process's RSS, peak RSS and peak
address space to a file that survives an abort).

Why RLIMIT_AS: it needs no privileges and is exact, but it counts address space, not memory:
reservations that never touch RAM count too. The child runs with ``MALLOC_ARENA_MAX=2`` so
glibc's per-thread malloc arenas (64 MiB of reserved address space per thread) do not eat the
budget; Python + Polars alone then take ~0.55 GB of address space before reading a byte.

``--src DIR`` runs another source tree (e.g. a copy with the streaming patch of the report
applied); give it several times to compare, each labelled by ``--label``. ``--no-limit`` adds a
reference run of each tree without the limit (for its unconstrained peak RSS).

Run from the repository root::

    .venv/bin/python experiments/bench_streaming.py --events 30M --limit-gb 1.5 \\
        --src src --label current --src /tmp/shoprec-streaming/patched/src --label patched

Writes ``experiments/YYYY-MM-DD-streaming.json`` and the results block of
``experiments/YYYY-MM-DD-streaming.md`` (text outside the markers is kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "data" / "synthetic.yaml"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# Allocator settings of the prepare child, so that address space tracks memory in use:
# glibc reserves 64 MiB of address space per thread arena; Polars' bundled jemalloc keeps
# freed pages mapped ("retain") unless told otherwise.
CHILD_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "_RJEM_MALLOC_CONF": "retain:false,dirty_decay_ms:0,muzzy_decay_ms:0",
}
SHARED_CACHE = Path("/tmp/shoprec-bench")  # bench_prepare.py's CSV cache, reused read-only
# Functions ``prepare`` looks up in its own module namespace: wrapped to trace the stages.
TRACED = (
    "read_events",
    "validate",
    "validate_streaming",
    "_stats_of",
    "sessionize_partitioned",
    "filter_sessions_and_items",
    "split_cutoffs",
    "_sink",
    "_accepted_stats",
    "_write_quarantine",
    "sessionize",
    "apply_filters",
    "time_split",
    "fit_item_index",
    "apply_item_index",
    "_drop_short_sessions",
    "build_cases",
    "_write_parts",
    "_part_stats",
)


def parse_size(text: str) -> int:
    """``30M`` -> 30_000_000, ``500k`` -> 500_000."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def proc_status() -> dict[str, float]:
    """This process's RSS, peak RSS and peak address space, in MB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmPeak", "VmSize"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# --- child modes (fresh interpreters) -----------------------------------------------------------


def child_generate(n_events: int, out_dir: Path, seed: int) -> dict[str, Any]:
    from shoprec.data.synth import SynthConfig, write_synthetic

    t0 = time.perf_counter()
    path = write_synthetic(SynthConfig.for_events(n_events, seed=seed), out_dir)
    with open(path, "rb") as f:
        rows = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b"")) - 1
    return {"rows": rows, "csv_bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}


def child_prepare(csv: Path, out_dir: Path, trace: Path) -> dict[str, Any]:
    import functools
    import inspect

    import shoprec.data.prepare as prep
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig

    t_start = time.perf_counter()
    log = trace.open("a", buffering=1)

    def wrap(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            log.write(json.dumps({"stage": name, "at": "enter", **_now(t_start)}) + "\n")
            result = fn(*args, **kwargs)
            log.write(json.dumps({"stage": name, "at": "exit", **_now(t_start)}) + "\n")
            return result

        return traced

    for name in TRACED:
        fn = getattr(prep, name, None)
        if callable(fn):
            setattr(prep, name, wrap(name, fn))
    config = load_config(DataConfig, PRESET)
    # a tree with the streaming path uses it (the point of the run); others run as they are
    kwargs: dict[str, Any] = {}
    if "streaming" in inspect.signature(prep.prepare).parameters:
        kwargs["streaming"] = True
    t0 = time.perf_counter()
    manifest = prep.prepare(
        config, output=out_dir, input_path=str(csv), config_path=PRESET, **kwargs
    )
    keep = ("rows_read", "rows_accepted", "rows_duplicate", "events", "sessions", "items")
    return {
        "prepare_s": round(time.perf_counter() - t0, 1),
        "shoprec": prep.__file__,
        "prepare_kwargs": kwargs,
        "manifest": {k: manifest.get(k) for k in keep}
        | {"test_cases": manifest.get("test_cases"), "valid_cases": manifest.get("valid_cases")},
        **{f"final_{k}_mb": v for k, v in proc_status().items()},
    }


def _now(t_start: float) -> dict[str, float]:
    return {"t": round(time.perf_counter() - t_start, 2), **proc_status()}


# --- parent -------------------------------------------------------------------------------------


def generator_hash() -> str:
    """Fingerprint of the generator's source: a cached CSV from another version is stale."""
    return hashlib.sha256((REPO / "src/shoprec/data/synth.py").read_bytes()).hexdigest()[:16]


def ensure_csv(n: int, label: str, scratch: Path, seed: int) -> dict[str, Any]:
    """The cached CSV of ``n`` events (the layout of ``bench_prepare.py``, whose cache is
    reused read-only when its generator is the current one)."""
    folder = scratch / f"synth-{label}-seed{seed}"
    for cache in (folder, SHARED_CACHE / folder.name):
        done = cache / "bench.json"
        if done.is_file():
            cached: dict[str, Any] = json.loads(done.read_text())
            if cached.get("generator") == generator_hash() and Path(cached["csv"]).is_file():
                return {**cached, "cached": True}
    print(f"generating ~{n:,} events -> {folder}", flush=True)
    cmd = [sys.executable, __file__, "--child-generate", str(n), str(folder), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info.update(csv=str(folder / "events.csv"), generator=generator_hash())
    done.write_text(json.dumps(info, indent=2))
    return {**info, "cached": False}


def run_prepare(
    src: Path, csv: Path, out_dir: Path, limit_bytes: int | None, timeout: float
) -> dict[str, Any]:
    """One prepare in a child with ``src`` first on the path, under ``limit_bytes`` of
    address space (None: no limit). Never raises for the child's failure: it is a result."""
    trace = out_dir.with_suffix(".trace.jsonl")
    trace.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), **CHILD_ENV}
    cmd = [sys.executable, __file__, "--child-prepare", str(csv), str(out_dir), str(trace)]

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    t0 = time.perf_counter()
    logs = out_dir.with_suffix(".stdout"), out_dir.with_suffix(".stderr")
    with logs[0].open("wb") as so, logs[1].open("wb") as se:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=so, stderr=se, preexec_fn=limit)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (peak RSS)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stdout, stderr = logs[0].read_bytes(), logs[1].read_bytes()
    stages = (
        [json.loads(line) for line in trace.read_text().splitlines()] if trace.is_file() else []
    )
    entered = [s["stage"] for s in stages if s["at"] == "enter"]
    exited = [s["stage"] for s in stages if s["at"] == "exit"]
    open_stages = list(entered)
    for name in exited:
        open_stages.remove(name)
    result: dict[str, Any] = {
        "src": str(src),
        "limit_gb": None if limit_bytes is None else round(limit_bytes / 1e9, 3),
        "returncode": proc.returncode,
        "finished": proc.returncode == 0,
        "wall_s": round(wall, 1),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),  # wait4: the child's peak RSS
        "stages": stages,
        "died_in": open_stages,
        "stderr_tail": stderr.decode(errors="replace")[-1500:],
        "command": shlex.join(cmd),
    }
    if proc.returncode == 0:
        result.update(json.loads(stdout.decode().strip().splitlines()[-1]))
    if stages:
        result["peak_vm_mb"] = max(s["VmPeak"] for s in stages)  # at the last traced point
    return result


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Whether two prepare outputs hold equal Parquet frames and manifests (but timings)."""
    import polars as pl
    from polars.testing import assert_frame_equal

    left, right = Path(a["output"]), Path(b["output"])
    differ = []
    for path in sorted(left.glob("*.parquet")):
        try:
            assert_frame_equal(pl.read_parquet(path), pl.read_parquet(right / path.name))
        except (AssertionError, FileNotFoundError) as exc:
            differ.append(f"{path.name}: {str(exc)[:200]}")
    skip = {"created_at", "seconds"}
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (left, right))
    differ += [
        f"manifest.{k}" for k in sorted((set(ma) | set(mb)) - skip) if ma.get(k) != mb.get(k)
    ]
    files = sorted(p.name for p in left.glob("*.parquet"))
    return {"equal": not differ, "files": files, "differences": differ}


def stage_table(run: dict[str, Any]) -> list[str]:
    """Per traced function (in order of first call): calls, seconds, and the largest RSS,
    peak RSS and peak address space seen on leaving it."""
    rows = [
        "| stage | calls | s | RSS MB after | peak RSS MB | peak VM MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    agg: dict[str, dict[str, float]] = {}
    start: dict[str, float] = {}
    for s in run["stages"]:
        if s["at"] == "enter":
            start[s["stage"]] = s["t"]
            continue
        a = agg.setdefault(s["stage"], {"calls": 0, "s": 0.0, "rss": 0, "hwm": 0, "vm": 0})
        a["calls"] += 1
        a["s"] += s["t"] - start.pop(s["stage"], s["t"])
        a["rss"] = max(a["rss"], s["VmRSS"])
        a["hwm"] = max(a["hwm"], s["VmHWM"])
        a["vm"] = max(a["vm"], s["VmPeak"])
    for name, a in agg.items():
        rows.append(
            f"| {name} | {a['calls']:.0f} | {a['s']:.1f} | {a['rss']:.0f} | {a['hwm']:.0f}"
            f" | {a['vm']:.0f} |"
        )
    for name in run["died_in"]:
        rows.append(f"| **{name}** (died here) | | | | | |")
    return rows


def write_report(out_prefix: Path, report: dict[str, Any]) -> None:
    out_prefix.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    data = report["data"]
    lines = [
        BEGIN,
        f"Command: `{report['command']}`",
        "",
        f"Input: `{data['csv']}`: {data['rows']:,} events, {data['csv_bytes'] / 1e9:.2f} GB "
        f"(synthetic generator {data['generator']}). Limit: RLIMIT_AS = "
        f"{report['limit_gb']} GB (address space); child env `{json.dumps(CHILD_ENV)}`. Machine: "
        f"{report['machine']['cpus']} CPUs, load {report['machine']['load_before']} before.",
        "",
        "| tree | limit GB | finished | wall s | peak RSS MB | peak VM MB (traced) | died in |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for run in report["runs"]:
        lines.append(
            f"| {run['label']} | {run['limit_gb'] or 'none'} | {'yes' if run['finished'] else 'no'}"
            f" | {run['wall_s']} | {run['max_rss_mb']} | {run.get('peak_vm_mb', '?')}"
            f" | {', '.join(run['died_in']) or '-'} |"
        )
    for run in report["runs"]:
        limit = run["limit_gb"] or "no limit"
        lines += ["", f"### {run['label']} ({limit})", "", f"`{run['command']}`", ""]
        lines += stage_table(run)
        if not run["finished"]:
            lines += ["", "```", run["stderr_tail"].strip()[-800:], "```"]
        else:
            lines += ["", f"manifest: `{json.dumps(run['manifest'])}`"]
        if "same_as" in run:
            same = run["same_as"]
            verdict = "equal" if same["equal"] else f"DIFFERENT: {same['differences']}"
            lines += [
                "",
                f"Output vs `{same['label']}`'s (every Parquet file frame by frame, and the "
                f"manifest but its timings): **{verdict}**.",
            ]
    lines.append(END)
    md = out_prefix.with_suffix(".md")
    text = (
        md.read_text()
        if md.is_file()
        else f"# Streaming prepare ({date.today()})\n\n{BEGIN}\n{END}\n"
    )
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    md.write_text(head + "\n".join(lines) + tail)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", default="30M")
    p.add_argument("--limit-gb", type=float, default=1.5, help="RLIMIT_AS of the prepare child")
    p.add_argument("--scratch", default="/tmp/shoprec-streaming", help="CSV cache and outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--src", action="append", default=None, help="source tree(s) to run")
    p.add_argument("--label", action="append", default=None, help="a name per --src")
    p.add_argument(
        "--no-limit",
        nargs="*",
        metavar="LABEL",
        help="also run these trees (all when none is named) without the limit",
    )
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out-prefix", default=str(REPO / "experiments" / f"{date.today()}-streaming"))
    p.add_argument("--child-generate", nargs=3, metavar=("N", "DIR", "SEED"))
    p.add_argument("--child-prepare", nargs=3, metavar=("CSV", "OUT", "TRACE"))
    args = p.parse_args()
    if args.child_generate:
        n, folder, seed = args.child_generate
        print(json.dumps(child_generate(int(n), Path(folder), int(seed))))
        return 0
    if args.child_prepare:
        csv, out, trace = args.child_prepare
        print(json.dumps(child_prepare(Path(csv), Path(out), Path(trace))))
        return 0

    srcs = [Path(s) for s in (args.src or ["src"])]
    labels = args.label or [s.resolve().parent.name if s.name == "src" else s.name for s in srcs]
    if len(labels) != len(srcs):
        p.error("give one --label per --src")
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    label = args.events.upper()
    data = ensure_csv(parse_size(args.events), label, scratch, args.seed)
    limit = int(args.limit_gb * 1e9)
    runs = []
    for src, name in zip(srcs, labels, strict=True):
        unlimited = args.no_limit is not None and (not args.no_limit or name in args.no_limit)
        for lim in [limit, None] if unlimited else [limit]:
            tag = f"{name}-{'limit' if lim else 'nolimit'}"
            out_dir = scratch / f"streaming-{label}-{tag}"
            print(f"[{tag}] prepare {data['csv']} (limit {lim})", flush=True)
            run = run_prepare(src, Path(data["csv"]), out_dir, lim, args.timeout)
            run["label"] = name
            run["output"] = str(out_dir)
            runs.append(run)
            print(
                f"[{tag}] finished={run['finished']} wall={run['wall_s']}s "
                f"peak_rss={run['max_rss_mb']}MB died_in={run['died_in']}",
                flush=True,
            )
    finished = [r for r in runs if r["finished"]]
    for run in finished[1:]:  # every finished run against the first: the same dataset?
        run["same_as"] = {"label": finished[0]["label"], **compare(finished[0], run)}
    report = {
        "date": str(date.today()),
        "command": shlex.join([sys.executable, *sys.argv]),
        "limit_gb": args.limit_gb,
        "data": data,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
    }
    write_report(Path(args.out_prefix), report)
    print(f"wrote {args.out_prefix}.json/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

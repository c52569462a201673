"""Scaling benchmark of ``shoprec data prepare`` on the synthetic storefront (1M/10M/30M events).

Why: the target is 10M events prepared end to end in <= 20 s and <= 3 GB peak RSS on 2 cores.
Each size is generated once (CSV cached under ``--scratch``, outside the repository), then
``shoprec.data.prepare.prepare`` runs with ``configs/data/synthetic.yaml`` in a fresh
subprocess that reports its own wall time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``),
so imports, caches and the generator's memory never leak into the numbers. ``--steps`` also
times each stage of the pipeline separately (same functions, same order as ``prepare``) to
show where the time goes.

Run from the repository root::

    .venv/bin/python experiments/bench_prepare.py                 # 1M, 10M, 30M
    .venv/bin/python experiments/bench_prepare.py --sizes 1M --steps 1M

Writes ``experiments/YYYY-MM-DD-prepare-scaling.{json,md}`` (``--out-prefix`` to change).
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
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "data" / "synthetic.yaml"
TARGET_SECONDS = 20.0
TARGET_RSS_GB = 3.0


def parse_size(text: str) -> int:
    """``1M`` -> 1_000_000, ``500k`` -> 500_000, ``30000000`` -> 30_000_000."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- child modes (run in a fresh interpreter) ---------------------------------------------------


def child_generate(n_events: int, out_dir: Path, seed: int) -> dict[str, Any]:
    from shoprec.data.synth import SynthConfig, write_synthetic

    t0 = time.perf_counter()
    cfg = SynthConfig.for_events(n_events, seed=seed)
    t1 = time.perf_counter()
    path = write_synthetic(cfg, out_dir)
    t2 = time.perf_counter()
    with open(path, "rb") as f:
        rows = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b"")) - 1
    return {
        "users": cfg.users,
        "rows": rows,
        "csv_bytes": path.stat().st_size,
        "calibrate_s": round(t1 - t0, 2),
        "generate_write_s": round(t2 - t1, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child_prepare(csv: Path, out_dir: Path) -> dict[str, Any]:
    t_import = time.perf_counter()
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare

    config = load_config(DataConfig, PRESET)
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = prepare(config, output=out_dir, input_path=str(csv), config_path=PRESET)
    t1, c1 = time.perf_counter(), time.process_time()
    keep = ("rows_read", "rows_accepted", "rows_quarantined", "events", "sessions", "items")
    return {
        "import_s": round(t0 - t_import, 2),
        "prepare_s": round(t1 - t0, 2),
        "prepare_cpu_s": round(c1 - c0, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "manifest": {k: manifest.get(k) for k in keep}
        | {
            "filters": manifest.get("filters"),
            "split": manifest.get("split"),
            "test_cases": manifest.get("test_cases"),
            "valid_cases": manifest.get("valid_cases"),
        },
    }


def child_steps(csv: Path, out_dir: Path) -> dict[str, Any]:
    """The stages of ``prepare`` for an event log, timed one by one (same calls, same order).

    ``prepare`` overlaps the statistics and the parquet writes with the main steps in a
    second thread; here every stage runs alone, so the sum is the work, not the wall time.
    """
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import _accepted_stats, _drop_short_sessions, _part_stats, _write
    from shoprec.data.readers import read_events
    from shoprec.data.sessions import apply_filters, sessionize
    from shoprec.data.split import apply_item_index, build_cases, fit_item_index, time_split
    from shoprec.data.validate import validate

    config = load_config(DataConfig, PRESET)
    steps: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        steps[name] = round(now - clock, 2)
        cpu[name] = round(cpu_now - cpu_clock, 2)
        rss[name] = round(peak_rss_mb(), 1)
        clock, cpu_clock = now, cpu_now

    raw = read_events(config, str(csv))
    lap("read (lazy plan)")
    checked = validate(raw, config, False)
    lap("read + validate (collect)")
    _accepted_stats([checked])
    lap("accepted stats")
    events = sessionize(checked.accepted.lazy(), config.sessions).collect()
    checked.accepted = checked.accepted.clear()
    lap("sessionize")
    filtered, _ = apply_filters(events.lazy(), config.filters)
    del events
    lap("apply_filters")
    parts = time_split(filtered, config.split)
    del filtered
    lap("time_split")
    items = fit_item_index(parts.train)
    train, _ = apply_item_index(parts.train, items)
    lap("fit + apply item index (train)")
    cases = {}
    evals = {}
    for name, part in (("valid", parts.valid), ("test", parts.test)):
        if part is None:
            continue
        indexed, _ = apply_item_index(part, items)
        min_len = config.split.min_test_session_length
        evals[name] = _drop_short_sessions(indexed, min_len)[0]
        cases[name] = build_cases(evals[name], min_len)
    lap("index + build_cases (valid, test)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(train, out_dir / "train.parquet")
    _write(items, out_dir / "items.parquet")
    for name, frame in evals.items():
        _write(frame, out_dir / f"{name}.parquet")
    for name, frame in cases.items():
        _write(frame, out_dir / f"{name}_cases.parquet")
    lap("write parquet")
    _part_stats({"train": train, **evals}, cases, items)
    lap("part stats")
    return {
        "steps_s": steps,
        "steps_cpu_s": cpu,
        "peak_rss_mb_after": rss,
        "total_s": round(sum(steps.values()), 2),
        "total_cpu_s": round(sum(cpu.values()), 2),
        "train_events": train.height,
        "cases": {k: v.height for k, v in cases.items()},
    }


# --- parent -------------------------------------------------------------------------------------


def run_child(args: list[str], timeout: float) -> tuple[dict[str, Any], float]:
    """Run this script in a child mode; return its JSON report and the parent-side wall time."""
    cmd = [sys.executable, __file__, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def generator_hash() -> str:
    """Fingerprint of the generator's source: a cached CSV from another version is stale."""
    src = (REPO / "src" / "shoprec" / "data" / "synth.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:16]


def ensure_data(n: int, label: str, scratch: Path, seed: int) -> dict[str, Any]:
    folder = scratch / f"synth-{label}-seed{seed}"
    done = folder / "bench.json"
    if done.is_file():
        cached: dict[str, Any] = json.loads(done.read_text())
        if cached.get("generator") == generator_hash():
            cached["cached"] = True
            return cached
    print(f"[{label}] generating ~{n:,} events -> {folder}", flush=True)
    info, wall = run_child(["--child-generate", str(n), str(folder), str(seed)], timeout=3600)
    info["wall_s"] = round(wall, 2)
    info["csv"] = str(folder / "events.csv")
    info["generator"] = generator_hash()
    done.write_text(json.dumps(info, indent=2))
    info["cached"] = False
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1M,10M,30M", help="comma-separated event counts")
    p.add_argument("--scratch", default="/tmp/shoprec-bench", help="cache for generated CSVs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        default="",
        metavar="SIZES",
        help="also time each pipeline stage for these sizes (comma-separated, e.g. 1M,10M)",
    )
    p.add_argument("--out-prefix", default=None, help="report path without extension")
    p.add_argument("--timeout", type=float, default=1800.0, help="per prepare run, seconds")
    p.add_argument(
        "--repeat", type=int, default=1, help="prepare runs per size (the table shows the fastest)"
    )
    # child modes (internal)
    p.add_argument(
        "--child-generate", nargs=3, metavar=("N", "DIR", "SEED"), help=argparse.SUPPRESS
    )
    p.add_argument("--child-prepare", nargs=2, metavar=("CSV", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--child-steps", nargs=2, metavar=("CSV", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child_generate:
        n, folder, seed = args.child_generate
        print(json.dumps(child_generate(int(n), Path(folder), int(seed))))
        return 0
    if args.child_prepare:
        print(json.dumps(child_prepare(Path(args.child_prepare[0]), Path(args.child_prepare[1]))))
        return 0
    if args.child_steps:
        print(json.dumps(child_steps(Path(args.child_steps[0]), Path(args.child_steps[1]))))
        return 0

    import polars as pl

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    results: list[dict[str, Any]] = []
    for label in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        n = parse_size(label)
        data = ensure_data(n, label, scratch, args.seed)
        out_dir = scratch / f"prepared-{label}-seed{args.seed}"
        print(f"[{label}] prepare {data['rows']:,} rows", flush=True)
        entry: dict[str, Any] = {"size": label, "target_events": n, "data": data}
        runs: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            try:
                load_start = [round(x, 2) for x in os.getloadavg()]
                rep, wall = run_child(["--child-prepare", data["csv"], str(out_dir)], args.timeout)
                runs.append(
                    rep
                    | {
                        "process_wall_s": round(wall, 2),
                        "loadavg_1_5_15_at_start": load_start,
                        "loadavg_1min_before_after": [
                            load_start[0],
                            round(os.getloadavg()[0], 2),
                        ],
                    }
                )
                print(
                    f"[{label}] prepare {rep['prepare_s']} s, CPU {rep['prepare_cpu_s']} s "
                    f"(process {wall:.1f} s), peak RSS {rep['peak_rss_mb'] / 1024:.2f} GB, "
                    f"load at start {load_start}",
                    flush=True,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                entry["prepare_error"] = str(exc)[-2000:]
                print(f"[{label}] prepare FAILED: {str(exc)[-500:]}", flush=True)
                break
        if runs:
            # the table shows the fastest run (least disturbed by other processes); all runs
            # are in the JSON
            entry["prepare"] = min(runs, key=lambda r: r["prepare_s"])
            entry["prepare_runs"] = runs
        if label in {x.strip() for x in args.steps.split(",")}:
            try:
                rep, wall = run_child(
                    ["--child-steps", data["csv"], str(out_dir) + "-steps"], args.timeout
                )
                entry["steps"] = rep
                print(f"[{label}] steps {rep['steps_s']}", flush=True)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                entry["steps_error"] = str(exc)[-2000:]
                print(f"[{label}] steps FAILED: {str(exc)[-500:]}", flush=True)
        results.append(entry)

    report = {
        "command": command,
        "date": date.today().isoformat(),
        "preset": str(PRESET.relative_to(REPO)),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "polars": pl.__version__,
            "polars_threads": pl.thread_pool_size(),
            "platform": platform.platform(),
        },
        "targets": {"events": 10_000_000, "seconds": TARGET_SECONDS, "peak_rss_gb": TARGET_RSS_GB},
        "results": results,
    }
    prefix = (
        Path(args.out_prefix)
        if args.out_prefix
        else (REPO / "experiments" / f"{date.today().isoformat()}-prepare-scaling")
    )
    prefix.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    prefix.with_suffix(".md").write_text(render_markdown(report))
    print(f"wrote {prefix.with_suffix('.md')} and .json")
    return 0


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# `prepare` scaling on the synthetic storefront ({report['date']})",
        "",
        f"Command (from the repository root): `{report['command']}`",
        "",
        f"Preset `{report['preset']}`; machine: {m['affinity']} usable CPUs, Polars "
        f"{m['polars']} ({m['polars_threads']} threads), Python {m['python']}, {m['platform']}.",
        f"Target: 10M events in <= {TARGET_SECONDS:.0f} s and <= {TARGET_RSS_GB:.0f} GB peak RSS.",
        "Each prepare runs in a fresh subprocess; time = the `prepare()` call (wall, and CPU "
        "seconds of all threads: a load-independent measure of work), RSS = the "
        "subprocess's peak (ru_maxrss). Data is generated once and cached (not timed here).",
        "The machine is shared: `load` is the 1-minute load average before/after the run "
        f"(with {m['affinity']} CPUs, a load above {m['affinity']} means the run was slowed "
        "by other processes). With `--repeat`, the fastest run is shown; `runs` lists the "
        "wall s of every run.",
        "",
        "| size | rows | CSV MB | prepare s | prepare CPU s | process s | peak RSS GB | "
        "events kept | test cases | synth s | load | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in report["results"]:
        d = r["data"]
        prep = r.get("prepare")
        synth_s = "cached" if d.get("cached") else f"{d['generate_write_s']:.1f}"
        if prep is None:
            lines.append(
                f"| {r['size']} | {d['rows']:,} | {d['csv_bytes'] / 1e6:.0f} | FAILED | | | | | | "
                f"{synth_s} | | |"
            )
            continue
        man = prep["manifest"]
        lines.append(
            f"| {r['size']} | {d['rows']:,} | {d['csv_bytes'] / 1e6:.0f} | {prep['prepare_s']:.1f} "
            f"| {prep['prepare_cpu_s']:.1f} | {prep['process_wall_s']:.1f} | "
            f"{prep['peak_rss_mb'] / 1024:.2f} | "
            f"{man.get('events') or 0:,} | {man.get('test_cases') or 0:,} | {synth_s} | "
            f"{' / '.join(str(x) for x in prep.get('loadavg_1min_before_after', []))} | "
            f"{', '.join(str(x['prepare_s']) for x in r.get('prepare_runs', [prep]))} |"
        )
    step_rows = [r for r in report["results"] if "steps" in r]
    if step_rows:
        names = list(step_rows[0]["steps"]["steps_s"])
        lines += [
            "",
            "## Where the time goes (stages timed separately: wall s / CPU s (peak RSS GB after))",
            "",
            "| stage | " + " | ".join(r["size"] for r in step_rows) + " |",
            "|---|" + "---:|" * len(step_rows),
        ]
        for name in names:
            cells = [
                f"{r['steps']['steps_s'].get(name, float('nan')):.2f} / "
                f"{r['steps']['steps_cpu_s'].get(name, float('nan')):.2f} "
                f"({r['steps']['peak_rss_mb_after'].get(name, 0) / 1024:.2f})"
                for r in step_rows
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(
            "| **total** | "
            + " | ".join(
                f"{r['steps']['total_s']:.2f} / {r['steps']['total_cpu_s']:.2f}" for r in step_rows
            )
            + " |"
        )
    failures = [r for r in report["results"] if "prepare_error" in r]
    for r in failures:
        lines += ["", f"## {r['size']}: prepare failed", "", "```", r["prepare_error"], "```"]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""How long `shoprec evaluate` takes over a whole test set, and how much memory it peaks at.

Each (code version, bundle, batch size) runs in its own subprocess, so its peak RSS is its own:
it loads the bundle, calls :func:`shoprec.evaluation.evaluate.evaluate_model` on the test split
(the same call as ``shoprec evaluate --no-track``) and reports wall and CPU seconds, the peak
RSS, the metrics, and a hash of the per-case ranks. ``--before SRC`` also runs an older
checkout's ``src`` (e.g. a ``git worktree`` of the commit before a change) in the same way,
alternating with the current code, so that both see the same machine load.

Usage (from the repository root)::

    .venv/bin/python experiments/neural/bench_evaluate.py \
        --bundle runs/diginetica_gru4rec_s42/bundle --data runs/data/diginetica_srgnn \
        --batch-sizes 128 512 --threads 2 \
        [--before /tmp/old/src] [--repeat 2] --out experiments/2026-11-23-evaluate-speed.json

The JSON holds every run, the command line, the load average and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _child(args: argparse.Namespace) -> None:
    import torch

    from shoprec.data.dataset import PreparedDataset
    from shoprec.evaluation.evaluate import evaluate_model
    from shoprec.export import load_bundle

    torch.set_num_threads(args.threads)
    reused = None  # what `shoprec evaluate` does at start, where the code has it
    if not args.no_heap:
        try:
            from shoprec.allocation import reuse_large_allocations
        except ImportError:
            pass
        else:
            reused = reuse_large_allocations()
    t0 = time.perf_counter()
    bundle = load_bundle(args.bundle)
    dataset = PreparedDataset.open(args.data)
    load_s = time.perf_counter() - t0
    pred = None
    if args.predictions:  # the lists too (slower: the file is written): hash them below
        import tempfile

        pred = Path(tempfile.mkdtemp()) / "predictions.tsv"
    res = evaluate_model(
        bundle.model, dataset, split="test", batch_size=args.batch_size, predictions_out=pred
    )
    out = {
        "load_s": load_s,
        "timing": res.timing,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "metrics": {k: res.metrics[k] for k in sorted(res.metrics)},
        "ranks_sha256": hashlib.sha256(res.ranks.tobytes()).hexdigest(),
        "predictions_sha256": hashlib.sha256(pred.read_bytes()).hexdigest() if pred else None,
        "torch_threads": torch.get_num_threads(),
        "reuse_large_allocations": reused,
    }
    print("RESULT " + json.dumps(out))


def _run(src: Path, args: argparse.Namespace, bundle: str, batch: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--bundle",
        bundle,
        "--data",
        args.data,
        "--batch-size",
        str(batch),
        "--threads",
        str(args.threads),
        *(["--no-heap"] if args.no_heap else []),
        *(["--predictions"] if args.predictions else []),
    ]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({src}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result.update(
        {"src": str(src), "bundle": bundle, "batch_size": batch, "load_1min_at_start": load}
    )
    result["process_wall_s"] = wall
    return result


def _cpu_model() -> str:
    """The CPU's model name and its widest vector extension (benchmarks differ between them)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wide = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2") if f in flags]
    return f"{name} ({', '.join(wide) or 'no AVX2'})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--batch-size", type=int, default=128)  # child only
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-heap", action="store_true", help="skip reuse_large_allocations()")
    p.add_argument("--before", default=None, help="an older checkout's src/ to compare with")
    p.add_argument("--predictions", action="store_true", help="also write and hash the lists")
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.bundle = args.bundle[0]
        _child(args)
        return
    sources = [REPO / "src"] + ([Path(args.before)] if args.before else [])
    runs = []
    for _ in range(args.repeat):
        for bundle in args.bundle:
            for batch in args.batch_sizes:
                for src in sources:
                    r = _run(src, args, bundle, batch)
                    runs.append(r)
                    print(
                        f"{'before' if src != REPO / 'src' else 'now':6s} {bundle} batch {batch} "
                        f"heap {r['reuse_large_allocations']}: "
                        f"{r['timing']['total_s']:.1f} s wall, {r['timing']['cpu_s']:.1f} CPU-s, "
                        f"peak {r['peak_rss_gb']:.2f} GB, load {r['load_1min_at_start']:.2f}, "
                        f"HR@20 {r['metrics']['test/hr@20']:.4f} MRR@20 "
                        f"{r['metrics']['test/mrr@20']:.4f}",
                        flush=True,
                    )
    payload = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
        },
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

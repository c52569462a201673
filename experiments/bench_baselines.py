"""Benchmark POP, SKNN and V-SKNN on the SR-GNN Diginetica and YooChoose 1/64 splits.

Every test case is ranked against the full catalogue with pessimistic ties
(:func:`shoprec.evaluation.evaluate.evaluate_model`). Each (dataset, model) pair runs in its own
subprocess so that its peak RSS is its own. On Diginetica the predictions file is also scored by
the independent ``shared/tools/score_predictions.py`` and both numbers are recorded.

Usage (from the repository root)::

    .venv/bin/python experiments/bench_baselines.py [--threads 2 1] [--work /tmp/shoprec_bench]

writes ``experiments/YYYY-MM-DD-baselines.md`` and ``.json``.

The splits are prepared with ``shoprec.data.prepare`` and the presets
``configs/data/diginetica_srgnn.yaml`` / ``yoochoose_srgnn_1_64.yaml`` into ``--work`` (never
into the repository). ``--loader builtin`` uses :func:`build_srgnn_dataset` instead, a minimal
independent reader written before the prepare pipeline existed (items re-indexed densely on
train, sorted by numeric id; test prefix items unknown to train dropped; targets unknown to
train -> ``target_idx`` 0, an unscorable miss): a cross-check of the pipeline.
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

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.data.dataset import PreparedDataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHOPREC_SHARED_DATA", REPO.parent / "shared" / "data"))
SCORER = SHARED.parent / "tools" / "score_predictions.py"
DATASETS = {
    "diginetica": SHARED / "diginetica" / "srgnn_split",
    "yoochoose1_64": SHARED / "yoochoose" / "srgnn_1_64_split",
}
PRESETS = {  # the data presets `shoprec data prepare` uses for these splits
    "diginetica": REPO / "configs" / "data" / "diginetica_srgnn.yaml",
    "yoochoose1_64": REPO / "configs" / "data" / "yoochoose_srgnn_1_64.yaml",
}
MODELS = ("pop", "sknn", "vsknn")
REFERENCE = {  # shared evaluator, full catalogue, pessimistic ties (from the issue)
    ("diginetica", "sknn"): (0.493, 0.173),
    ("diginetica", "vsknn"): (0.494, 0.176),
    ("yoochoose1_64", "vsknn"): (0.652, 0.266),
}


def build_srgnn_dataset(src: Path, out: Path) -> PreparedDataset:
    """Write an SR-GNN style split (``train_sessions.txt``, ``test.tsv``) as a prepared dataset."""
    out.mkdir(parents=True, exist_ok=True)
    train_lines = (src / "train_sessions.txt").read_text(encoding="utf-8").splitlines()
    sessions = [line.split() for line in train_lines if line.strip()]
    flat = [i for s in sessions for i in s]
    uniq, counts = np.unique(np.array(flat, dtype=np.int64), return_counts=True)
    ids = [str(int(x)) for x in uniq]  # sorted by numeric id
    index = {item: i + 1 for i, item in enumerate(ids)}
    pl.DataFrame(
        {
            schema.ITEM_IDX: np.arange(1, len(ids) + 1, dtype=np.int32),
            schema.ITEM_ID: ids,
            schema.ITEM_COUNT: counts.astype(np.int64),
        },
        schema=schema.ITEMS_SCHEMA,
    ).write_parquet(out / "items.parquet")
    lengths = [len(s) for s in sessions]
    pl.DataFrame(
        {
            schema.SESSION_ID: np.repeat(np.arange(len(sessions)), lengths).astype(str),
            schema.ITEM_ID: [str(int(i)) for i in flat],
            schema.ITEM_IDX: np.array([index[str(int(i))] for i in flat], dtype=np.int32),
        }
    ).write_parquet(out / "train.parquet")
    test_lines = (src / "test.tsv").read_text(encoding="utf-8").splitlines()
    if test_lines[0].split("\t")[:2] != ["prefix", "target"]:
        raise ValueError(f"{src / 'test.tsv'}: expected header prefix<TAB>target")
    prefix_ids, prefix_idx, target_ids, target_idx = [], [], [], []
    for line in test_lines[1:]:
        prefix, target = line.split("\t")[:2]
        p = [str(int(x)) for x in prefix.split()]
        prefix_ids.append(p)
        prefix_idx.append([index[x] for x in p if x in index])
        t = str(int(target))
        target_ids.append(t)
        target_idx.append(index.get(t, 0))
    n_cases = len(target_ids)
    pl.DataFrame(
        {
            schema.CASE_ID: np.arange(n_cases, dtype=np.int64),
            schema.SESSION_ID: [None] * n_cases,
            schema.PREFIX_IDX: prefix_idx,
            schema.PREFIX_IDS: prefix_ids,
            schema.TARGET_IDX: np.array(target_idx, dtype=np.int32),
            schema.TARGET_ID: target_ids,
        },
        schema=schema.CASES_SCHEMA,
    ).write_parquet(out / "test_cases.parquet")
    manifest = {
        "name": src.name,
        "source": str(src),
        "loader": "experiments/bench_baselines.py:build_srgnn_dataset",
        "split": {
            "kind": "given",
            "train_sessions": len(sessions),
            "train_clicks": len(flat),
            "test_cases": n_cases,
            "unscorable_targets": int(sum(t == 0 for t in target_idx)),
            "dropped_prefix_items": int(
                sum(len(a) - len(b) for a, b in zip(prefix_ids, prefix_idx, strict=True))
            ),
        },
        "filters": "as published with the split (none applied here)",
        "items": len(ids),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return PreparedDataset.open(out)


def prepare_dataset(name: str, out: Path, loader: str) -> PreparedDataset:
    """``shoprec data prepare`` with the split's preset, or the built-in loader above."""
    src = DATASETS[name]
    if loader == "builtin":
        return build_srgnn_dataset(src, out)
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare

    config = load_config(DataConfig, PRESETS[name])
    prepare(
        config,
        out,
        input_path=str(src / "train_sessions.txt"),
        test_input=str(src / "test.tsv"),
        config_path=PRESETS[name],
    )
    return PreparedDataset.open(out)


def run_one(dataset_name: str, model_name: str, work: Path, threads: int) -> dict[str, Any]:
    """Fit and evaluate one model on one dataset (in this process)."""
    import torch

    from shoprec.evaluation.evaluate import evaluate_model
    from shoprec.models.popular import PopularModel
    from shoprec.models.sknn import SKNN, VSKNN

    torch.set_num_threads(threads)
    ds = PreparedDataset.open(work / dataset_name)
    sessions = ds.train_sessions()
    t0 = time.perf_counter()
    model: Any
    if model_name == "pop":
        model = PopularModel.fit(sessions, ds.n_items)
    elif model_name == "sknn":
        model = SKNN.fit(sessions, ds.n_items)
    elif model_name == "vsknn":
        model = VSKNN.fit(sessions, ds.n_items)
    else:
        raise ValueError(model_name)
    fit_s = time.perf_counter() - t0
    pred = work / f"{dataset_name}_{model_name}_predictions.tsv"
    res = evaluate_model(model, ds, "test", batch_size=128, predictions_out=pred)
    config, _ = model.to_bundle()
    out: dict[str, Any] = {
        "dataset": dataset_name,
        "model": model_name,
        "config": config,
        "fit_s": fit_s,
        **res.to_dict(),
        "predictions": str(pred),
        "ranks_sha256": hashlib.sha256(res.ranks.tobytes()).hexdigest(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dataset_name == "diginetica" and SCORER.is_file():
        proc = subprocess.run(
            [
                sys.executable,
                str(SCORER),
                "--test",
                str(DATASETS[dataset_name] / "test.tsv"),
                "--pred",
                str(pred),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        out["scorer"] = json.loads(proc.stdout)
    return out


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return "unknown"


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _metrics_row(r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    ref = REFERENCE.get((r["dataset"], r["model"]))
    return [
        r["dataset"],
        r["model"],
        _fmt(m["test/hr@10"]),
        _fmt(m["test/hr@20"]),
        _fmt(m["test/mrr@10"]),
        _fmt(m["test/mrr@20"]),
        _fmt(m["test/ndcg@20"]),
        _fmt(m["test/coverage@20"]),
        _fmt(m["test/popularity@20"]),
        f"{ref[0]} / {ref[1]}" if ref else "-",
    ]


def _timing_row(r: dict[str, Any]) -> list[str]:
    t = r["timing"]
    return [
        r["dataset"],
        r["model"],
        str(r["threads"]),
        f"{r['fit_s']:.1f}",
        f"{t['total_s']:.1f}",
        f"{t['cpu_s']:.1f}",
        f"{t['score_s']:.1f}",
        f"{r['peak_rss_mb']:.0f}",
        f"{r['load_before'][0]:.1f}",
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def run_meta(
    results: list[dict[str, Any]], command: str, threads: list[int], loader: str
) -> dict[str, Any]:
    """Where and how the results were measured."""
    first = [r for r in results if r["threads"] == threads[0]]
    same = all(
        r["metrics"] == f["metrics"] and r["ranks_sha256"] == f["ranks_sha256"]
        for f in first
        for r in results
        if (r["dataset"], r["model"]) == (f["dataset"], f["model"])
    )
    return {
        "command": command,
        "date": dt.date.today().isoformat(),
        "threads": threads,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": list(os.getloadavg()),
        "git_head": _git_head(),
        "identical_across_thread_counts": same,
        "loader": loader,
    }


def write_report(results: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write ``experiments/<date>-baselines.json`` and ``.md`` from the results."""
    stem = REPO / "experiments" / f"{meta['date']}-baselines"
    today, command, threads, loader = meta["date"], meta["command"], meta["threads"], meta["loader"]
    load = meta["load_avg_at_end"]
    same = meta["identical_across_thread_counts"]
    first = [r for r in results if r["threads"] == threads[0]]
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8"
    )
    lines = [
        f"# Non-neural baselines on the SR-GNN splits ({today})",
        "",
        "Full-catalogue ranking of every test case, pessimistic ties (rank = 1 + #items scoring",
        ">= the target); targets unseen in train count as misses. Models use session-rec's",
        "published defaults (SKNN: k=100, sample_size=500, cosine; V-SKNN: k=100,",
        "sample_size=500, weighting div, weighting_score div, idf off), not tuned on these splits.",
        "",
        f"Command: `{command}`  ",
        "Data: "
        + (
            "`shoprec.data.prepare` with `configs/data/diginetica_srgnn.yaml` and "
            "`configs/data/yoochoose_srgnn_1_64.yaml` (the published files as they are).  "
            if loader == "prepare"
            else "the built-in SR-GNN split reader of this script.  "
        ),
        f"Machine: {meta['machine']}, {meta['cpu_count']} cores visible, shared with other "
        f"work (load average at the end {load[0]:.1f}). Code at {meta['git_head']} plus the "
        "uncommitted files of this change.",
        "",
        *_table(
            [
                "dataset",
                "model",
                "HR@10",
                "HR@20",
                "MRR@10",
                "MRR@20",
                "NDCG@20",
                "cov@20",
                "pop@20",
                "reference HR@20 / MRR@20",
            ],
            [_metrics_row(r) for r in first],
        ),
        "",
        "Cases: "
        + ", ".join(
            f"{r['dataset']} {r['protocol']['n_cases']} cases / {r['protocol']['n_items']} items "
            f"/ {r['protocol']['unscorable_targets']} unscorable"
            for r in first
            if r["model"] == "pop"
        )
        + ".",
        "",
        f"Metrics and per-case ranks identical across torch thread counts {threads}: "
        f"{'yes' if same else 'NO'}.",
        "",
        "## Time and memory",
        "",
        *_table(
            [
                "dataset",
                "model",
                "threads",
                "fit s",
                "eval s",
                "eval CPU s",
                "score s",
                "peak RSS MB",
                "load avg before",
            ],
            [_timing_row(r) for r in results],
        ),
        "",
        "Eval s: wall time of the whole evaluate_model call (scoring, ranking, top-20 lists,",
        "predictions file; batch_size 128); eval CPU s: its process CPU time summed over threads;",
        "score s: wall time inside model.score. Peak RSS: the subprocess's ru_maxrss (load, fit,",
        "evaluation). The machine has 2 cores shared with other sessions: wall times inflate",
        "with the load shown (1-minute load average when the run started), and 2 intra-op",
        "threads suffer most from it (a descheduled thread stalls every parallel section).",
        "",
        "## Agreement with the independent scorer (`shared/tools/score_predictions.py`)",
        "",
    ]
    rows = []
    for r in first:
        if "scorer" not in r:
            continue
        for ours, theirs in (
            ("hr@20", "HR@20"),
            ("mrr@20", "MRR@20"),
            ("ndcg@20", "NDCG@20"),
            ("hr@10", "HR@10"),
            ("mrr@10", "MRR@10"),
        ):
            a = r["metrics"][f"test/{ours}"]
            b = r["scorer"][theirs]
            rows.append(
                [r["dataset"], r["model"], theirs, f"{a:.6f}", f"{b:.6f}", f"{abs(a - b):.1e}"]
            )
    lines += _table(
        ["dataset", "model", "metric", "evaluate_model", "score_predictions.py", "abs diff"], rows
    )
    lines += [
        "",
        "The scorer read the predictions file (top-20 original ids + the pessimistic rank) and",
        "the published `test.tsv`; it also checks every rank against its list.",
        "",
        "Coverage@20: distinct items in the target-agnostic top-20 lists / catalogue size.",
        "Popularity@20: mean train-count percentile of those items (1.0 = the most popular).",
        "Both read lists whose ties are broken by item index. kNN scores tie a lot (items of",
        "the same neighbours; zeros when fewer than 20 items are reached), so these two",
        "depend on the item index order; the rank metrics do not (ties are pessimistic).",
        "",
    ]
    md = stem.with_suffix(".md")
    md.write_text("\n".join(lines), encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/shoprec_bench"))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--no-report", action="store_true", help="print results, write no report")
    ap.add_argument(
        "--loader",
        choices=("prepare", "builtin"),
        default="prepare",
        help="prepare: `shoprec data prepare` with the split's preset; builtin: this file's loader",
    )
    ap.add_argument("--report-from", type=Path, help="rewrite the .md from a results .json")
    a = ap.parse_args(argv)
    if a.report_from:
        saved = json.loads(a.report_from.read_text(encoding="utf-8"))
        print(write_report(saved["results"], saved["meta"]))
        return
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], a.work, a.threads[0])))
        return
    command = "python experiments/bench_baselines.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    results = []
    for name in a.datasets:
        src = DATASETS[name]
        if not src.is_dir():
            raise SystemExit(f"{src}: benchmark split not found")
        t0 = time.perf_counter()
        prepare_dataset(name, a.work / name, a.loader)
        print(f"[{name}] prepared ({a.loader}) in {time.perf_counter() - t0:.1f}s", flush=True)
        for model in a.models:
            for threads in a.threads:
                load = os.getloadavg()
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        name,
                        model,
                        "--work",
                        str(a.work),
                        "--threads",
                        str(threads),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["threads"] = threads
                r["load_before"] = list(load)
                m = r["metrics"]
                print(
                    f"[{name}] {model} ({threads} threads): HR@20 {m['test/hr@20']:.4f} "
                    f"MRR@20 {m['test/mrr@20']:.4f} fit {r['fit_s']:.1f}s "
                    f"eval {r['timing']['total_s']:.1f}s (cpu {r['timing']['cpu_s']:.1f}s) "
                    f"rss {r['peak_rss_mb']:.0f}MB"
                    + (
                        f" | scorer HR@20 {r['scorer']['HR@20']:.4f} "
                        f"MRR@20 {r['scorer']['MRR@20']:.4f}"
                        if "scorer" in r
                        else ""
                    ),
                    flush=True,
                )
                results.append(r)
    if not a.no_report:
        print(write_report(results, run_meta(results, command.strip(), a.threads, a.loader)))


if __name__ == "__main__":
    main()

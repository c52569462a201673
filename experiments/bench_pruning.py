"""Does pruning buy more finished trials, or a better best value, for the same wall-clock budget?

Two Optuna studies over the same GRU4Rec search space (``configs/search/diginetica_gru4rec.yaml``)
on the Diginetica SR-GNN train split with a validation window cut from the end of train
(``configs/data/diginetica_srgnn_valid.yaml``): one with the search's MedianPruner, one with
Optuna's NopPruner. Same TPE seed, same trial seed, same shortened epochs, same wall-clock
budget (``tune(..., timeout=budget)``), started at the same moment as two processes with one
torch thread each, so both see the same machine. Tuning reads ``val/mrr@20`` only.

``tune`` checks its timeout before each trial and lets a started trial finish, so a study may
overrun the budget by up to one trial; the report therefore counts, at each time t, only the
trials that had *completed* by t after the study's start (best-so-far vs wall-clock), and the
headline numbers are taken at t = budget.

Optionally (``--test-eval``) each study's best parameters are retrained once on the full SR-GNN
train split with the same shortened epochs and evaluated once on the published test cases.

Run from the repository root::

    .venv/bin/python experiments/bench_pruning.py --budget 900 --out experiments/2026-11-23-pruning
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEARCH = "configs/search/diginetica_gru4rec.yaml"
DATASETS = {
    "runs/data/diginetica_srgnn": "configs/data/diginetica_srgnn.yaml",
    "runs/data/diginetica_srgnn_valid": "configs/data/diginetica_srgnn_valid.yaml",
}
KINDS = ("median", "none")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def budget_overrides(args: argparse.Namespace) -> list[str]:
    """The shortened-epoch settings every trial (and the optional test retrain) uses."""
    return [
        f"trainer.max_epochs={args.max_epochs}",
        f"trainer.limit_train_batches={args.train_batches}",
        f"trainer.limit_val_batches={args.val_batches}",
        f"trainer.num_threads={args.threads}",
        "trainer.patience=0",
        "trainer.progress_bar=false",
        "training.shuffle_sessions=true",
    ]


def prepare_data() -> None:
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare

    for out, preset in DATASETS.items():  # order matters: _valid reads the SR-GNN train part
        if not (ROOT / out / "manifest.json").is_file():
            prepare(load_config(DataConfig, preset), ROOT / out, config_path=Path(preset))


def worker(args: argparse.Namespace) -> None:
    """One study in this process (``--worker median|none``); writes ``<workdir>/<kind>.json``."""
    import optuna
    import torch

    from shoprec.tuning import PrunerConfig, load_search, tune

    torch.set_num_threads(args.threads)
    kind = args.worker
    workdir = Path(args.workdir)
    base = load_search(ROOT / SEARCH)
    search = base.model_copy(
        update={
            "fixed": [*base.fixed, *budget_overrides(args)],
            "pruner": PrunerConfig(
                kind=kind,
                n_startup_trials=base.pruner.n_startup_trials,
                n_warmup_steps=base.pruner.n_warmup_steps,
            ),
            "seed": args.seed,
            "output_dir": str(workdir / kind),
        }
    )
    name = f"pruning_{kind}"
    shutil.rmtree(workdir / kind / name, ignore_errors=True)  # a fresh study every run
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    result = tune(search, args.max_trials, track=False, timeout=args.budget, study_name=name)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=result.storage)
    trials = []
    for t in study.get_trials(deepcopy=False):
        done = t.datetime_complete
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "intermediate": {int(k): v for k, v in t.intermediate_values.items()},
                "epochs_run": len(t.intermediate_values),
                "start_s": (t.datetime_start.astimezone(UTC) - started).total_seconds()
                if t.datetime_start
                else None,
                "complete_s": (done.astimezone(UTC) - started).total_seconds() if done else None,
            }
        )
    out = {
        "kind": kind,
        "pruner": search.pruner.model_dump(),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": wall,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "trials": trials,
        "search": search.model_dump(mode="json"),
    }
    (workdir / f"{kind}.json").write_text(json.dumps(out, indent=2), encoding="utf-8")


def finished_by(trials: list[dict[str, Any]], t: float) -> list[dict[str, Any]]:
    return [
        x
        for x in trials
        if x["state"] in ("COMPLETE", "PRUNED")
        and x["complete_s"] is not None
        and x["complete_s"] <= t
    ]


def best_by(trials: list[dict[str, Any]], t: float) -> float | None:
    values = [x["value"] for x in finished_by(trials, t) if x["state"] == "COMPLETE"]
    return max(values) if values else None


def summarise(study: dict[str, Any], budget: float) -> dict[str, Any]:
    trials = study["trials"]
    by_budget = finished_by(trials, budget)
    best = best_by(trials, budget)
    best_trial = next(
        (x for x in by_budget if x["state"] == "COMPLETE" and x["value"] == best), None
    )
    return {
        "at_budget": {
            "finished": len(by_budget),
            "complete": sum(x["state"] == "COMPLETE" for x in by_budget),
            "pruned": sum(x["state"] == "PRUNED" for x in by_budget),
            "epochs_trained": sum(x["epochs_run"] for x in by_budget),
            "best_value": best,
            "best_trial": best_trial["number"] if best_trial else None,
            "best_params": best_trial["params"] if best_trial else None,
        },
        "overall": {  # including the trial that was still running at the deadline
            "finished": sum(x["state"] in ("COMPLETE", "PRUNED") for x in trials),
            "pruned": sum(x["state"] == "PRUNED" for x in trials),
            "failed": sum(x["state"] == "FAIL" for x in trials),
            "wall_seconds": study["wall_seconds"],
            "best_value": study["best_value"],
        },
    }


def plot(studies: dict[str, dict[str, Any]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, study in studies.items():
        xs, ys = [], []
        for x in sorted(study["trials"], key=lambda r: r["complete_s"] or 1e18):
            if x["complete_s"] is None or x["complete_s"] > budget:
                continue
            b = best_by(study["trials"], x["complete_s"])
            if b is not None:
                xs.append(x["complete_s"] / 60)
                ys.append(b)
        label = "MedianPruner" if kind == "median" else "NopPruner"
        ax.step([*xs, budget / 60], [*ys, ys[-1]] if ys else [], where="post", label=label)
    ax.set_xlabel("wall-clock minutes since study start")
    ax.set_ylabel("best val/mrr@20 so far")
    ax.axvline(budget / 60, color="grey", lw=0.8, ls="--")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def test_eval(args: argparse.Namespace, studies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each study's best params retrained on the full SR-GNN train, then scored once on test."""
    from shoprec.tuning import _override

    procs = {}
    for kind, study in studies.items():
        params = summarise(study, args.budget)["at_budget"]["best_params"]
        if not params:
            continue
        name = f"pruning_best_{kind}"
        sets = [
            *budget_overrides(args),
            *(_override(k, v) for k, v in params.items()),
            "evaluation.enabled=true",
            f"output_dir={args.workdir}/test",
            f"name={name}",
            "resume=false",
            "data.path=runs/data/diginetica_srgnn",
            "data.preset=configs/data/diginetica_srgnn.yaml",
        ]
        cmd = [
            sys.executable,
            "-m",
            "shoprec.cli",
            "train",
            "configs/experiment/diginetica_gru4rec_tune.yaml",
            "--no-track",
        ]
        for s in sets:
            cmd += ["--set", s]
        log = Path(args.workdir) / f"test_{kind}.log"
        procs[kind] = (
            subprocess.Popen(
                cmd, cwd=ROOT, env=_env(args), stdout=log.open("wb"), stderr=subprocess.STDOUT
            ),
            name,
            cmd,
        )
    out: dict[str, Any] = {"load_at_start": _uptime()}
    for kind, (proc, name, cmd) in procs.items():
        rc = proc.wait()
        metrics_path = Path(args.workdir) / "test" / name / "metrics.json"
        entry: dict[str, Any] = {"rc": rc, "command": shlex.join(cmd)}
        if rc == 0 and metrics_path.is_file():
            m = json.loads(metrics_path.read_text())
            entry["metrics"] = {k: v for k, v in m["metrics"].items() if k.endswith("@20")}
            entry["timings"] = m["timings"]
        out[kind] = entry
    return out


def _env(args: argparse.Namespace) -> dict[str, str]:
    threads = str(args.threads)
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=900.0, help="seconds per study (timeout)")
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--train-batches", type=int, default=400, help="limit_train_batches")
    p.add_argument("--val-batches", type=int, default=30, help="limit_val_batches (x512 cases)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42, help="TPE sampler seed (both studies)")
    p.add_argument("--max-trials", type=int, default=10_000)
    p.add_argument("--workdir", default="runs/pruning")
    p.add_argument("--out", default="experiments/2026-11-23-pruning")
    p.add_argument("--test-eval", action="store_true")
    p.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--skip-studies", action="store_true", help="re-summarise <workdir>/*.json")
    args = p.parse_args()
    os.chdir(ROOT)
    if args.worker:
        worker(args)
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "budget_seconds": args.budget,
        "trial_settings": budget_overrides(args),
        "search": SEARCH,
        "sampler": {"kind": "TPE", "seed": args.seed},
    }
    if not args.skip_studies:
        prepare_data()
        report["load_at_start"] = {"uptime": _uptime(), "loadavg": _loadavg()}
        passed = [a for a in sys.argv[1:] if a not in ("--test-eval",)]
        procs = {}
        for kind in KINDS:
            cmd = [sys.executable, __file__, *passed, "--worker", kind]
            log = Path(args.workdir) / f"{kind}.log"
            procs[kind] = subprocess.Popen(
                cmd, cwd=ROOT, env=_env(args), stdout=log.open("wb"), stderr=subprocess.STDOUT
            )
        loads = []
        while any(proc.poll() is None for proc in procs.values()):
            loads.append(_loadavg()[0])
            time.sleep(15)
        report["load_during"] = {
            "samples": len(loads),
            "loadavg1_mean": sum(loads) / len(loads) if loads else None,
            "loadavg1_max": max(loads) if loads else None,
        }
        report["load_at_end"] = _uptime()
        for kind, proc in procs.items():
            if proc.returncode != 0:
                raise SystemExit(f"worker {kind} failed: see {args.workdir}/{kind}.log")
    studies = {k: json.loads((Path(args.workdir) / f"{k}.json").read_text()) for k in KINDS}
    report["studies"] = {
        k: {**summarise(s, args.budget), "started_utc": s["started_utc"]}
        for k, s in studies.items()
    }
    marks = [m * 60.0 for m in range(1, int(args.budget // 60) + 1)]
    report["best_so_far"] = [
        {
            "minute": t / 60,
            **{k: best_by(s["trials"], t) for k, s in studies.items()},
            **{f"{k}_finished": len(finished_by(s["trials"], t)) for k, s in studies.items()},
        }
        for t in marks
    ]
    report["trials"] = {
        k: [
            {
                key: x[key]
                for key in (
                    "number",
                    "state",
                    "value",
                    "epochs_run",
                    "start_s",
                    "complete_s",
                    "params",
                    "intermediate",
                )
            }
            for x in s["trials"]
        ]
        for k, s in studies.items()
    }
    plot(studies, args.budget, Path(f"{args.out}.png"))
    if args.test_eval:
        report["test_eval"] = test_eval(args, studies)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v["at_budget"] for k, v in report["studies"].items()}, indent=2))


if __name__ == "__main__":
    main()

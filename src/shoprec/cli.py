"""``shoprec <verb>``: each verb is a thin adapter over one typed function.

Heavy modules (torch, lightning, mlflow) are imported inside the verbs that need them, so
``shoprec --help`` and the data verbs start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoprec import __version__
from shoprec.config import add_run_args
from shoprec.errors import ShoprecError


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare
    from shoprec.data.stats import print_stats

    config = load_config(DataConfig, args.config, args.set)
    prepare(
        config,
        output=Path(args.output),
        input_path=args.input,
        test_input=args.test_input,
        strict=args.strict,
        config_path=Path(args.config),
        streaming=args.streaming,
    )
    print_stats(Path(args.output))
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from shoprec.data.stats import print_stats

    print_stats(Path(args.dir))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from shoprec.data.synth import SynthConfig, write_synthetic

    cfg = SynthConfig(users=args.users, days=args.days, seed=args.seed)
    out = write_synthetic(cfg, Path(args.output))
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from shoprec.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            workdir=Path(args.workdir),
            data=Path(args.data) if args.data else None,
            preset=Path(args.preset) if args.preset else None,
            users=args.users,
            days=args.days,
            seed=args.seed,
            force=args.force,
        )
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from shoprec.churn.config import is_churn_config_file

    if is_churn_config_file(args.config):
        from shoprec.churn.cli import train_command

        return train_command(args)
    from shoprec.training.config import load_experiment
    from shoprec.training.ddp import launched_as_rank_zero
    from shoprec.training.fit import fit

    config = load_experiment(args.config, args.set)
    if not launched_as_rank_zero():  # a DDP worker started by Lightning: rank 0 reports
        fit(config)
        return 0
    if args.no_track:
        result = fit(config)
    else:
        from shoprec.tracking import RunTracker

        with RunTracker(
            args.experiment or config.name,
            config.name,
            tracking_uri=args.tracking_uri,
            tags={"task": config.task, "model": config.model_name},
        ) as tracker:
            result = fit(config, tracker=tracker)
        print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    _print_metrics(result.metrics, title=f"{config.name}: test metrics")
    print(f"bundle: {result.bundle_dir}")
    return 0


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from shoprec.data.dataset import PreparedDataset
    from shoprec.evaluation.evaluate import evaluate_model
    from shoprec.export import load_bundle

    bundle = load_bundle(args.bundle)
    dataset = PreparedDataset.open(args.data)
    predictions = Path(args.predictions_out) if args.predictions_out else None
    model_name = str(bundle.meta["model_name"])
    run_name = f"evaluate {bundle.meta.get('experiment') or model_name} on {dataset.root.name}"
    from shoprec.tracking import maybe_tracker

    with maybe_tracker(
        not args.no_track,
        args.experiment or "evaluate",
        run_name,
        tracking_uri=args.tracking_uri,
        tags={"shoprec.role": "evaluate", "task": "next-item", "model": model_name},
    ) as tracker:
        result = evaluate_model(
            bundle.model,
            dataset,
            split=args.split,
            batch_size=args.batch_size,
            exclude_seen=args.exclude_seen,
            predictions_out=predictions,
        )
        if tracker is not None:
            _track_evaluation(tracker, args, bundle.meta, dataset, result, predictions)
    _print_metrics(dict(result.metrics), title=f"{model_name} on {args.data}")
    if tracker is not None:
        print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    if args.output:
        payload = {"metrics": result.metrics, "protocol": result.protocol}
        Path(args.output).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


def _track_evaluation(
    tracker: Any,
    args: argparse.Namespace,
    meta: dict[str, Any],
    dataset: Any,
    result: Any,
    predictions: Path | None,
) -> None:
    """What a reviewer needs to read an ``evaluate`` run: which bundle on which data, under
    which protocol, with the metrics, HR@K and coverage plots, and the predictions file."""
    from shoprec.evaluation import plots

    tracker.log_params(
        {
            "bundle": str(Path(args.bundle).resolve()),
            "bundle_experiment": meta.get("experiment"),
            "model": {"name": meta["model_name"], **(meta.get("model_config") or {})},
            "split": args.split,
            "batch_size": args.batch_size,
        }
    )
    tracker.log_dataset(dataset.manifest)
    tracker.log_protocol(result.protocol)
    tracker.log_metrics(result.metrics)
    tracker.log_metrics({f"time/{k}": v for k, v in result.timing.items()})
    tracker.log_dict(result.to_dict(), "metrics.json")
    plots.log_figures(
        tracker,
        f"{meta['model_name']} on {dataset.root.name}",
        metrics=result.metrics,
        ranks=result.ranks,
        split=args.split,
    )
    if predictions is not None:
        tracker.log_artifact(predictions, "predictions")


def _cmd_hybrid_tune(args: argparse.Namespace) -> int:
    import json

    from shoprec.data.dataset import PreparedDataset
    from shoprec.training.hybrid import tune_hybrid

    result = tune_hybrid(
        args.neural,
        PreparedDataset.open(args.data),
        knn=args.knn,
        knn_settings=_knn_settings(args.knn_set),
        split=args.split,
        weights=tuple(args.weights),
        temperatures=tuple(args.temperatures),
        reminders=tuple(args.reminders),
        reminder_decay=args.reminder_decay,
        batch_size=args.batch_size,
        refine=args.refine,
    )
    from rich.console import Console
    from rich.table import Table

    hr, mrr = f"{result.split}/hr@{result.cutoff}", f"{result.split}/mrr@{result.cutoff}"
    table = Table(title=f"hybrid grid on {result.n_cases:,} {result.split} cases (best first)")
    for col in ("weight", "temperature", "reminder", hr, mrr, "pass"):
        table.add_column(col, justify="right")
    for row in result.rows:
        table.add_row(
            f"{row['weight']:g}",
            f"{row['temperature']:g}",
            f"{row['reminder']:g}",
            f"{row[hr]:.4f}",
            f"{row[mrr]:.5f}",
            f"{row['pass']:g}",
        )
    Console().print(table)
    best = result.best
    print(
        f"best: --weight {best.weight:g} --temperature {best.temperature:g} "
        f"--reminder {best.reminder:g} --reminder-decay {best.reminder_decay}"
    )
    if args.output:
        payload = {
            "best": best.model_dump(),
            "rows": result.rows,
            "n_cases": result.n_cases,
            "split": result.split,
            "data": str(Path(args.data)),
            "members": result.members,
            "seconds": result.seconds,
        }
        Path(args.output).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


def _cmd_hybrid_build(args: argparse.Namespace) -> int:
    import json

    from shoprec.config import validate_config
    from shoprec.data.dataset import PreparedDataset
    from shoprec.models.hybrid import HybridConfig
    from shoprec.training.hybrid import build_hybrid

    tuned: dict[str, Any] = {}
    if args.tuned:
        tuned = json.loads(Path(args.tuned).read_text(encoding="utf-8"))
        best = tuned.get("best") or {}
        tuned = {k: tuned.get(k) for k in ("best", "data", "split", "n_cases", "members")}
    else:
        best = {}
    knobs = {**best, **{k: v for k, v in _hybrid_knobs(args).items() if v is not None}}
    if knobs.get("weight") is None or knobs.get("temperature") is None:
        raise ShoprecError("give --weight and --temperature, or --tuned FILE from `hybrid tune`")
    config = validate_config(HybridConfig, knobs, source=args.tuned or "hybrid build options")
    members = tuned.get("members") or {}
    settings = _knn_settings(args.knn_set)
    if not args.knn_set and members.get("knn") == args.knn:  # the tuned kNN's own settings
        settings = members.get("knn_config") or {}
    out = build_hybrid(
        args.neural,
        PreparedDataset.open(args.data),
        args.output,
        config,
        knn=args.knn,
        knn_settings=settings,
        tuned=tuned,
    )
    print(
        f"hybrid bundle (weight {config.weight:g}, temperature {config.temperature:g}, "
        f"reminder {config.reminder:g} {config.reminder_decay}): {out}"
    )
    return 0


def _hybrid_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """``hybrid build``'s knob options (None where not given)."""
    return {
        "weight": args.weight,
        "temperature": args.temperature,
        "reminder": args.reminder,
        "reminder_decay": args.reminder_decay,
    }


def _cmd_tune(args: argparse.Namespace) -> int:
    from shoprec.tuning import load_search, tune

    search = load_search(args.search, args.set)
    result = tune(
        search,
        args.trials,
        storage=args.storage,
        study_name=args.study,
        tracking_uri=args.tracking_uri,
        track=not args.no_track,
        timeout=args.timeout,
        heartbeat_interval=args.heartbeat,
        grace_period=max(2 * args.heartbeat, 2),
    )
    print(
        f"study {result.study_name} ({result.storage}): {result.finished} finished "
        f"({result.pruned} pruned), {result.failed} failed, {result.seconds:.0f} s"
    )
    if result.best_value is not None:
        print(f"best {search.metric} = {result.best_value:.4f} with {result.best_params}")
        print(f"ready-to-run config: {result.best_config_path}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from shoprec.tracking import register

    version = register(args.run_id, args.task, tracking_uri=args.tracking_uri)
    print(f"registered run {args.run_id} as {args.task} version {version}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from shoprec.tracking import promote

    decision = promote(args.task, args.version, force=args.force, tracking_uri=args.tracking_uri)
    print(decision.message)
    return 0 if decision.promoted else 1


def _cmd_ui(args: argparse.Namespace) -> int:
    import os

    from shoprec.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri}")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    os.execv(mlflow, cmd)
    return 0  # pragma: no cover - execv does not return


def _knn_settings(pairs: list[str] | None) -> dict[str, Any]:
    """``--knn-set KEY=VALUE`` pairs as a dict, parsed as ``--set`` overrides are."""
    from shoprec.config import apply_overrides

    return apply_overrides({}, pairs)


def _add_hybrid_members(p: argparse.ArgumentParser, data_help: str) -> None:
    """``--neural``, ``--data`` and ``--knn``: the members of ``hybrid tune`` / ``build``."""
    p.add_argument(
        "--neural",
        required=True,
        nargs="+",
        help="neural bundle(s) trained on --data's train (several: an ensemble)",
    )
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--knn", default="vsknn", choices=["vsknn", "sknn"])
    p.add_argument(
        "--knn-set",
        action="append",
        metavar="KEY=VALUE",
        help="a kNN setting over the published defaults, e.g. k=200 (repeatable); "
        "`build` takes the tuned file's when none is given",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoprec",
        description="Session-based recommendations and churn prediction for online stores.",
    )
    parser.add_argument("--version", action="version", version=f"shoprec {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    data = verbs.add_parser("data", help="read, validate, sessionize and split event logs")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="STEP")
    data_verbs.required = True

    p = data_verbs.add_parser("prepare", help="export -> validated, split Parquet + manifest")
    p.add_argument("--config", required=True, help="data preset YAML (configs/data/*.yaml)")
    p.add_argument("--input", default=None, help="source file/folder (overrides the preset)")
    p.add_argument("--test-input", default=None, help="test file for presets with a given split")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--strict",
        action="store_true",
        help="any bad row is an error (exit 2, naming file, line, column, value)",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="for exports larger than memory: the same dataset, in bounded memory, slower",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. --set filters.min_item_support=5",
    )
    p.set_defaults(func=_cmd_data_prepare)

    p = data_verbs.add_parser("stats", help="print a readable summary of a prepared dataset")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_data_stats)

    p = data_verbs.add_parser("synth", help="generate the synthetic storefront event log")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="output folder")
    p.set_defaults(func=_cmd_data_synth)

    p = verbs.add_parser("train", help="train, evaluate and export a model from a config")
    add_run_args(p, "experiment YAML (configs/experiment/*.yaml)", "trainer.max_epochs=3")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("evaluate", help="full-catalogue evaluation of a bundle")
    p.add_argument("--bundle", required=True, help="model bundle folder")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--split", default="test", choices=["test", "valid"])
    p.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="test cases scored at once (512: 23-25 s and 0.65 GB for Diginetica's GRU4Rec-512 "
        "here, 35-39 s at 128; experiments/2026-12-05-gru4rec-vs-official-epoch.md)",
    )
    p.add_argument("--exclude-seen", action="store_true", help="never rank prefix items")
    p.add_argument("--predictions-out", default=None, help="top-20 ids + rank per case")
    p.add_argument("--output", default=None, help="write metrics + protocol JSON here")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: evaluate)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_cmd_evaluate)

    hybrid = verbs.add_parser("hybrid", help="mix a neural bundle with session-kNN")
    hybrid_verbs = hybrid.add_subparsers(dest="hybrid_verb", metavar="STEP")
    hybrid_verbs.required = True
    p = hybrid_verbs.add_parser("tune", help="grid of weight x temperature on validation cases")
    _add_hybrid_members(p, "prepared dataset with a validation window")
    p.add_argument("--split", default="valid", choices=["valid"])
    p.add_argument(
        "--weights", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    )
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument(
        "--reminders",
        type=float,
        nargs="+",
        default=[0.0],
        help="reminder shares r to try at every (weight, temperature): the probability given "
        "to the session's own items, weighted by recency (0 = none; e.g. 0 0.05 0.1 0.2)",
    )
    p.add_argument("--reminder-decay", choices=["div", "last"], default="div")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="passes that each try the points halfway between the best so far and its "
        "neighbours (each pass costs about one grid pass)",
    )
    p.add_argument("--output", default=None, help="write the grid + best point as JSON here")
    p.set_defaults(func=_cmd_hybrid_tune)
    p = hybrid_verbs.add_parser("build", help="write a hybrid bundle")
    _add_hybrid_members(p, "prepared dataset the kNN member is fitted on")
    p.add_argument("--tuned", default=None, help="JSON from `hybrid tune --output` (best point)")
    p.add_argument("--weight", type=float, default=None, help="neural share w (overrides --tuned)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature tau")
    p.add_argument("--reminder", type=float, default=None, help="reminder share r (0 = none)")
    p.add_argument("--reminder-decay", choices=["div", "last"], default=None)
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.set_defaults(func=_cmd_hybrid_build)

    p = verbs.add_parser("tune", help="Optuna study over a search space (configs/search)")
    p.add_argument("search", help="search space YAML")
    p.add_argument("--trials", type=int, required=True, help="finished trials for the study")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite)")
    p.add_argument("--study", default=None, help="study name (default: the search's name)")
    p.add_argument("--timeout", type=float, default=None, help="stop this worker after N s")
    p.add_argument(
        "--heartbeat", type=int, default=10, help="seconds between trial heartbeats (resume)"
    )
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_tune)

    p = verbs.add_parser("register", help="register a run's bundle under a task name")
    p.add_argument("run_id")
    p.add_argument("--task", default="next-item", choices=["next-item", "churn"])
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_register)

    p = verbs.add_parser("promote", help="make a registered version the champion if better")
    p.add_argument("version")
    p.add_argument("--task", default="next-item", choices=["next-item", "churn"])
    p.add_argument("--force", action="store_true", help="promote even if not better")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_promote)

    p = verbs.add_parser("ui", help="open the MLflow UI on the tracking store")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_ui)

    from shoprec.churn.cli import register_cli as register_churn
    from shoprec.packaging import register_cli as register_packaging

    register_churn(verbs)
    register_packaging(verbs)

    p = verbs.add_parser("demo", help="run the main job end to end on the embedded default")
    p.add_argument("--workdir", default="demo", help="where the demo writes everything")
    p.add_argument("--data", default=None, help="your own export instead of the synthetic one")
    p.add_argument("--preset", default=None, help="data preset for --data (configs/data/*.yaml)")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="redo every step")
    p.set_defaults(func=_cmd_demo)

    return parser


# batch jobs that allocate (cases x catalogue) score tensors over and over: keep them on the heap
_BATCH_VERBS = frozenset({"train", "evaluate", "hybrid", "tune", "demo"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.verb in _BATCH_VERBS:
        from shoprec.allocation import reuse_large_allocations

        reuse_large_allocations()
    try:
        return func(args)
    except (ShoprecError, FileNotFoundError) as exc:
        print(f"shoprec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

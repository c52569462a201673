"""``shoprec churn ...`` verbs and the ``shoprec train`` hook for churn configs.

* :func:`register_cli` adds the ``churn`` verb group to the main parser:

  - ``shoprec churn score --bundle DIR --data DIR --at DATE [--output DIR] [--top N]
    [--refit-bgnbd]``:
    scores every known customer at ``DATE`` (events strictly before it), writes
    ``scores.parquet`` + ``scores.csv`` (:func:`shoprec.churn.score.write_scores`) and prints
    customers per segment and the top at-risk customers with their drivers. ``--bundle`` may
    also be a registry URI such as ``models:/churn@champion``.
  - ``shoprec churn train CONFIG [--set k=v] [--no-track] ...``: the same as
    ``shoprec train CONFIG`` with a churn config.

* :func:`train_command` is what ``shoprec train`` calls for a churn config
  (:func:`shoprec.churn.run.is_churn_config_file`); it reads ``args.config``, ``args.set``,
  ``args.no_track``, ``args.tracking_uri`` and ``args.experiment``.

Heavy modules load inside the verbs, so ``shoprec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoprec.config import ConfigError, add_run_args

if TYPE_CHECKING:
    import polars as pl

__all__ = ["parse_at", "print_summary", "register_cli", "score_command", "train_command"]


def parse_at(text: str) -> datetime:
    """An ISO date or date-time (``1997-10-01``, ``2024-08-01T00:00:00Z``) as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--at {text!r}: not an ISO date or date-time (e.g. 2024-08-01 or 2024-08-01T12:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def train_command(args: argparse.Namespace) -> int:
    """Train a churn config (``shoprec train CONFIG`` / ``shoprec churn train CONFIG``)."""
    from shoprec.churn.run import fit_churn_run, load_churn_config

    overrides = list(getattr(args, "set", None) or [])
    config = load_churn_config(args.config, overrides)
    if getattr(args, "no_track", False):
        result = fit_churn_run(config)
    else:
        from shoprec.tracking import RunTracker

        with RunTracker(
            getattr(args, "experiment", None) or config.name,
            config.name,
            tracking_uri=getattr(args, "tracking_uri", None),
            tags={"task": config.task, "model": "churn_net"},
        ) as tracker:
            result = fit_churn_run(config, tracker=tracker)
        print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    _print_result(result)
    return 0


def _print_result(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    flat: dict[str, float] = result.flat_metrics or {}
    table = Table(title=f"{result.config.name}: churn models (test calibrated, valid raw)")
    table.add_column("model")
    for key in ("valid/roc_auc", "test/roc_auc", "test/pr_auc", "test/ece", "test/lift@10"):
        table.add_column(key, justify="right")
    for model in ("churn_net", "logistic_rfm", "gbt", "bgnbd"):
        prefix = "" if model == "churn_net" else f"baseline/{model}/"
        cells = []
        for key in ("valid/roc_auc", "test/roc_auc", "test/pr_auc", "test/ece", "test/lift@10"):
            v = flat.get(prefix + key)
            cells.append("-" if v is None else f"{v:.4f}")
        table.add_row(model, *cells)
    console = Console()
    console.print(table)
    console.print(result.metrics["selection"]["note"])
    console.print(f"bundle: {result.bundle_dir}")


def _resolve_bundle(bundle: str, tracking_uri: str | None, tmp: Path) -> Path:
    if bundle.startswith("models:/") or bundle.startswith("runs:/"):
        from shoprec.tracking import download_model

        return download_model(bundle, tmp, tracking_uri=tracking_uri)
    return Path(bundle)


def score_command(args: argparse.Namespace) -> int:
    """``shoprec churn score``: score, write Parquet + CSV, print a summary."""
    from shoprec.churn.score import events_from_dataset, score_customers, write_scores

    at = parse_at(args.at)
    with tempfile.TemporaryDirectory(prefix="shoprec-churn-") as tmp:
        bundle = _resolve_bundle(args.bundle, getattr(args, "tracking_uri", None), Path(tmp))
        scores = score_customers(
            bundle,
            events_from_dataset(args.data),
            at,
            refit_bgnbd=bool(getattr(args, "refit_bgnbd", False)),
        )
    paths = write_scores(scores, Path(args.output))
    print_summary(scores, top=args.top)
    print(f"wrote {paths['parquet']} and {paths['csv']} ({scores.height} customers)")
    return 0


def print_summary(scores: pl.DataFrame, top: int = 10) -> None:
    """Customers per segment, and the ``top`` at-risk customers with their drivers."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from shoprec.churn.score import SEGMENTS

    console = Console()
    n = max(scores.height, 1)
    per = scores.group_by("segment").agg(
        pl.len().alias("customers"), pl.col("probability").mean().alias("mean_p")
    )
    counts = {r["segment"]: r for r in per.iter_rows(named=True)}
    at = scores.get_column("scored_at")[0] if scores.height else None
    table = Table(title=f"Customers per segment (scored at {at})")
    table.add_column("segment")
    table.add_column("customers", justify="right")
    table.add_column("share", justify="right")
    table.add_column("mean P(churn)", justify="right")
    for seg in SEGMENTS:
        row = counts.get(seg)
        c = int(row["customers"]) if row else 0
        mean_p = f"{row['mean_p']:.3f}" if row else "-"
        table.add_row(seg, str(c), f"{c / n:.1%}", mean_p)
    console.print(table)

    drivers = sorted(c for c in scores.columns if c.startswith("driver_"))
    risky = scores.filter(pl.col("segment") == "at_risk").sort(
        "probability", descending=True, maintain_order=True
    )
    if risky.height == 0:
        console.print("No customer is in the at_risk segment.")
        return
    table = Table(title=f"Top {min(top, risky.height)} at-risk customers (of {risky.height})")
    table.add_column("user_id")
    table.add_column("P(churn)", justify="right")
    table.add_column("recency (days)", justify="right")
    table.add_column("drivers (log-odds; + pushes towards churn)")
    for row in risky.head(top).iter_rows(named=True):
        parts = [f"{row[d]} ({row[d.replace('driver_', 'contribution_')]:+.2f})" for d in drivers]
        table.add_row(
            str(row["user_id"]),
            f"{row['probability']:.3f}",
            f"{row['recency_days']:.0f}",
            ", ".join(parts),
        )
    console.print(table)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``churn`` verb group (``score``, ``train``) to the main parser's verbs."""
    churn = subparsers.add_parser("churn", help="churn models: score customers, train")
    verbs = churn.add_subparsers(dest="churn_verb", metavar="STEP")
    verbs.required = True

    p = verbs.add_parser("score", help="score every known customer at a date with a bundle")
    p.add_argument("--bundle", required=True, help="churn bundle folder or models:/churn@...")
    p.add_argument("--data", required=True, help="prepared dataset folder (its events)")
    p.add_argument("--at", required=True, help="scoring date (ISO); events before it are read")
    p.add_argument("--output", default="churn-scores", help="folder for scores.parquet/.csv")
    p.add_argument("--top", type=int, default=10, help="at-risk customers to print")
    p.add_argument("--tracking-uri", default=None, help="for a models:/ bundle URI")
    p.add_argument(
        "--refit-bgnbd",
        action="store_true",
        help="hybrid bundles: refit BG/NBD on the cohort at --at (default: stored parameters)",
    )
    p.set_defaults(func=score_command)

    p = verbs.add_parser("train", help="train the churn models of a churn config")
    add_run_args(p, "churn config YAML (configs/churn/*.yaml)", "net.max_epochs=5")
    p.set_defaults(func=train_command)

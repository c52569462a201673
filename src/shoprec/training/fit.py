"""``fit(config) -> FitResult``: the one training entry point of the CLI, the tuner and the tests.

Steps: seed everything, open (or prepare) the dataset, build the model from the registry,
train it in its regime (Lightning for neural models; one counting pass for the baselines),
evaluate on the test cases (full catalogue, pessimistic ties), and write the run folder::

    <output_dir>/<name>/config.yaml       the resolved, validated config
    <output_dir>/<name>/checkpoints/      Lightning checkpoints (``last.ckpt`` for resume)
    <output_dir>/<name>/bundle/           the framework-free model bundle
    <output_dir>/<name>/metrics.json      test metrics + protocol + timings + per-epoch history

Tracking is optional and injected (``tracker``), so ``fit`` runs offline in tests.

Several processes (``trainer.strategy: ddp``, see :mod:`shoprec.training.ddp`): every process
trains; only global rank 0 writes ``config.yaml``, talks to the tracker, evaluates and writes
the bundle and ``metrics.json``. The other ranks return a result without metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import yaml

from shoprec.config import ConfigError
from shoprec.data.dataset import PreparedDataset
from shoprec.export import save_bundle
from shoprec.models import registry
from shoprec.models.base import NextItemModel
from shoprec.training.config import ExperimentConfig, validate_model_section
from shoprec.training.ddp import launched_as_rank_zero

__all__ = ["FitResult", "fit", "open_dataset"]


@dataclass
class FitResult:
    """What a training run produced, for the CLI, the tuner and the tests."""

    config: ExperimentConfig
    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, float]
    protocol: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model: NextItemModel | None = None


class HistoryCallback(L.Callback):
    """Keeps per-epoch metrics and epoch wall times (for reports and curves)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.epoch_seconds: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)
        row = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if v.numel() == 1 and (k.startswith("train/") or k.startswith("val/"))
        }
        row["epoch"] = float(trainer.current_epoch)
        row["epoch_seconds"] = self.epoch_seconds[-1]
        self.history.append(row)


def open_dataset(config: ExperimentConfig) -> PreparedDataset:
    """Open the prepared dataset, preparing it first from ``data.preset`` when it is missing."""
    path = Path(config.data.path)
    if not (path / "manifest.json").is_file() and config.data.preset:
        from shoprec.config import load_config
        from shoprec.data.config import DataConfig
        from shoprec.data.prepare import prepare

        preset = Path(config.data.preset)
        prepare(
            load_config(DataConfig, preset),
            output=path,
            input_path=config.data.input,
            config_path=preset,
        )
    return PreparedDataset.open(path)


def _model_config(config: ExperimentConfig, n_items: int) -> Any:
    fields = dict(config.model)
    cls = registry.config_class(config.model_name)
    if "n_items" in cls.model_fields:
        fields["n_items"] = n_items
    fields.pop("name", None)
    if "name" in cls.model_fields:
        fields["name"] = config.model_name
    return cls.model_validate(fields)


def regime_config(config: ExperimentConfig) -> Any:
    """The ``training`` section validated against the model's regime (seed from the run)."""
    from shoprec.config import validate_config
    from shoprec.training.regimes import REGIMES

    regime = REGIMES.get(config.model_name)
    if regime is None:
        if config.training:
            raise ConfigError(
                f"{config.name}: model {config.model_name!r} takes no 'training' section"
            )
        return None
    data = {"seed": config.seed, **config.training}
    return validate_config(regime.regime_config, data, source=f"{config.name} (training)")


def _fit_counts(
    config: ExperimentConfig, dataset: PreparedDataset, sessions: list[np.ndarray]
) -> NextItemModel:
    cls = registry.model_class(config.model_name)
    model_cfg = _model_config(config, dataset.n_items)
    model: NextItemModel = cls.fit(sessions, dataset.n_items, model_cfg)
    return model


def _trainer_callbacks(
    config: ExperimentConfig, run_dir: Path, has_val: bool
) -> tuple[list[L.Callback], Any]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    tc = config.trainer
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=tc.monitor if has_val else None,
        mode=tc.mode,
        save_last=True,
        save_top_k=1,
    )
    callbacks: list[L.Callback] = [ckpt]
    if has_val and tc.patience > 0:
        callbacks.append(EarlyStopping(monitor=tc.monitor, mode=tc.mode, patience=tc.patience))
    return callbacks, ckpt


def _fit_neural(
    config: ExperimentConfig,
    dataset: PreparedDataset,
    sessions: list[np.ndarray],
    run_dir: Path,
    callbacks: Sequence[L.Callback],
    history: HistoryCallback,
) -> tuple[NextItemModel, float | None, bool]:
    """Train in the model's Lightning regime; also says whether this process is global rank 0."""
    from shoprec.training.regimes import REGIMES

    regime = REGIMES[config.model_name]
    model_cfg = _model_config(config, dataset.n_items)
    training = regime_config(config)
    module = regime.module(model_cfg, training)
    datamodule = regime.datamodule(model_cfg, training, dataset, sessions)
    has_val = dataset.has("valid_cases.parquet")
    own_callbacks, ckpt = _trainer_callbacks(config, run_dir, has_val)
    tc = config.trainer
    trainer = L.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=tc.strategy,
        num_nodes=tc.num_nodes,
        precision=tc.precision,  # type: ignore[arg-type]
        max_epochs=tc.max_epochs,
        limit_train_batches=tc.limit_train_batches,
        limit_val_batches=tc.limit_val_batches if has_val else 0,
        val_check_interval=tc.val_check_interval,
        log_every_n_steps=tc.log_every_n_steps,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        # the regimes shard their own training batches under DDP (shoprec.training.ddp) and
        # validate on all cases in every process
        use_distributed_sampler=False,
        deterministic=tc.deterministic,
        gradient_clip_val=tc.gradient_clip_val,
        logger=False,
        callbacks=[*own_callbacks, history, *callbacks],
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if config.resume and last.is_file() else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    best_val: float | None = None
    best_path = ckpt.best_model_path if has_val else ""
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        if ckpt.best_model_score is not None:
            best_val = float(ckpt.best_model_score)
    net = cast(NextItemModel, module.model)
    if isinstance(net, torch.nn.Module):
        net.eval()
    return net, best_val, trainer.is_global_zero


def fit(
    config: ExperimentConfig,
    *,
    tracker: Any | None = None,
    callbacks: Sequence[L.Callback] = (),
    run_dir: Path | None = None,
) -> FitResult:
    """Train, evaluate and export one next-item model as ``config`` says.

    ``tracker`` (a :class:`shoprec.tracking.RunTracker`) receives params, curves, test metrics
    and artifacts when given; ``callbacks`` are extra Lightning callbacks (e.g. Optuna pruning).
    """
    from shoprec.evaluation.evaluate import evaluate_model

    validate_model_section(config.model, config.name)
    regime_config(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    run_dir = run_dir or Path(config.output_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    if not launched_as_rank_zero():
        tracker = None  # a DDP worker process: rank 0 alone tracks and writes
    else:
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset = open_dataset(config)
    if tracker is not None:
        tracker.log_params(config.model_dump(mode="json"))
        tracker.log_dataset(dataset.manifest)
        tracker.set_tags({"model": config.model_name, "task": config.task, "seed": config.seed})
        tracker.log_text((run_dir / "config.yaml").read_text(encoding="utf-8"), "config.yaml")
    timings["data_seconds"] = time.perf_counter() - t0

    history = HistoryCallback()
    t0 = time.perf_counter()
    regime = registry.regime(config.model_name)
    best_val: float | None = None
    sessions = dataset.train_sessions()
    if regime == "counts":
        model = _fit_counts(config, dataset, sessions)
    else:
        extra: list[L.Callback] = list(callbacks)
        if tracker is not None:
            from shoprec.tracking import EpochMetricsCallback

            extra.append(EpochMetricsCallback(tracker))
        model, best_val, global_zero = _fit_neural(
            config, dataset, sessions, run_dir, extra, history
        )
        if not global_zero:  # a DDP worker: rank 0 evaluates and writes the run folder
            return FitResult(
                config=config,
                run_dir=run_dir,
                bundle_dir=run_dir / "bundle",
                metrics={},
                protocol={},
                timings={"train_seconds": time.perf_counter() - t0},
                model=model,
            )
    timings["train_seconds"] = time.perf_counter() - t0
    if best_val is None and dataset.has("valid_cases.parquet"):
        best_val = _validation_metric(config, model, dataset)
    if history.epoch_seconds:
        timings["epoch_seconds_mean"] = float(np.mean(history.epoch_seconds))
        timings["epochs"] = float(len(history.epoch_seconds))

    metrics: dict[str, float] = {}
    protocol: dict[str, Any] = {}
    ranks: np.ndarray | None = None
    if config.evaluation.enabled and dataset.has("test_cases.parquet"):
        t0 = time.perf_counter()
        with torch.inference_mode():
            result = evaluate_model(
                model,
                dataset,
                split="test",
                batch_size=config.evaluation.batch_size,
                exclude_seen=config.evaluation.exclude_seen,
                max_prefix_len=config.evaluation.max_prefix_len,
            )
        metrics = dict(result.metrics)
        protocol = dict(result.protocol)
        ranks = result.ranks
        timings["eval_seconds"] = time.perf_counter() - t0

    bundle_dir = _write_bundle(config, dataset, model, sessions, run_dir, metrics, protocol)
    summary = {
        "name": config.name,
        "model": config.model_name,
        "metrics": metrics,
        "protocol": protocol,
        "timings": timings,
        "best_val": best_val,
        "history": history.history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if tracker is not None:
        _track_result(tracker, summary, bundle_dir, ranks)
    return FitResult(
        config=config,
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        metrics=metrics,
        protocol=protocol,
        history=history.history,
        best_val=best_val,
        timings=timings,
        model=model,
    )


def _validation_metric(
    config: ExperimentConfig, model: NextItemModel, dataset: PreparedDataset
) -> float | None:
    """The monitored validation metric for models trained without a validation loop."""
    from shoprec.evaluation.evaluate import evaluate_model

    with torch.inference_mode():
        result = evaluate_model(
            model, dataset, split="valid", batch_size=config.evaluation.batch_size
        )
    # the evaluator names metrics after the split ("valid/mrr@20"); Lightning's are "val/..."
    key = config.trainer.monitor.replace("val/", "valid/", 1)
    value = result.metrics.get(key)
    return None if value is None else float(value)


def _write_bundle(
    config: ExperimentConfig,
    dataset: PreparedDataset,
    model: NextItemModel,
    sessions: list[np.ndarray],
    run_dir: Path,
    metrics: dict[str, float],
    protocol: dict[str, Any],
) -> Path:
    from shoprec.inference import build_item_neighbours

    # Item neighbours give the service its "because you viewed X" reasons and cart add-ons.
    aux = build_item_neighbours(sessions, dataset.n_items)
    manifest = dataset.manifest
    data_info = {
        "path": str(dataset.root),
        "name": (manifest.get("config") or {}).get("name"),
        "sources": manifest.get("sources"),
        "split": manifest.get("split"),
    }
    return save_bundle(
        run_dir / "bundle",
        model,
        dataset.items,
        metrics=metrics,
        protocol=protocol,
        dataset=data_info,
        extra={"experiment": config.name, "seed": config.seed},
        aux=aux,
    )


def _track_result(
    tracker: Any, summary: dict[str, Any], bundle_dir: Path, ranks: np.ndarray | None
) -> None:
    tracker.log_metrics(summary["metrics"])
    timings = {f"time/{k}": v for k, v in summary["timings"].items()}
    tracker.log_metrics(timings)
    protocol = summary["protocol"]
    if protocol:
        tracker.log_protocol(protocol)
    tracker.log_dict(summary, "metrics.json")
    tracker.log_artifacts(bundle_dir, "bundle")
    # the figures exist only for the run: importing matplotlib and building them is tracking
    # cost too, so it counts in ``tracker.seconds``
    with tracker.timed():
        from shoprec.evaluation import plots

    plots.log_figures(
        tracker,
        f"{summary['name']} ({summary['model']})",
        metrics=summary["metrics"],
        ranks=ranks,
        history=summary["history"],
    )
    # what tracking has cost this run so far (all but this call and closing the run)
    tracker.log_metrics({"time/tracking_seconds": tracker.seconds})

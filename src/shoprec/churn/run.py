"""A churn training run: config -> data -> :func:`fit_churn` -> run folder, tracked in MLflow.

``shoprec train configs/churn/cdnow.yaml`` dispatches here when the YAML is a churn config
(:func:`is_churn_config`: a top-level ``task: churn``), and so can the tuner: the run takes
the same ``tracker`` and extra Lightning ``callbacks`` (Optuna pruning on ``val/roc_auc`` or
``val/loss``) as the next-item :func:`shoprec.training.fit.fit`, honours the ``name`` and
``output_dir`` overrides and returns ``best_val`` and ``run_dir``.

Run folder ``<output_dir>/<name>/``::

    config.yaml      the resolved, validated churn config
    bundle/          the churn bundle (shoprec.churn.score), logged as artifact path "bundle"
    plots/           roc.png, pr.png, calibration.png, lift.png (test, else validation rows)
    metrics.json     the tracked flat metrics + everything fit_churn measured

Tracked (with a :class:`shoprec.tracking.RunTracker`):

* params: the flattened config, the churn definition in words (``churn.label``,
  ``churn.cohort``, ``churn.horizon_days``, ``churn.test_cutoffs``) and the dataset's counts;
* tags: ``task=churn``, ``model=churn_net``, ``model.family``, ``seed``, the dataset identity
  (:meth:`RunTracker.log_dataset`), ``churn.selected_model`` / ``churn.best_baseline`` (the
  winners on validation);
* metrics: ``test/roc_auc``, ``test/pr_auc``, ``test/log_loss``, ``test/brier``, ``test/ece``,
  ``test/lift@10`` of the bundled network (calibrated; what promotion compares), the same
  under ``valid/`` (raw scores: the calibrator is fitted on validation), and
  ``baseline/<name>/test/...`` / ``baseline/<name>/valid/...`` for every baseline; per-epoch
  ``train/loss``, ``val/loss``, ``val/roc_auc`` of the network (its first member);
* artifacts: ``config.yaml``, ``metrics.json``, ``plots/*.png``, ``bundle/``, the dataset
  manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import yaml

from shoprec.churn.config import (
    ChurnConfig,
    ChurnDataRef,
    is_churn_config,
    is_churn_config_file,
)
from shoprec.churn.labels import ChurnDataError
from shoprec.churn.metrics import plot_calibration, plot_lift, plot_pr, plot_roc, save_figure
from shoprec.churn.score import events_from_dataset, jsonable
from shoprec.churn.train import BASELINES, NET, ChurnResult, fit_churn
from shoprec.config import ConfigError, apply_overrides, read_yaml, validate_config

__all__ = [
    "METRIC_KEYS",
    "definition_params",
    "fit_churn_run",
    "flat_metrics",
    "is_churn_config",
    "is_churn_config_file",
    "load_churn_config",
    "open_churn_data",
]

# churn_metrics name -> tracked name (``@`` becomes ``_at_`` in MLflow)
METRIC_KEYS: dict[str, str] = {
    "roc_auc": "roc_auc",
    "pr_auc": "pr_auc",
    "log_loss": "log_loss",
    "brier": "brier",
    "ece": "ece",
    "lift_top_decile": "lift@10",
    "churn_rate": "churn_rate",
    "n": "n",
}


def load_churn_config(
    source: str | Path | ChurnConfig | Mapping[str, Any], overrides: Sequence[str] | None = None
) -> ChurnConfig:
    """A validated :class:`ChurnConfig` from a YAML path, a mapping or a config, with
    ``--set key=value`` overrides applied (unknown keys fail, naming the key)."""
    if isinstance(source, ChurnConfig):
        data, name = source.model_dump(mode="json"), source.name
    elif isinstance(source, Mapping):
        data, name = dict(source), str(source.get("name", "<churn config>"))
    else:
        data, name = read_yaml(source), str(source)
    if not is_churn_config(data) and "task" in data:
        raise ConfigError(f"{name}: task {data['task']!r} is not a churn config (task: churn)")
    data = apply_overrides(data, list(overrides or []))
    return validate_config(ChurnConfig, data, source=name)


def open_churn_data(ref: ChurnDataRef | None) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """The events of a prepared dataset folder (preparing it from the preset when missing)
    and its manifest."""
    if ref is None:
        raise ConfigError(
            "the churn config has no 'data' section: set data.path (a prepared dataset "
            "folder) and optionally data.preset to prepare it"
        )
    path = Path(ref.path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file() and ref.preset:
        from shoprec.config import load_config
        from shoprec.data.config import DataConfig
        from shoprec.data.prepare import prepare

        preset = Path(ref.preset)
        prepare(
            load_config(DataConfig, preset, list(ref.overrides)),
            output=path,
            input_path=ref.input,
            config_path=preset,
        )
    if not path.is_dir():
        raise ChurnDataError(
            f"{path}: no prepared dataset (run `shoprec data prepare` or set data.preset)"
        )
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return events_from_dataset(path), manifest


def definition_params(config: ChurnConfig) -> dict[str, str]:
    """The churn definition in words, as run params."""
    what = "no purchase" if config.definition == "no_purchase" else "no event of any type"
    active = "a purchase" if config.active_event == "purchase" else "an event of any type"
    window = (
        f"in the {config.observation_days:g} days before T"
        if config.observation_days
        else "at any time before T"
    )
    return {
        "churn.label": f"churned = {what} in (T, T + {config.horizon_days:g} days]",
        "churn.cohort": f"customers with {active} {window}",
        "churn.horizon_days": f"{config.horizon_days:g}",
        "churn.test_cutoffs": json.dumps([c.isoformat() for c in config.test_cutoffs]),
        "churn.valid_cutoffs": json.dumps([c.isoformat() for c in config.valid_cutoffs]),
    }


def model_family(config: ChurnConfig) -> str:
    """``mlp``, ``mlp+bgnbd`` (hybrid inputs), with ``-ensemble<k>`` for k > 1 members."""
    family = "mlp+bgnbd" if config.net.bgnbd else "mlp"
    return family + (f"-ensemble{config.net.ensemble}" if config.net.ensemble > 1 else "")


def flat_metrics(result: ChurnResult) -> dict[str, float]:
    """The tracked metrics (see the module docstring), finite values only."""
    out: dict[str, float] = {}
    models: dict[str, Any] = result.metrics["models"]

    def put(prefix: str, values: Mapping[str, Any]) -> None:
        for name, key in METRIC_KEYS.items():
            v = values.get(name)
            if isinstance(v, int | float) and np.isfinite(v):
                out[f"{prefix}/{key}"] = float(v)

    for model in (NET, *BASELINES):
        entry = models.get(model)
        if not entry:
            continue
        base = "" if model == NET else f"baseline/{model}/"
        if "valid" in entry:
            put(f"{base}valid", entry["valid"]["raw"])
        if "test" in entry:
            put(f"{base}test", entry["test"]["calibrated"])
            out[f"{base}test/log_loss_raw"] = float(entry["test"]["raw"]["log_loss"])
            ece_raw = entry["test"]["raw"]["ece"]
            if isinstance(ece_raw, float) and np.isfinite(ece_raw):
                out[f"{base}test/ece_raw"] = ece_raw
    out["time/fit_seconds"] = float(result.metrics["seconds"])
    training = models[NET].get("training", {})
    epochs = training.get("epochs_run")
    if isinstance(epochs, list):
        out["net/epochs"] = float(np.mean(epochs))
    elif isinstance(epochs, int):
        out["net/epochs"] = float(epochs)
    return out


def _epoch_curves(tracker: Any) -> L.Callback:
    """:class:`shoprec.tracking.EpochMetricsCallback` logging once per epoch, at the train
    epoch's end, where ``callback_metrics`` hold this epoch's ``train/loss`` *and* its
    ``val/*`` (at a callback's ``on_validation_epoch_end`` they still hold the previous
    epoch's values: Lightning runs callbacks' epoch-end hooks before the module's logging is
    collected)."""
    from shoprec.tracking import EpochMetricsCallback

    class _OncePerEpoch(EpochMetricsCallback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            return None

    return _OncePerEpoch(tracker)


def _plots(result: ChurnResult, out_dir: Path) -> dict[str, Any]:
    """ROC / PR / calibration / lift figures of every model (test rows, else validation)."""
    preds = result.predictions
    split = "test" if preds.filter(pl.col("split") == "test").height else "valid"
    rows = preds.filter(pl.col("split") == split)
    y = rows.get_column("churned").to_numpy().astype(np.float64)
    if np.unique(y).size < 2:
        return {}
    scores = {m: rows.get_column(m).to_numpy() for m in (NET, *BASELINES) if m in rows.columns}
    figures = {
        "roc": plot_roc(y, scores),
        "pr": plot_pr(y, scores),
        "calibration": plot_calibration(y, scores),
        "lift": plot_lift(y, scores),
    }
    for kind, fig in figures.items():
        fig.suptitle(f"{result.config.name}: {split} cut-off", fontsize=9)
        save_figure(fig, out_dir / f"{kind}.png")
    return figures


def fit_churn_run(
    config: ChurnConfig | str | Path | Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    *,
    tracker: Any | None = None,
    callbacks: Sequence[L.Callback] = (),
    run_dir: Path | None = None,
) -> ChurnResult:
    """Load the config (path, mapping or :class:`ChurnConfig`, plus ``--set`` overrides), open
    its data, train with :func:`shoprec.churn.train.fit_churn` and write the run folder.

    ``tracker`` (a :class:`shoprec.tracking.RunTracker`) receives params, tags, curves, metrics,
    plots and the bundle (artifact path ``bundle``, so ``shoprec register RUN --task churn``
    works); ``callbacks`` are extra Lightning callbacks for the network (Optuna pruning).
    The result carries ``best_val`` (the network's validation ``select_metric``), ``run_dir``
    and ``flat_metrics``.
    """
    cfg = load_churn_config(config, overrides)
    start = time.perf_counter()
    events, manifest = open_churn_data(cfg.data)
    run_dir = run_dir or Path(cfg.output_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    (run_dir / "config.yaml").write_text(config_yaml, encoding="utf-8")
    extra: list[L.Callback] = list(callbacks)
    if tracker is not None:
        tracker.log_params(cfg.model_dump(mode="json"))
        tracker.log_params(definition_params(cfg))
        if manifest:
            tracker.log_dataset(manifest)
        tracker.set_tags(
            {
                "task": cfg.task,
                "model": NET,
                "model.family": model_family(cfg),
                "seed": cfg.seed,
            }
        )
        tracker.log_text(config_yaml, "config.yaml")
        extra.append(_epoch_curves(tracker))

    result = fit_churn(cfg, events, run_dir / "bundle", callbacks=extra)
    result.run_dir = run_dir
    flat = flat_metrics(result)
    result.flat_metrics = flat
    figures = _plots(result, run_dir / "plots")
    summary = {
        "name": cfg.name,
        "task": cfg.task,
        "metrics": flat,
        "best_val": result.best_val,
        "selection": result.metrics["selection"],
        "seconds": round(time.perf_counter() - start, 3),
        "fit": result.metrics,
    }
    (run_dir / "metrics.json").write_text(
        json.dumps(jsonable(summary), indent=2) + "\n", encoding="utf-8"
    )
    if tracker is not None:
        tracker.log_metrics(flat)
        selection = result.metrics["selection"]
        tracker.set_tags(
            {
                "churn.selected_model": selection["best_model"],
                "churn.best_baseline": selection["best_baseline"],
                "churn.bundled_model": selection["bundled_model"],
            }
        )
        for kind, fig in figures.items():
            tracker.log_figure(fig, f"plots/{kind}.png")
        tracker.log_dict(jsonable(summary), "metrics.json")
        tracker.log_artifacts(result.bundle_dir, "bundle")
    return result

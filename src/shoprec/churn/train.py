"""Train the churn network and the baselines, calibrate, select, and write the bundle.

:func:`fit_churn` builds stacked examples for the train / valid / test cut-offs
(:func:`shoprec.churn.features.build_examples`), trains

* ``churn_net``: :class:`shoprec.models.churn_net.ChurnNet` with Lightning (binary
  cross-entropy, AdamW, early stopping on the validation BCE, best epoch restored; per-epoch
  ``train/loss``, ``val/loss`` and ``val/roc_auc`` for curves and pruning), optionally on a
  feature subset plus the per-cut-off BG/NBD quantities (:mod:`shoprec.churn.hybrid`) and as
  an ensemble of seeds,
* ``logistic_rfm``, ``gbt``, ``bgnbd`` (:mod:`shoprec.churn.baselines`),

fits one calibrator per model on the validation rows (:mod:`shoprec.churn.calibration`),
reports raw and calibrated metrics on validation and test, picks the best model on
validation (``select_metric`` on the raw scores: ROC-AUC / PR-AUC do not depend on a
monotone calibration) and writes the bundle (:func:`shoprec.churn.score.write_bundle`),
which always holds the network; ``metrics.json`` says plainly when a baseline won.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from shoprec import __version__, schema
from shoprec.churn.baselines import BGNBDChurn, GradientBoostedTrees, LogisticRFM
from shoprec.churn.calibration import Calibrator, fit_calibrator
from shoprec.churn.config import ChurnConfig, NetConfig
from shoprec.churn.features import build_examples, feature_names
from shoprec.churn.hybrid import BGNBD_FEATURES, add_bgnbd_features, fit_bgnbd
from shoprec.churn.labels import CHURNED, CUTOFF, ChurnDataError, as_events
from shoprec.churn.metrics import churn_metrics
from shoprec.churn.score import write_bundle
from shoprec.config import ConfigError
from shoprec.models.churn_net import ChurnNet

__all__ = [
    "BASELINES",
    "NET",
    "ChurnLitModule",
    "ChurnResult",
    "fit_churn",
    "model_features",
    "net_features",
    "train_ensemble",
    "train_net",
]

NET = "churn_net"
BASELINES = ("logistic_rfm", "gbt", "bgnbd")
SPLITS = ("train", "valid", "test")


@dataclass
class ChurnResult:
    """What :func:`fit_churn` returns (everything in ``metrics`` is also in metrics.json)."""

    config: ChurnConfig
    best_model: str  # winner on validation (may be a baseline)
    best_baseline: str
    bundled_model: str  # always the network
    bundle_dir: Path
    feature_names: list[str]
    metrics: dict[str, Any]
    # split, cutoff, user_id, churned, and per model: calibrated probability (``<model>``)
    # and raw score (``<model>_raw``); valid and test rows only
    predictions: pl.DataFrame
    # the bundled network's validation ``select_metric`` (raw scores): what tuning optimises
    best_val: float | None = None
    run_dir: Path | None = None  # set by shoprec.churn.run.fit_churn_run
    flat_metrics: dict[str, float] | None = None  # the tracked keys (shoprec.churn.run)


class ChurnLitModule(L.LightningModule):
    """Lightning wrapper: BCE-with-logits on :class:`ChurnNet` outputs, AdamW.

    Logs ``train/loss`` and, per validation epoch, ``val/loss`` and ``val/roc_auc`` (over the
    whole validation set), the keys that curves, early stopping and pruning read.
    """

    def __init__(self, net: ChurnNet, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss = torch.nn.BCEWithLogitsLoss()
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = self.loss(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self._val.append((logits.detach(), y.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        self.log("val/loss", self.loss(logits, y), batch_size=int(y.numel()))
        y_np = y.cpu().numpy()
        if np.unique(y_np).size == 2:
            auc = float(roc_auc_score(y_np, logits.float().cpu().numpy()))
            self.log("val/roc_auc", auc, batch_size=int(y.numel()))
        self._val = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class _KeepBest(L.Callback):
    """Keep the network weights of the epoch with the lowest validation loss (in memory).

    Reads ``val/loss`` in ``on_validation_end``: callbacks' ``on_validation_epoch_end`` runs
    before the module's (where ``val/loss`` is logged) and before the epoch's metrics reach
    ``callback_metrics``, so there it would still see the previous epoch's loss.
    """

    def __init__(self) -> None:
        self.best = float("inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is None:
            return
        loss = float(value)
        if loss < self.best:
            self.best = loss
            self.best_epoch = trainer.current_epoch
            net = pl_module.net
            assert isinstance(net, ChurnNet)
            self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}


def train_net(
    feature_names: list[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    config: NetConfig,
    seed: int = 0,
    callbacks: Sequence[L.Callback] = (),
) -> tuple[ChurnNet, dict[str, Any]]:
    """Train :class:`ChurnNet` with Lightning; returns the best-epoch network and a summary.

    ``callbacks`` are extra Lightning callbacks (tracking curves, Optuna pruning); they see
    ``train/loss``, ``val/loss`` and ``val/roc_auc`` once per epoch.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    net = ChurnNet(feature_names, config.hidden, config.dropout, config.log_transform)
    xt = torch.from_numpy(np.asarray(x_train, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.float32))
    xv = torch.from_numpy(np.asarray(x_valid, dtype=np.float32))
    yv = torch.from_numpy(np.asarray(y_valid, dtype=np.float32))
    net.set_standardization(xt)
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        TensorDataset(xt, yt), batch_size=config.batch_size, shuffle=True, generator=gen
    )
    valid_loader = DataLoader(TensorDataset(xv, yv), batch_size=max(1, xv.shape[0]))
    keep = _KeepBest()
    early = L.pytorch.callbacks.EarlyStopping(
        monitor="val/loss", patience=config.patience, mode="min"
    )
    module = ChurnLitModule(net, config.lr, config.weight_decay)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)  # a tiny MLP: one thread is fastest
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own deprecation
        loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            trainer = L.Trainer(
                max_epochs=config.max_epochs,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                deterministic=True,
                default_root_dir=tmp,
                callbacks=[keep, early, *callbacks],
            )
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=valid_loader)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            torch.set_num_threads(threads)
    if keep.state is not None:
        net.load_state_dict(keep.state)
    net.eval()
    info = {
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": int(keep.best_epoch),
        "best_val_bce": keep.best,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - start, 3),
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
    }
    return net, info


def train_ensemble(
    feature_names: list[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    config: NetConfig,
    seed: int = 0,
    callbacks: Sequence[L.Callback] = (),
) -> tuple[ChurnNet, dict[str, Any]]:
    """``config.ensemble`` networks (member ``i`` seeded ``seed * 1000 + i``; the first one
    with ``seed`` itself when there is a single member), combined into one averaging network.

    ``callbacks`` are attached to the first member only (its curves are the run's curves;
    a pruner stops the whole ensemble by stopping it).
    """
    if config.ensemble == 1:
        return train_net(feature_names, x_train, y_train, x_valid, y_valid, config, seed, callbacks)
    nets: list[ChurnNet] = []
    infos: list[dict[str, Any]] = []
    for i in range(config.ensemble):
        net, info = train_net(
            feature_names,
            x_train,
            y_train,
            x_valid,
            y_valid,
            config,
            seed * 1000 + i,
            callbacks if i == 0 else (),
        )
        nets.append(net)
        infos.append(info)
    combined = ChurnNet.ensemble_of(nets)
    summary = {
        "members": config.ensemble,
        "epochs_run": [i["epochs_run"] for i in infos],
        "best_epoch": [i["best_epoch"] for i in infos],
        "best_val_bce": [i["best_val_bce"] for i in infos],
        "seed": [i["seed"] for i in infos],
        "train_seconds": round(sum(i["train_seconds"] for i in infos), 3),
        "n_parameters": int(sum(p.numel() for p in combined.parameters())),
    }
    return combined, summary


def net_features(base: list[str], config: ChurnConfig) -> list[str]:
    """The network's inputs: ``net.features`` (or ``base``) plus the BG/NBD quantities."""
    chosen = list(config.net.features) if config.net.features is not None else list(base)
    known = feature_names(config)
    unknown = [f for f in chosen if f not in known]
    if unknown:
        raise ConfigError(
            f"net.features: unknown feature(s) {unknown}; choose from {', '.join(known)}"
            + ("" if config.features.extended else " (features.extended adds more)")
        )
    if not chosen and not config.net.bgnbd:
        raise ConfigError("net.features is empty and net.bgnbd is false: the net has no input")
    return chosen + (list(BGNBD_FEATURES) if config.net.bgnbd else [])


def model_features(train: pl.DataFrame, config: ChurnConfig) -> list[str]:
    """:func:`~shoprec.churn.features.feature_names`, minus those constant on the training
    rows when configured."""
    names = list(feature_names(config))
    if not config.features.drop_constant:
        return names
    stats = train.select(pl.col(f).n_unique().alias(f) for f in names).row(0, named=True)
    kept = [f for f in names if stats[f] > 1]
    return kept or names


def _split_summary(frame: pl.DataFrame, cutoffs: list[Any]) -> dict[str, Any]:
    per = (
        frame.group_by(CUTOFF)
        .agg(pl.len().alias("rows"), pl.col(CHURNED).mean().alias("churn_rate"))
        .sort(CUTOFF)
    )
    return {
        "cutoffs": [c.isoformat() for c in cutoffs],
        "rows": frame.height,
        "customers": frame.get_column(schema.USER_ID).n_unique(),
        "churn_rate": float(frame.get_column(CHURNED).mean()) if frame.height else None,  # type: ignore[arg-type]
        "per_cutoff": [
            {"cutoff": r[CUTOFF].isoformat(), "rows": r["rows"], "churn_rate": r["churn_rate"]}
            for r in per.iter_rows(named=True)
        ],
    }


def _bundled_bgnbd(frames: dict[str, pl.DataFrame], config: ChurnConfig) -> dict[str, Any]:
    """The BG/NBD parameters the bundle scores with: those fitted at the latest evaluated
    cut-off (the last test one, else the last validation one), on that cut-off's cohort."""
    split = "test" if frames["test"].height else "valid"
    cutoff = max(config.cutoffs(split))
    rows = frames[split].filter(pl.col(CUTOFF) == cutoff)
    model = fit_bgnbd(rows, config)
    return {
        "params": model.params,
        "converged": model.converged,
        "fitted_at": cutoff.isoformat(),
        "customers": rows.height,
        "time_unit_days": config.bgnbd_time_unit_days,
    }


def _better(metric: str, a: float, b: float) -> bool:
    if not np.isfinite(a):
        return False
    if not np.isfinite(b):
        return True
    return a < b if metric == "log_loss" else a > b


def fit_churn(
    config: ChurnConfig,
    events: pl.DataFrame | pl.LazyFrame,
    output: Path,
    *,
    callbacks: Sequence[L.Callback] = (),
) -> ChurnResult:
    """Train every churn model on ``events`` and write the bundle to ``output``.

    ``callbacks`` are extra Lightning callbacks for the network (its first member): tracking
    curves, Optuna pruning. Raises :class:`ChurnDataError` when a split has no rows or a
    single class in training.
    """
    start = time.perf_counter()
    data = as_events(events).collect()
    frames = {s: build_examples(data, config.cutoffs(s), config) for s in SPLITS}
    if config.net.bgnbd:
        frames = {s: add_bgnbd_features(f, config) for s, f in frames.items()}
    train, test = frames["train"], frames["test"]
    for name in ("train", "valid"):
        if frames[name].height == 0:
            raise ChurnDataError(f"no {name} customers: check the cut-offs and the log's dates")
    if train.get_column(CHURNED).n_unique() < 2:
        raise ChurnDataError("training labels have a single class; widen the cut-offs")

    feats = model_features(train, config)
    nfeats = net_features(feats, config)
    y = {s: frames[s].get_column(CHURNED).to_numpy().astype(np.float64) for s in SPLITS}
    x = {s: frames[s].select(nfeats).to_numpy().astype(np.float64) for s in SPLITS}

    net, net_info = train_ensemble(
        nfeats,
        x["train"],
        y["train"],
        x["valid"],
        y["valid"],
        config.net,
        config.seed,
        callbacks,
    )

    def net_scores(split: str) -> np.ndarray:
        if frames[split].height == 0:
            return np.zeros(0)
        logits = net.predict_logits(torch.from_numpy(x[split].astype(np.float32)))
        out: np.ndarray = torch.sigmoid(logits).double().numpy()
        return out

    raw: dict[str, dict[str, np.ndarray]] = {NET: {s: net_scores(s) for s in ("valid", "test")}}
    fit_seconds: dict[str, float] = {NET: net_info["train_seconds"]}
    baselines: list[Any] = [
        LogisticRFM(seed=config.seed),
        GradientBoostedTrees(feats, config.gbt, seed=config.seed),
        BGNBDChurn(config.horizon_days, config.bgnbd_time_unit_days),
    ]
    extra: dict[str, Any] = {}
    for model in baselines:
        t0 = time.perf_counter()
        model.fit(train, y["train"])
        fit_seconds[model.name] = round(time.perf_counter() - t0, 3)
        raw[model.name] = {
            s: model.predict_proba(frames[s]) if frames[s].height else np.zeros(0)
            for s in ("valid", "test")
        }
        if isinstance(model, BGNBDChurn):
            extra["bgnbd"] = {
                "params": model.model.params,
                "converged": model.model.converged,
                "time_unit_days": config.bgnbd_time_unit_days,
            }

    calibrators: dict[str, Calibrator] = {}
    models: dict[str, Any] = {}
    calibrated: dict[str, dict[str, np.ndarray]] = {}
    for name, scores in raw.items():
        cal, cv = fit_calibrator(
            scores["valid"], y["valid"], config.calibration.method, config.seed
        )
        calibrators[name] = cal
        calibrated[name] = {s: cal.transform(p) if p.size else p for s, p in scores.items()}
        cal_info = cal.to_dict() if cal.method != "isotonic" else {"method": cal.method}
        entry: dict[str, Any] = {
            "calibration": {**cal_info, "cross_fitted_log_loss": cv},
            "fit_seconds": fit_seconds[name],
        }
        for s in ("valid", "test"):
            if frames[s].height:
                entry[s] = {
                    "raw": churn_metrics(y[s], scores[s]),
                    "calibrated": churn_metrics(y[s], calibrated[name][s]),
                }
        models[name] = entry
    models[NET]["training"] = net_info
    if "bgnbd" in extra:
        models["bgnbd"]["bgnbd"] = extra["bgnbd"]

    metric = config.select_metric

    def valid_value(name: str) -> float:
        return float(models[name]["valid"]["raw"][metric])

    best = NET
    for name in BASELINES:
        if _better(metric, valid_value(name), valid_value(best)):
            best = name
    best_baseline = BASELINES[0]
    for name in BASELINES[1:]:
        if _better(metric, valid_value(name), valid_value(best_baseline)):
            best_baseline = name
    note = (
        f"{NET} has the best validation {metric}."
        if best == NET
        else f"baseline {best} beats {NET} on validation {metric}; the bundle still holds "
        f"{NET} (baselines are not bundled)."
    )
    selection: dict[str, Any] = {
        "metric": metric,
        "on": "valid (raw scores)",
        "best_model": best,
        "best_baseline": best_baseline,
        "bundled_model": NET,
        "note": note,
    }
    if test.height:
        t_net = models[NET]["test"]["calibrated"]
        t_base = models[best_baseline]["test"]["calibrated"]
        selection["test_net_vs_best_baseline"] = {
            k: {NET: t_net[k], best_baseline: t_base[k]}
            for k in ("roc_auc", "pr_auc", "log_loss", "ece")
        }

    metrics: dict[str, Any] = {
        "shoprec_version": __version__,
        "config": config.model_dump(mode="json"),
        "features": feats,
        "net_features": nfeats,
        "data": {
            "events": data.height,
            "customers": data.get_column(schema.USER_ID).n_unique(),
            "first_event": data.get_column(schema.TIMESTAMP).min(),
            "last_event": data.get_column(schema.TIMESTAMP).max(),
            **{s: _split_summary(frames[s], config.cutoffs(s)) for s in SPLITS if frames[s].height},
        },
        "models": models,
        "selection": selection,
        "seconds": round(time.perf_counter() - start, 3),
    }
    bgnbd_state = _bundled_bgnbd(frames, config) if config.net.bgnbd else None
    if bgnbd_state is not None:
        metrics["models"][NET]["bgnbd_inputs"] = bgnbd_state
    bundle = write_bundle(output, config, net, calibrators[NET], metrics, bgnbd=bgnbd_state)

    pred_frames = []
    for s in ("valid", "test"):
        if frames[s].height == 0:
            continue
        cols = {f"{m}": calibrated[m][s] for m in raw} | {f"{m}_raw": raw[m][s] for m in raw}
        pred_frames.append(
            frames[s]
            .select(CUTOFF, schema.USER_ID, CHURNED)
            .with_columns(
                pl.lit(s).alias("split"),
                *(pl.Series(k, v, dtype=pl.Float64) for k, v in cols.items()),
            )
        )
    predictions = pl.concat(pred_frames, how="vertical")
    return ChurnResult(
        config=config,
        best_model=best,
        best_baseline=best_baseline,
        bundled_model=NET,
        bundle_dir=bundle,
        feature_names=nfeats,
        metrics=metrics,
        predictions=predictions,
        best_val=float(models[NET]["valid"]["raw"][metric]),
    )

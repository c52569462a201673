"""Experiment tracking in MLflow: the only module that imports ``mlflow``.

Every train / evaluate / tune run is an MLflow run carrying the flattened config as params,
per-epoch curves, final test metrics with the evaluation protocol, the dataset's identity
(manifest hashes, counts, split) so runs on different data are never mistaken for comparable,
and provenance (git commit, package versions, seed).

Metric keys inside shoprec are ``stage/metric@k`` (``val/mrr@20``). MLflow forbids ``@`` in
metric names, so they are logged as ``val/mrr_at_20`` (:func:`mlflow_key`).

The default store is embedded (``sqlite:///<cwd>/mlflow.db``, no server needed);
``SHOPREC_TRACKING_URI`` / ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` point elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from shoprec.errors import ShoprecError

ENV_URI = "SHOPREC_TRACKING_URI"
CHAMPION = "champion"
# Primary metric and direction per task: what promotion compares.
PRIMARY_METRIC = {"next-item": ("test/mrr@20", "max"), "churn": ("test/roc_auc", "max")}
_PACKAGES = ("shoprec", "torch", "lightning", "polars", "mlflow", "optuna", "bentoml")


class TrackingError(ShoprecError):
    """A tracking, registry or promotion request that cannot be carried out."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$SHOPREC_TRACKING_URI``, ``$MLFLOW_TRACKING_URI``, else embedded sqlite."""
    found = uri or os.environ.get(ENV_URI) or os.environ.get("MLFLOW_TRACKING_URI")
    return found or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_READY_STORES: set[tuple[str, bool]] = set()  # (uri, registry) this process has created


def open_client(uri: str, *, registry: bool = False) -> MlflowClient:
    """An MLflow client for ``uri`` whose store exists and is migrated.

    MLflow creates an embedded sqlite store lazily, on the first query, and two processes
    doing that at once (two ``shoprec train`` started together, Optuna workers on a fresh
    checkout) race: one fails with "table experiments already exists". For ``sqlite:///``
    URIs the first query therefore runs under an exclusive ``flock`` on ``<db>.lock``; other
    stores (a server, PostgreSQL) migrate once, with their own locking.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or (uri, registry) in _READY_STORES:
        return MlflowClient(uri, registry_uri=uri) if registry else MlflowClient(uri)
    db = Path(uri[len(prefix) :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(uri, registry_uri=uri) if registry else MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates and migrates the store
            if registry:
                client.search_registered_models(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY_STORES.add((uri, registry))
    return client


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when missing (tolerating a concurrent creator)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # another process created it meanwhile
        if exp is None:
            raise
        return str(exp.experiment_id)


def mlflow_key(key: str) -> str:
    """MLflow-safe metric name.

    >>> mlflow_key("val/mrr@20")
    'val/mrr_at_20'
    """
    return key.replace("@", "_at_")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config mappings into dotted params (values as short strings).

    >>> flatten({"model": {"name": "gru4rec", "layers": [100]}, "seed": 1})
    {'model.name': 'gru4rec', 'model.layers': '[100]', 'seed': '1'}
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
            out[name] = text[:6000]
    return out


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "missing"
    return versions


def dataset_fingerprint(manifest: Mapping[str, Any]) -> str:
    """A short hash of what makes two datasets comparable: sources, preset, split, filters."""
    keys = ("sources", "config", "split", "filters", "rows_accepted")
    payload = json.dumps({k: manifest.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def protocol_fingerprint(protocol: Mapping[str, Any]) -> str:
    keys = ("split", "n_cases", "n_items", "tie_mode", "exclude_seen", "catalogue")
    payload = json.dumps({k: protocol.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def dataset_tags(manifest: Mapping[str, Any]) -> dict[str, str]:
    config = manifest.get("config") or {}
    name = config.get("name") if isinstance(config, Mapping) else None
    return {
        "dataset": str(name or manifest.get("name") or "unknown"),
        "dataset.fingerprint": dataset_fingerprint(manifest),
    }


class RunTracker:
    """One MLflow run (optionally nested under a parent), closed with the right status.

    Use as a context manager: an exception marks the run FAILED, so it can never be promoted.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str,
        *,
        tracking_uri: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """``run_id`` attaches to an existing run (e.g. a study's parent) instead of creating one;
        such a run is not ended by this object."""
        t0 = time.perf_counter()
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.client = open_client(self.tracking_uri)
        self.run_id = run_id or ""
        self._owned = run_id is None
        # Everything tracking costs the run (overhead accounting): client set-up, run start and
        # end, every log call, and work done only for the tracker (see :meth:`timed`).
        self.seconds = time.perf_counter() - t0

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the enclosed work (e.g. building figures only the run keeps) as tracking."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def __enter__(self) -> RunTracker:
        if not self._owned:
            return self
        t0 = time.perf_counter()
        exp_id = _experiment_id(self.client, self.experiment)
        tags = {
            "mlflow.runName": self.run_name,
            "git_commit": git_commit(),
            **{f"version.{k}": v for k, v in package_versions().items()},
            **self.tags,
        }
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(exp_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        self.seconds += time.perf_counter() - t0
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._owned:
            return
        t0 = time.perf_counter()
        status = RunStatus.to_string(RunStatus.FAILED if exc_type else RunStatus.FINISHED)
        self.client.set_terminated(self.run_id, status=status)
        self.seconds += time.perf_counter() - t0

    # -- logging -------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        flat = flatten(params)
        items = list(flat.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            batch = [Param(k, v) for k, v in items[i : i + 100]]
            self.client.log_batch(self.run_id, params=batch)
        self.seconds += time.perf_counter() - t0

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.seconds += time.perf_counter() - t0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        t0 = time.perf_counter()
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(mlflow_key(k), float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
        self.seconds += time.perf_counter() - t0

    def log_dict(self, data: Any, artifact_file: str) -> None:
        t0 = time.perf_counter()
        self.client.log_dict(self.run_id, data, artifact_file)
        self.seconds += time.perf_counter() - t0

    def log_text(self, text: str, artifact_file: str) -> None:
        t0 = time.perf_counter()
        self.client.log_text(self.run_id, text, artifact_file)
        self.seconds += time.perf_counter() - t0

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        t0 = time.perf_counter()
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        self.seconds += time.perf_counter() - t0

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        t0 = time.perf_counter()
        self.client.log_artifact(self.run_id, str(local_file), artifact_path)
        self.seconds += time.perf_counter() - t0

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        t0 = time.perf_counter()
        self.client.log_figure(self.run_id, figure, artifact_file)
        self.seconds += time.perf_counter() - t0

    def log_protocol(self, protocol: Mapping[str, Any]) -> None:
        """The evaluation protocol as params, and its fingerprint as the tag :func:`promote`
        compares (numbers from different protocols are never compared)."""
        self.log_params({"protocol": protocol})
        self.set_tags({"protocol.fingerprint": protocol_fingerprint(protocol)})

    def log_dataset(self, manifest: Mapping[str, Any]) -> None:
        """Tags that identify the data, params with its counts, and the manifest itself."""
        self.set_tags(dataset_tags(manifest))
        counts = {
            f"data.{k}": manifest[k]
            for k in ("rows_read", "rows_accepted", "rows_quarantined", "sessions", "items")
            if k in manifest
        }
        if counts:
            self.log_params(counts)
        self.log_dict(dict(manifest), "dataset/manifest.json")


class EpochMetricsCallback(L.Callback):
    """Logs Lightning's epoch metrics (``train/loss``, ``val/mrr@20``...) to the run.

    Logs once per validation/epoch end with the epoch as step, which keeps tracking cheap
    (the issue's budget: at most 5% of an epoch's time).
    """

    def __init__(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def _log(self, trainer: L.Trainer, stage: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(f"{stage}/") and v.numel() == 1
        }
        if metrics:
            self.tracker.log_metrics(metrics, step=trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module's own (where
        # epoch-level metrics are logged) and before the epoch's values reach callback_metrics,
        # so it would see the previous epoch's numbers
        self._log(trainer, "val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation ran before this hook and was logged then: once per epoch
        self._log(trainer, "train")


def find_or_create_parent(
    study: str, *, tracking_uri: str | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """The parent run of a tuning study (one per study, shared by all its workers)."""
    client = open_client(resolve_tracking_uri(tracking_uri))
    exp_id = _experiment_id(client, study)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`shoprec.role` = 'study' and tags.`optuna.study` = '{study}'"
    )
    if found:
        return str(found[0].info.run_id)
    all_tags = {
        "mlflow.runName": f"study {study}",
        "shoprec.role": "study",
        "optuna.study": study,
        "git_commit": git_commit(),
        **(tags or {}),
    }
    run = client.create_run(exp_id, tags=all_tags, run_name=f"study {study}")
    return str(run.info.run_id)


def end_run(run_id: str, *, tracking_uri: str | None = None, failed: bool = False) -> None:
    status = RunStatus.FAILED if failed else RunStatus.FINISHED
    open_client(resolve_tracking_uri(tracking_uri)).set_terminated(
        run_id, status=RunStatus.to_string(status)
    )


# -- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    message: str
    version: str
    previous: str | None = None


def _client(tracking_uri: str | None) -> MlflowClient:
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return open_client(uri, registry=True)


def register(
    run_id: str, task: str, *, artifact_path: str = "bundle", tracking_uri: str | None = None
) -> str:
    """Register a finished run's bundle under the task name; returns the new version."""
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(
            f"run {run_id!r} not found in {resolve_tracking_uri(tracking_uri)}"
        ) from exc
    if run.info.status != "FINISHED":
        raise TrackingError(
            f"run {run_id} is {run.info.status}: only FINISHED runs can be registered"
        )
    try:
        client.get_registered_model(task)
    except MlflowException:
        client.create_registered_model(task)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("dataset", "protocol"))}
    mv = client.create_model_version(task, source, run_id=run_id, tags=tags)
    return str(mv.version)


def _primary(task: str) -> tuple[str, str]:
    try:
        return PRIMARY_METRIC[task]
    except KeyError:
        raise TrackingError(f"unknown task {task!r} ({', '.join(PRIMARY_METRIC)})") from None


def promote(
    task: str, version: str, *, force: bool = False, tracking_uri: str | None = None
) -> PromotionDecision:
    """Move the ``champion`` alias to ``version`` if it beats the current champion.

    Refuses (and says why) when the challenger's run is not FINISHED, when it was evaluated on
    another dataset or protocol than the champion, or when it is not better on the task's
    primary metric. ``force`` overrides the comparison, never the run-status check.
    """
    client = _client(tracking_uri)
    metric, mode = _primary(task)
    key = mlflow_key(metric)
    mv = client.get_model_version(task, version)
    run = client.get_run(str(mv.run_id))
    if run.info.status != "FINISHED":
        return PromotionDecision(False, f"version {version}: run {run.info.status}", version)
    value = run.data.metrics.get(key)
    try:
        champ = client.get_model_version_by_alias(task, CHAMPION)
    except MlflowException:
        champ = None
    if champ is not None and str(champ.version) == str(mv.version):
        return PromotionDecision(True, f"version {version} is already the {CHAMPION}", version)
    if champ is None:
        client.set_registered_model_alias(task, CHAMPION, version)
        return PromotionDecision(True, f"version {version} is the first {CHAMPION}", version)
    champ_run = client.get_run(str(champ.run_id))
    best = champ_run.data.metrics.get(key)
    same_data = run.data.tags.get("dataset.fingerprint") == champ_run.data.tags.get(
        "dataset.fingerprint"
    )
    same_protocol = run.data.tags.get("protocol.fingerprint") == champ_run.data.tags.get(
        "protocol.fingerprint"
    )
    reasons = []
    if not same_data:
        reasons.append("evaluated on another dataset than the champion")
    if not same_protocol:
        reasons.append("evaluated with another protocol than the champion")
    if value is None:
        reasons.append(f"has no {metric}")
    elif best is not None:
        better = value > best if mode == "max" else value < best
        if not better:
            reasons.append(f"{metric} {value:.4f} is not better than the champion's {best:.4f}")
    if reasons and not force:
        return PromotionDecision(
            False,
            f"refused: version {version} " + "; ".join(reasons) + " (use --force to override)",
            version,
            champ.version,
        )
    client.set_registered_model_alias(task, CHAMPION, version)
    note = f" (forced over: {'; '.join(reasons)})" if reasons else ""
    return PromotionDecision(
        True,
        f"version {version} is now {CHAMPION}, replacing {champ.version}{note}",
        version,
        champ.version,
    )


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as the packager needs it (no MLflow types leak out)."""

    name: str
    version: str
    run_id: str | None


def model_version(
    name: str,
    *,
    alias: str | None = None,
    version: int | str | None = None,
    tracking_uri: str | None = None,
) -> ModelVersion:
    """Resolve ``name@alias`` or ``name/version`` in the registry to one fixed version.

    Raises :class:`ShoprecError` naming the registry when it is not there."""
    client = _client(tracking_uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, str(version))
        )
    except mlflow.exceptions.MlflowException as exc:
        where = resolve_tracking_uri(tracking_uri)
        raise TrackingError(f"{name}: not found in the registry at {where}: {exc}") from exc
    return ModelVersion(name=name, version=str(mv.version), run_id=mv.run_id or None)


def download_model(uri: str, dst: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Download ``models:/task@champion`` (or ``models:/task/3``) artifacts into ``dst``."""
    _client(tracking_uri)
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    return Path(path)


@contextmanager
def maybe_tracker(
    enabled: bool,
    experiment: str,
    run_name: str,
    **kwargs: Any,
) -> Iterator[RunTracker | None]:
    """A :class:`RunTracker` when tracking is enabled, else ``None`` (offline runs)."""
    if not enabled:
        yield None
        return
    with RunTracker(experiment, run_name, **kwargs) as tracker:
        yield tracker

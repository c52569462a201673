"""Hyper-parameter tuning with Optuna: the only module that imports ``optuna``.

``tune`` calls the same in-process :func:`shoprec.training.fit.fit` as ``shoprec train`` (never a
subprocess scraping stdout), with a TPE sampler, a pruner fed by a Lightning callback on the
validation curve, one MLflow child run per trial under one parent run per study, and the best
trial exported as a ready-to-run experiment config.

Several workers (processes or machines) may share one study through an RDB storage
(PostgreSQL); ``--trials N`` is the study's budget of finished trials, shared by all workers:
each trial knows its storage-assigned number, and a trial that finds N trials ahead of it
(finished or still running) stops its worker instead of running, so N trials finish between the
workers with none duplicated or lost. Heartbeats mark the trials of a killed worker as failed and
re-queue their parameters, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState
from pydantic import Field, model_validator

from shoprec.config import StrictModel, load_config
from shoprec.errors import ShoprecError
from shoprec.training.config import deep_merge, load_experiment, resolve_includes

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class ParamSpec(StrictModel):
    """One searched knob: an int/float range (optionally log-scaled) or a categorical list."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices'")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        return self


class PrunerConfig(StrictModel):
    kind: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=1, ge=0)  # epochs before a trial may be pruned


class SearchConfig(StrictModel):
    """A search space (``configs/search/*.yaml``) over one base experiment."""

    name: str
    experiment: str  # base experiment config path
    metric: str = "val/mrr@20"  # a validation metric: tuning never looks at test
    direction: Literal["maximize", "minimize"] = "maximize"
    params: dict[str, ParamSpec]  # dotted config key -> space
    fixed: list[str] = Field(default_factory=list)  # extra ``key=value`` overrides for all trials
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    seed: int = 42
    output_dir: str = "runs/tune"


@dataclass
class TuneResult:
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_config_path: Path | None
    finished: int
    pruned: int
    failed: int
    seconds: float
    parent_run_id: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


class _OverBudget(Exception):
    """Raised inside a trial that found the study's budget already taken."""


def resolve_storage(storage: str | None, output_dir: Path) -> str:
    """Default: a sqlite file next to the study's outputs."""
    if storage:
        return storage
    output_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output_dir / 'optuna.db').resolve()}"


def make_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30) -> RDBStorage:
    return RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=2),
        engine_kwargs={"pool_pre_ping": True},
    )


def make_study(search: SearchConfig, storage: optuna.storages.BaseStorage, name: str) -> Any:
    sampler = optuna.samplers.TPESampler(seed=search.seed)
    pruner: optuna.pruners.BasePruner
    if search.pruner.kind == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=search.pruner.n_startup_trials,
            n_warmup_steps=search.pruner.n_warmup_steps,
        )
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=search.direction,
        load_if_exists=True,
    )


def suggest(trial: optuna.trial.Trial, params: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw one value per searched key."""
    values: dict[str, Any] = {}
    for key, spec in params.items():
        if spec.type == "categorical":
            assert spec.choices is not None
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            assert spec.low is not None and spec.high is not None
            values[key] = trial.suggest_int(
                key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
            )
        else:
            assert spec.low is not None and spec.high is not None
            values[key] = trial.suggest_float(
                key, spec.low, spec.high, step=spec.step, log=spec.log
            )
    return values


def _override(key: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key}={text}"


def _ahead(study: Any, number: int) -> int:
    """Trials before ``number`` that are finished or still running: they own budget slots."""
    states = (*FINISHED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number < number)


def export_best_config(search: SearchConfig, best: dict[str, Any], path: Path) -> Path:
    """Write the base experiment with the best values merged in: ready for ``shoprec train``."""
    data = resolve_includes(Path(search.experiment))
    for key, value in best.items():
        node: dict[str, Any] = {}
        cursor = node
        parts = key.split(".")
        for p in parts[:-1]:
            cursor[p] = {}
            cursor = cursor[p]
        cursor[parts[-1]] = value
        data = deep_merge(data, node)
    data["name"] = f"{data.get('name', search.name)}_tuned"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Best trial of study {search.name!r}, exported by `shoprec tune`.\n"
    # Workers of one study finish together and export to the same path: each writes its own
    # file, validates it, then renames it into place (atomic), so no reader ever sees half a
    # file and an invalid export never replaces a valid one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        from shoprec.churn.config import is_churn_config

        if is_churn_config(data):  # the export must itself be a valid config
            from shoprec.churn.run import load_churn_config

            load_churn_config(tmp)
        else:
            load_experiment(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def tune(
    search: SearchConfig,
    n_trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    timeout: float | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
) -> TuneResult:
    """Run (or join, or resume) a study until ``n_trials`` trials have finished in total."""
    import lightning as L
    from optuna_integration import PyTorchLightningPruningCallback

    name = study_name or search.name
    out = Path(search.output_dir) / name
    url = resolve_storage(storage, out)
    study = make_study(search, make_storage(url, heartbeat_interval, grace_period), name)
    parent: Any = None
    if track:
        from shoprec.tracking import RunTracker, find_or_create_parent

        parent_id = find_or_create_parent(name, tracking_uri=tracking_uri, tags={"storage": url})
        parent = RunTracker(name, name, tracking_uri=tracking_uri, run_id=parent_id)
    started = time.perf_counter()
    stop = {"flag": False}

    def objective(trial: optuna.trial.Trial) -> float:
        if _ahead(study, trial.number) >= n_trials:
            stop["flag"] = True
            trial.set_user_attr("over_budget", True)
            raise _OverBudget(f"trial {trial.number}: the study already has {n_trials} trials")
        values = suggest(trial, search.params)
        overrides = [*search.fixed, *(_override(k, v) for k, v in values.items())]
        overrides += [f"name={name}-trial-{trial.number}", f"output_dir={out / 'trials'}"]
        callbacks: list[L.Callback] = [
            PyTorchLightningPruningCallback(trial, monitor=search.metric)
        ]
        run = _trial_runner(search.experiment, overrides)
        if parent is None:
            result = run(None, callbacks)
        else:
            from shoprec.tracking import RunTracker

            tags = {"optuna.study": name, "optuna.trial": str(trial.number)}
            with RunTracker(
                name,
                f"{name}-trial-{trial.number}",
                tracking_uri=tracking_uri,
                tags=tags,
                parent_run_id=parent.run_id,
            ) as child:
                child.log_params({f"trial.{k}": v for k, v in values.items()})
                result = run(child, callbacks)
        trial.set_user_attr("run_dir", str(result.run_dir))
        value = result.best_val
        if value is None:
            raise ShoprecError(
                f"{name}-trial-{trial.number}: no {search.metric} to optimise (the dataset "
                "needs a validation window: split.valid_days > 0)"
            )
        return float(value)

    deadline = None if timeout is None else started + timeout
    while not stop["flag"]:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if _finished(study) >= n_trials:
            break
        study.optimize(objective, n_trials=1, catch=(_OverBudget,), gc_after_trial=True)
    return _summarise(search, study, url, n_trials, started, parent, out)


def _trial_runner(experiment: str, overrides: list[str]) -> Any:
    """``run(tracker, callbacks) -> result with best_val/run_dir`` for next-item or churn configs:
    both tasks are tuned through their own in-process fit function."""
    from shoprec.churn.config import is_churn_config_file

    if is_churn_config_file(experiment):
        from shoprec.churn.run import fit_churn_run, load_churn_config

        churn = load_churn_config(experiment, overrides)
        return lambda tracker, callbacks: fit_churn_run(churn, tracker=tracker, callbacks=callbacks)
    from shoprec.training.fit import fit

    config = load_experiment(experiment, overrides)
    return lambda tracker, callbacks: fit(config, tracker=tracker, callbacks=callbacks)


def _finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _summarise(
    search: SearchConfig,
    study: Any,
    url: str,
    n_trials: int,
    started: float,
    parent: Any,
    out: Path,
) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_path: Path | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = {}
    if complete:
        best = study.best_trial
        best_value, best_params = float(best.value), dict(best.params)
        best_path = export_best_config(search, best_params, out / "best.yaml")
    result = TuneResult(
        study_name=study.study_name,
        storage=url,
        best_value=best_value,
        best_params=best_params,
        best_config_path=best_path,
        finished=sum(t.state in FINISHED for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(
            t.state == TrialState.FAIL and not t.user_attrs.get("over_budget") for t in trials
        ),
        seconds=time.perf_counter() - started,
        parent_run_id=parent.run_id if parent is not None else None,
        trials=[
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in trials
        ],
    )
    if parent is not None:
        from shoprec.tracking import end_run

        _log_study(parent, study, result, search)
        end_run(parent.run_id, tracking_uri=parent.tracking_uri)
    return result


def _log_study(parent: Any, study: Any, result: TuneResult, search: SearchConfig) -> None:
    """History and importance plots, best params and the exported config on the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import (
        plot_optimization_history,
        plot_param_importances,
    )

    parent.log_params({"search": search.model_dump(mode="json")})
    if result.best_value is not None:
        parent.log_metrics({f"best/{search.metric}": result.best_value})
    parent.log_metrics(
        {
            "study/finished": result.finished,
            "study/pruned": result.pruned,
            "study/failed": result.failed,
        }
    )
    parent.log_dict({"best_params": result.best_params, "trials": result.trials}, "study.json")
    if result.best_config_path is not None:
        parent.log_text(result.best_config_path.read_text(encoding="utf-8"), "best.yaml")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) >= 1:
        ax = plot_optimization_history(study)
        parent.log_figure(ax.figure, "plots/optimization_history.png")
        plt.close(ax.get_figure())  # type: ignore[arg-type]
    if len(complete) >= 2 and search.params:
        try:
            ax = plot_param_importances(study)
        except (RuntimeError, ValueError):  # too few distinct values to rank importances
            return
        parent.log_figure(ax.figure, "plots/param_importances.png")
        plt.close(ax.get_figure())  # type: ignore[arg-type]


def load_search(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    return load_config(SearchConfig, path, overrides)

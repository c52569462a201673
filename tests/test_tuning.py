"""Real Optuna studies: sqlite and PostgreSQL storages, two workers, resume after a kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from shoprec.training.config import load_experiment
from shoprec.tuning import SearchConfig, load_search, tune
from tests.conftest import REPO_ROOT


def _write_search(
    tmp_path: Path,
    data: Path,
    model: dict[str, Any],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
    pruner: dict[str, Any] | None = None,
) -> Path:
    experiment = tmp_path / "configs" / "experiment" / "exp.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "exp",
                "data": {"path": str(data)},
                "model": model,
                "trainer": {"max_epochs": 3, "progress_bar": False, "patience": 0},
                **(extra or {}),
            }
        )
    )
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "name": "study",
                "experiment": str(experiment),
                "params": params,
                "output_dir": str(tmp_path / "tune"),
                "pruner": pruner or {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
            }
        )
    )
    return search


VSKNN = {"name": "vsknn", "k": 20, "sample_size": 50}
VSKNN_SPACE = {"model.k": {"type": "int", "low": 5, "high": 200, "log": True}}


def test_study_runs_trials_tracks_children_and_exports_best(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = load_search(_write_search(tmp_path, tiny_dataset, VSKNN, VSKNN_SPACE))
    result = tune(search, 4, tracking_uri=uri)
    assert result.finished == 4 and result.failed == 0
    assert result.best_config_path is not None
    best = load_experiment(result.best_config_path)
    assert best.model["k"] == result.best_params["model.k"]

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["study"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("shoprec.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["optuna.trial"] for r in children} == {"0", "1", "2", "3"}
    assert all("valid/mrr_at_20" not in r.data.metrics for r in children)  # val via fit
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(parents[0].info.run_id)}
    assert {"study.json", "best.yaml", "plots"} <= artifacts

    # a second call with the same budget joins the finished study and runs nothing new
    again = tune(search, 4, track=False)
    assert again.finished == 4 and len(again.trials) == 4


def test_pruning_stops_bad_trials_from_their_validation_curve(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    model = {"name": "gru4rec", "layers": [16]}
    space = {"training.learning_rate": {"type": "float", "low": 1e-5, "high": 0.2, "log": True}}
    path = _write_search(
        tmp_path, tiny_dataset, model, space, {"training": {"batch_size": 16, "n_sample": 16}}
    )
    search = load_search(path)
    result = tune(search, 6, track=False)
    assert result.finished == 6
    study = optuna.load_study(study_name="study", storage=result.storage)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.intermediate_values  # pruned from reported validation values


def _worker(
    search: Path, storage: str, trials: int, log: Path, heartbeat: int = 10
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "shoprec.cli",
        "tune",
        str(search),
        "--trials",
        str(trials),
        "--storage",
        storage,
        "--no-track",
        "--heartbeat",
        str(heartbeat),
    ]
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def test_best_config_exports_are_atomic_and_never_replace_a_valid_one_with_a_bad_one(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """Workers of one study export the best config to the same path at the same moment: a
    reader must only ever see whole, valid files (a worker once read another's half-written
    best.yaml and failed), and an export that does not validate leaves the old file."""
    import threading

    from shoprec.config import ConfigError
    from shoprec.tuning import export_best_config

    search = load_search(_write_search(tmp_path, tiny_dataset, VSKNN, VSKNN_SPACE))
    path = tmp_path / "tune" / "best.yaml"
    export_best_config(search, {"model.k": 7}, path)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(25):
                export_best_config(search, {"model.k": k}, path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (11, 12, 13)]
    for t in threads:
        t.start()
    reads = 0
    while any(t.is_alive() for t in threads):
        assert load_experiment(path).model["k"] in (7, 11, 12, 13)
        reads += 1
    for t in threads:
        t.join()
    assert not errors and reads > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.yaml"]  # no temporaries
    before = path.read_text()
    with pytest.raises(ConfigError):
        export_best_config(search, {"model.k": -5}, path)  # k must be >= 1
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.yaml"]


def test_two_workers_share_one_postgres_study(
    tiny_dataset: Path, tmp_path: Path, postgres_url: str
) -> None:
    path = _write_search(tmp_path, tiny_dataset, VSKNN, VSKNN_SPACE)
    search: SearchConfig = load_search(path)
    from shoprec.tuning import make_storage, make_study

    make_study(search, make_storage(postgres_url), "study")  # create once before the workers
    workers = [_worker(path, postgres_url, 6, tmp_path / f"w{i}.log") for i in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, (tmp_path / "w0.log").read_text()
    study = optuna.load_study(study_name="study", storage=postgres_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6  # exactly the budget: none lost, none run twice
    assert sorted(t.number for t in finished) == list(range(6))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    # each worker prints the study as it stood when it stopped: a worker that stops while
    # the other still runs the last trial sees 5, the one that stops last sees all 6
    assert all(re.search(r"study study \(.*\): [56] finished", text) for text in logs)
    assert any("6 finished" in text for text in logs)


def test_killed_study_resumes_where_it_stopped(tiny_dataset: Path, tmp_path: Path) -> None:
    model = {"name": "gru4rec", "layers": [16]}
    space = {"model.dropout_p_hidden": {"type": "float", "low": 0.0, "high": 0.5}}
    path = _write_search(
        tmp_path,
        tiny_dataset,
        model,
        space,
        {
            "training": {"batch_size": 16, "n_sample": 16},
            "trainer": {"max_epochs": 4, "progress_bar": False, "patience": 0},
        },
        # No pruning here: a trial pruned after its first (sub-second) epoch could start and end
        # between two polls, and the kill below must land while a trial is running.
        pruner={"kind": "none"},
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = _worker(path, storage, 2, tmp_path / "killed.log", heartbeat=1)
    deadline = time.time() + 300
    study = None
    while time.time() < deadline:  # wait until one trial finished and the next is running
        time.sleep(0.25)
        try:
            study = optuna.load_study(study_name="study", storage=storage)
        except KeyError:
            continue
        done = study.get_trials(states=(TrialState.COMPLETE,))
        running = study.get_trials(states=(TrialState.RUNNING,))
        if done and running:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert study is not None
    before = optuna.load_study(study_name="study", storage=storage)
    completed_before = {t.number for t in before.get_trials(states=(TrialState.COMPLETE,))}
    assert completed_before and before.get_trials(states=(TrialState.RUNNING,))

    time.sleep(3)  # the killed worker's last heartbeat is now older than the grace period
    search = load_search(path)
    result = tune(search, 2, storage=storage, track=False, heartbeat_interval=1, grace_period=2)
    after = optuna.load_study(study_name="study", storage=storage)
    complete = after.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(complete) == 2 == result.finished
    assert completed_before <= {t.number for t in complete}  # finished work was kept
    assert not after.get_trials(states=(TrialState.RUNNING,))


def test_churn_configs_are_tuned_like_recommenders(tiny_dataset: Path, tmp_path: Path) -> None:
    churn = yaml.safe_load((REPO_ROOT / "configs" / "churn" / "demo.yaml").read_text())
    churn.update(
        {
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "runs"),
            "observation_days": 7,
            "horizon_days": 7,
            "train_cutoffs": ["2024-01-10T00:00:00Z"],
            "valid_cutoffs": ["2024-01-17T00:00:00Z"],
            "test_cutoffs": ["2024-01-24T00:00:00Z"],
        }
    )
    churn["net"].update({"max_epochs": 5, "patience": 2})
    experiment = tmp_path / "churn.yaml"
    experiment.write_text(yaml.safe_dump(churn))
    search = SearchConfig.model_validate(
        {
            "name": "churn_study",
            "experiment": str(experiment),
            "metric": "val/roc_auc",
            "params": {"net.dropout": {"type": "float", "low": 0.0, "high": 0.5}},
            "output_dir": str(tmp_path / "tune"),
            "pruner": {"kind": "none"},
        }
    )
    result = tune(search, 2, track=False)
    assert result.finished == 2 and result.failed == 0
    assert result.best_value is not None and 0.0 <= result.best_value <= 1.0
    assert result.best_config_path is not None
    exported = yaml.safe_load(result.best_config_path.read_text())
    assert exported["task"] == "churn"
    assert exported["net"]["dropout"] == result.best_params["net.dropout"]


def test_diginetica_search_tunes_on_a_validation_window_cut_from_train() -> None:
    """The shipped Diginetica search reads val/ metrics of a window cut from train, never test."""
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig

    search = load_search(REPO_ROOT / "configs" / "search" / "diginetica_gru4rec.yaml")
    assert search.metric.startswith("val/")
    experiment = load_experiment(REPO_ROOT / search.experiment)
    assert not experiment.evaluation.enabled
    assert experiment.data.preset is not None
    preset = load_config(DataConfig, REPO_ROOT / experiment.data.preset)
    assert preset.split.kind == "last_days"
    assert preset.split.valid_days > 0 and preset.split.test_days == 0
    assert preset.test_input is None and preset.input is not None
    assert preset.input.endswith("diginetica_srgnn/train.parquet")  # the train part only


@pytest.mark.parametrize("name", ["diginetica_srgnn_valid", "yoochoose_srgnn_1_64_valid"])
def test_a_validation_window_cut_from_a_prepared_train_part(
    name: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A *_valid benchmark preset on any prepared train part: the last sessions become
    validation cases, nothing is test, and every validation event follows every train event."""
    import polars as pl

    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare

    preset = REPO_ROOT / "configs" / "data" / f"{name}.yaml"
    assert load_config(DataConfig, preset).test_input is None  # the published test is never read
    cfg = load_config(DataConfig, preset, ["split.valid_days=3"])
    out = tmp_path / "valid"
    manifest = prepare(cfg, out, input_path=str(tiny_dataset / "train.parquet"))
    assert manifest["valid"]["cases"] > 0 and manifest["test"]["cases"] == 0
    assert [s["role"] for s in manifest["sources"]] == ["input"]
    train = pl.read_parquet(out / "train.parquet")
    valid = pl.read_parquet(out / "valid.parquet")
    assert train["timestamp"].max() < valid["timestamp"].min()
    source = pl.read_parquet(tiny_dataset / "train.parquet")
    assert set(valid["session_id"]) <= set(source["session_id"])

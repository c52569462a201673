"""Real MLflow (embedded sqlite), no mocks: runs, params, metrics, tags, artifacts, registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from shoprec.cli import main
from shoprec.tracking import RunTracker, mlflow_key, promote, register
from shoprec.training.config import ExperimentConfig
from shoprec.training.fit import fit


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _train(data: Path, out: Path, uri: str, name: str, **model: object) -> str:
    config = ExperimentConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(data)},
            "output_dir": str(out),
            "model": {"name": "vsknn", "k": 20, "sample_size": 100, **model},
        }
    )
    with RunTracker("tiny", name, tracking_uri=uri, tags={"task": "next-item"}) as tracker:
        fit(config, tracker=tracker)
    return tracker.run_id


def test_train_run_is_fully_tracked(tiny_dataset: Path, tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    run_id = _train(tiny_dataset, tmp_path / "runs", uri, "tracked")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "vsknn"
    assert run.data.params["model.k"] == "20"
    assert run.data.params["seed"] == "42"
    assert "data.rows_read" in run.data.params
    assert 0.0 <= run.data.metrics[mlflow_key("test/hr@20")] <= 1.0
    assert run.data.tags["model"] == "vsknn"
    assert run.data.tags["dataset"] == "synthetic"
    assert len(run.data.tags["dataset.fingerprint"]) == 16
    assert len(run.data.tags["protocol.fingerprint"]) == 16
    assert run.data.tags["git_commit"]
    assert run.data.tags["version.torch"].startswith("2.")
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert {"bundle", "config.yaml", "dataset", "metrics.json", "plots"} <= artifacts
    plots = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "plots")}
    assert {"plots/hr_at_k.png", "plots/coverage.png"} <= plots
    bundle = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "bundle")}
    assert {"bundle/bundle.json", "bundle/weights.pt", "bundle/items.parquet"} <= bundle


def test_evaluate_run_is_tracked(tiny_dataset: Path, tmp_path: Path) -> None:
    """``shoprec evaluate`` is an MLflow run too: which bundle on which data, the protocol, the
    metrics, the HR@K plot and the predictions file."""
    config = ExperimentConfig.model_validate(
        {
            "name": "to_evaluate",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": "pop"},
        }
    )
    result = fit(config)  # untracked training: only the evaluation is tracked here
    uri = _uri(tmp_path)
    predictions = tmp_path / "predictions.txt"
    args = ["evaluate", "--bundle", str(result.bundle_dir), "--data", str(tiny_dataset)]
    args += ["--tracking-uri", uri, "--predictions-out", str(predictions)]
    assert main(args) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["evaluate"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["shoprec.role"] == "evaluate"
    assert run.data.tags["model"] == "pop"
    assert run.data.tags["dataset"] == "synthetic"
    assert len(run.data.tags["protocol.fingerprint"]) == 16
    assert run.data.params["split"] == "test"
    assert run.data.params["bundle_experiment"] == "to_evaluate"
    assert run.data.params["protocol.tie_mode"] == "pessimistic"
    hr = run.data.metrics[mlflow_key("test/hr@20")]
    assert hr == pytest.approx(result.metrics["test/hr@20"])  # same bundle, same data
    client = MlflowClient(uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "plots", "predictions", "dataset"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/hr_at_k.png", "plots/coverage.png"} <= plots
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert logged == {"predictions/predictions.txt"}


def test_failed_run_is_marked_failed_and_cannot_be_registered(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    with pytest.raises(RuntimeError), RunTracker("tiny", "broken", tracking_uri=uri) as tracker:
        raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(Exception, match="only FINISHED runs"):
        register(tracker.run_id, "next-item", tracking_uri=uri)


def test_champion_promotion_rules(tiny_dataset: Path, tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    good = _train(tiny_dataset, tmp_path / "runs", uri, "good", k=50, sample_size=200)
    bad = _train(tiny_dataset, tmp_path / "runs", uri, "bad", k=1, sample_size=5)
    client = MlflowClient(uri)
    key = mlflow_key("test/mrr@20")
    assert client.get_run(good).data.metrics[key] > client.get_run(bad).data.metrics[key]

    v_good = register(good, "next-item", tracking_uri=uri)
    first = promote("next-item", v_good, tracking_uri=uri)
    assert first.promoted
    assert str(client.get_model_version_by_alias("next-item", "champion").version) == v_good

    v_bad = register(bad, "next-item", tracking_uri=uri)
    refused = promote("next-item", v_bad, tracking_uri=uri)
    assert not refused.promoted
    assert "not better" in refused.message
    assert str(client.get_model_version_by_alias("next-item", "champion").version) == v_good

    forced = promote("next-item", v_bad, force=True, tracking_uri=uri)
    assert forced.promoted
    assert str(client.get_model_version_by_alias("next-item", "champion").version) == v_bad

    # the alias resolves to the bundle artifacts of the promoted run
    mlflow.set_tracking_uri(uri)
    path = mlflow.artifacts.download_artifacts(
        "models:/next-item@champion", dst_path=str(tmp_path / "dl")
    )
    assert (Path(path) / "bundle.json").is_file()


def test_challenger_on_other_data_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    uri = _uri(tmp_path)
    champ = _train(tiny_dataset, tmp_path / "runs", uri, "champ", k=1, sample_size=5)
    promote("next-item", register(champ, "next-item", tracking_uri=uri), tracking_uri=uri)
    other = tmp_path / "other-data"
    shutil.copytree(tiny_dataset, other)
    import json

    manifest = json.loads((other / "manifest.json").read_text())
    manifest["rows_accepted"] = manifest["rows_accepted"] - 1  # another dataset identity
    (other / "manifest.json").write_text(json.dumps(manifest))
    challenger = _train(other, tmp_path / "runs", uri, "challenger", k=50, sample_size=200)
    decision = promote(
        "next-item", register(challenger, "next-item", tracking_uri=uri), tracking_uri=uri
    )
    assert not decision.promoted
    assert "another dataset" in decision.message


def _open_and_start_run(uri: str, name: str) -> str:
    with RunTracker("race", name, tracking_uri=uri) as tracker:
        tracker.log_metrics({"x": 1.0})
    return tracker.run_id


def test_processes_creating_a_fresh_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Two trainings started together on a fresh checkout once raced MLflow's lazy creation of
    the sqlite store ("table experiments already exists"); the store is now created under a
    file lock, and a concurrently created experiment is looked up instead of failing."""
    import multiprocessing

    uri = _uri(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        run_ids = pool.starmap(_open_and_start_run, [(uri, f"r{i}") for i in range(3)])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_epoch_curves_hold_one_point_per_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    """Validation ran before the train-epoch hook; its metrics were once logged at both, so
    every epoch had two identical ``val/*`` points. Each curve now has one point per epoch."""
    uri = _uri(tmp_path)
    config = ExperimentConfig.model_validate(
        {
            "name": "curves",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "runs"),
            "trainer": {"max_epochs": 2, "progress_bar": False, "patience": 0},
            "model": {"name": "gru4rec", "layers": [8]},
            "training": {"batch_size": 16, "n_sample": 16},
            "evaluation": {"enabled": False},
        }
    )
    with RunTracker("tiny", "curves", tracking_uri=uri) as tracker:
        result = fit(config, tracker=tracker)
    client = MlflowClient(uri)
    val = client.get_metric_history(tracker.run_id, mlflow_key("val/mrr@20"))
    train = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in val) == [0, 1]
    assert sorted(m.step for m in train) == [0, 1]
    # and each point is that epoch's own value, not the previous epoch's
    by_step = {m.step: m.value for m in val}
    want = {int(row["epoch"]): row["val/mrr@20"] for row in result.history}
    assert by_step == pytest.approx(want)
    assert {m.step: m.value for m in train} == pytest.approx(
        {int(row["epoch"]): row["train/loss"] for row in result.history}
    )

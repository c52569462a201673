"""A tracked churn run on a tiny synthetic storefront, with a real MLflow sqlite store:
params / tags / metrics / curves / artifacts, register + promote, and ``churn score``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient
from polars.testing import assert_frame_equal

from shoprec import schema
from shoprec.churn.config import ChurnConfig, is_churn_config, is_churn_config_file
from shoprec.churn.hybrid import BGNBD_FEATURES
from shoprec.churn.run import fit_churn_run, load_churn_config
from shoprec.churn.score import ChurnBundle, events_from_dataset, score_customers
from shoprec.churn.train import ChurnResult
from shoprec.cli import main
from shoprec.config import ConfigError
from shoprec.data.synth import SynthConfig
from shoprec.tracking import RunTracker, mlflow_key, promote, register

REPO = Path(__file__).resolve().parents[2]
SYNTH = SynthConfig(users=300, days=100, seed=1, n_items=200, n_categories=6)
EXPERIMENT = "churn-tiny"


def _at(days: int) -> str:
    return (SYNTH.start + timedelta(days=days)).isoformat()


@pytest.fixture(scope="module")
def churn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic storefront prepared as the churn config says (every event kept)."""
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare
    from shoprec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("churn-data")
    raw = write_synthetic(SYNTH, root / "raw")
    preset = REPO / "configs" / "data" / "synthetic.yaml"
    overrides = load_config(ChurnConfig, REPO / "configs" / "churn" / "synth.yaml").data
    assert overrides is not None
    cfg = load_config(DataConfig, preset, list(overrides.overrides))
    prepare(cfg, output=root / "data", input_path=str(raw), config_path=preset)
    return root / "data"


def _config(data: Path, out: Path, name: str = "tiny-churn", **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "task": "churn",
        "data": {"path": str(data)},
        "output_dir": str(out),
        "definition": "no_activity",
        "observation_days": 30,
        "horizon_days": 14,
        "train_cutoffs": [_at(35), _at(50)],
        "valid_cutoffs": [_at(65)],
        "test_cutoffs": [_at(80)],
        "net": {
            "hidden": [8],
            "max_epochs": 4,
            "patience": 2,
            "batch_size": 64,
            "features": ["recency_days", "frequency", "activity_recency_days", "n_sessions"],
            "bgnbd": True,
            "ensemble": 2,
        },
        "gbt": {"max_iter": 20},
        "segments": {"new_tenure_days": 7, "lapsed_recency_days": 30, "at_risk_probability": 0.5},
        "seed": 0,
    }
    cfg.update(over)
    return cfg


class _Seen(L.Callback):
    """Stands in for an Optuna pruning callback: records what it could monitor."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics["val/roc_auc"]))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # keep the artifacts in the temporary folder too (not ./mlruns)
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())
    return uri


@pytest.fixture(scope="module")
def tracked(
    churn_data: Path, store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ChurnResult, _Seen]]:
    seen = _Seen()
    out = tmp_path_factory.mktemp("runs")
    with RunTracker(EXPERIMENT, "tiny-churn", tracking_uri=store) as tracker:
        result = fit_churn_run(_config(churn_data, out), tracker=tracker, callbacks=[seen])
    yield tracker.run_id, result, seen


def test_run_is_found_with_params_tags_metrics_and_artifacts(
    tracked: tuple[str, ChurnResult, _Seen], store: str
) -> None:
    run_id, result, seen = tracked
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.task = 'churn'",
        output_format="list",
    )
    assert run_id in [r.info.run_id for r in runs]
    run = next(r for r in runs if r.info.run_id == run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    # the flattened config, the definition in words, the data's counts
    assert params["task"] == "churn"
    assert params["definition"] == "no_activity"
    assert params["horizon_days"] == "14.0"
    assert params["net.bgnbd"] == "True"
    assert params["net.ensemble"] == "2"
    assert params["churn.label"] == "churned = no event of any type in (T, T + 14 days]"
    assert params["churn.cohort"] == "customers with an event of any type in the 30 days before T"
    assert _at(80)[:10] in params["churn.test_cutoffs"]
    assert "data.rows_read" in params
    tags = run.data.tags
    assert tags["task"] == "churn"
    assert tags["model"] == "churn_net"
    assert tags["model.family"] == "mlp+bgnbd-ensemble2"
    assert tags["dataset"] == "synthetic"
    assert len(tags["dataset.fingerprint"]) == 16
    assert tags["churn.selected_model"] in {"churn_net", "logistic_rfm", "gbt", "bgnbd"}
    assert tags["churn.bundled_model"] == "churn_net"
    metrics = run.data.metrics
    for split in ("test", "valid"):
        for key in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift@10"):
            assert mlflow_key(f"{split}/{key}") in metrics
            for base in ("logistic_rfm", "gbt", "bgnbd"):
                assert mlflow_key(f"baseline/{base}/{split}/{key}") in metrics
    assert 0.5 < metrics["test/roc_auc"] <= 1.0
    assert 0.0 <= metrics["test/ece"] <= 1.0
    assert metrics["test/roc_auc"] == pytest.approx(
        result.metrics["models"]["churn_net"]["test"]["calibrated"]["roc_auc"]
    )
    # per-epoch curves of the network, steps = epochs
    client = MlflowClient(store)
    for key in ("train/loss", "val/loss", "val/roc_auc"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(len(seen.values))), key
    # one value per epoch, and it is that epoch's (what the pruner saw), not the previous one
    curve = sorted(client.get_metric_history(run_id, "val/roc_auc"), key=lambda m: m.step)
    assert [m.value for m in curve] == pytest.approx(seen.values)
    # the extra callback (a pruner's hook) saw val/roc_auc every epoch
    assert seen.values and all(0.0 <= v <= 1.0 for v in seen.values)
    assert result.best_val == pytest.approx(metrics["valid/roc_auc"])
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"bundle", "plots", "config.yaml", "metrics.json", "dataset"} <= top
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{k}.png" for k in ("roc", "pr", "calibration", "lift")}
    bundle = {a.path for a in client.list_artifacts(run_id, "bundle")}
    assert {"bundle/config.json", "bundle/weights.pt", "bundle/calibration.json"} <= bundle
    # the run folder
    assert result.run_dir is not None
    assert (result.run_dir / "config.yaml").is_file()
    assert (result.run_dir / "metrics.json").is_file()
    assert (result.run_dir / "plots" / "roc.png").is_file()
    assert result.bundle_dir == result.run_dir / "bundle"


@pytest.mark.parametrize("refit", [False, True])
def test_hybrid_ensemble_bundle_scores_like_at_fit_time(
    tracked: tuple[str, ChurnResult, _Seen], churn_data: Path, refit: bool
) -> None:
    """At the test cut-off, the stored BG/NBD parameters (fitted there) and a refit on the
    cohort there both reproduce the fit-time test predictions of the cohort."""
    _, result, _ = tracked
    bundle = ChurnBundle.load(result.bundle_dir)
    assert bundle.net.members == 2
    assert set(BGNBD_FEATURES) <= set(bundle.feature_names)
    at = result.config.test_cutoffs[0]
    assert bundle.bgnbd is not None and bundle.bgnbd["fitted_at"] == at.isoformat()
    scores = score_customers(bundle, events_from_dataset(churn_data), at, refit_bgnbd=refit)
    fit_time = result.predictions.filter(pl.col("split") == "test").select(
        schema.USER_ID, pl.col("churn_net").alias("at_fit")
    )
    joined = fit_time.join(scores, on=schema.USER_ID, how="left")
    assert joined.height == fit_time.height
    np.testing.assert_allclose(
        joined.get_column("probability").to_numpy(),
        joined.get_column("at_fit").to_numpy(),
        rtol=1e-6,
        atol=1e-7,
    )


def test_one_customer_scored_alone_scores_as_in_the_batch(
    tracked: tuple[str, ChurnResult, _Seen], churn_data: Path
) -> None:
    """What the service does (one customer's events): same probability and drivers."""
    _, result, _ = tracked
    bundle = ChurnBundle.load(result.bundle_dir)
    events = events_from_dataset(churn_data).collect()
    at = SYNTH.start + timedelta(days=90)
    batch = score_customers(bundle, events, at)
    for user in batch.get_column(schema.USER_ID).head(3).to_list():
        alone = score_customers(bundle, events.filter(pl.col(schema.USER_ID) == user), at)
        assert_frame_equal(alone, batch.filter(pl.col(schema.USER_ID) == user))


def test_register_and_promote_the_churn_run(
    tracked: tuple[str, ChurnResult, _Seen],
    churn_data: Path,
    store: str,
    tmp_path: Path,
) -> None:
    run_id, _, _ = tracked
    client = MlflowClient(store)
    version = register(run_id, "churn", tracking_uri=store)
    first = promote("churn", version, tracking_uri=store)
    assert first.promoted, first.message
    champion = client.get_model_version_by_alias("churn", "champion")
    assert str(champion.version) == version
    assert champion.tags["dataset"] == "synthetic"

    # a weaker-or-stronger challenger on the same data: promotion follows test/roc_auc
    with RunTracker(EXPERIMENT, "challenger", tracking_uri=store) as tracker:
        over = ["net.ensemble=1", "net.max_epochs=1", "net.bgnbd=false", "net.features=null"]
        fit_churn_run(
            _config(churn_data, tmp_path / "runs", name="challenger"), over, tracker=tracker
        )
    challenger = register(tracker.run_id, "churn", tracking_uri=store)
    decision = promote("churn", challenger, tracking_uri=store)
    ours = client.get_run(tracker.run_id).data.metrics["test/roc_auc"]
    champ = client.get_run(run_id).data.metrics["test/roc_auc"]
    assert decision.promoted == (ours > champ), decision.message
    if not decision.promoted:
        assert "not better" in decision.message

    # the champion alias resolves to a loadable churn bundle
    mlflow.set_tracking_uri(store)
    path = mlflow.artifacts.download_artifacts(
        "models:/churn@champion", dst_path=str(tmp_path / "dl")
    )
    assert ChurnBundle.load(path).net.n_features > 0


def test_churn_score_cli_writes_parquet_and_csv(
    tracked: tuple[str, ChurnResult, _Seen],
    churn_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, result, _ = tracked
    out = tmp_path / "scores"
    at = _at(85)
    argv = ["churn", "score", "--bundle", str(result.bundle_dir), "--data", str(churn_data)]
    argv += ["--at", at, "--output", str(out), "--top", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Customers per segment" in printed
    assert "scores.parquet" in printed
    written = pl.read_parquet(out / "scores.parquet")
    from shoprec.churn.cli import parse_at

    expected = score_customers(result.bundle_dir, events_from_dataset(churn_data), parse_at(at))
    assert_frame_equal(written, expected)
    csv = pl.read_csv(out / "scores.csv")
    assert csv.columns == expected.columns and csv.height == expected.height
    for seg in ("active", "at_risk", "lapsed", "new"):
        assert seg in printed


def test_shoprec_train_dispatches_a_churn_config(churn_data: Path, tmp_path: Path) -> None:
    cfg = _config(churn_data, tmp_path / "runs", name="cli-train")
    import yaml

    path = tmp_path / "churn.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert is_churn_config_file(path)
    argv = ["train", str(path), "--no-track", "--set", "net.ensemble=1"]
    assert main([*argv, "--set", "net.max_epochs=1"]) == 0
    assert (tmp_path / "runs" / "cli-train" / "bundle" / "weights.pt").is_file()
    # the churn verb group has the same entry
    assert main(["churn", "train", str(path), "--no-track", "--set", "net.nope=1"]) == 2


def test_churn_configs_are_churn_configs_and_load() -> None:
    for name in ("cdnow", "diginetica", "synth"):
        path = REPO / "configs" / "churn" / f"{name}.yaml"
        assert is_churn_config_file(path)
        cfg = load_churn_config(path, ["output_dir=elsewhere", f"name={name}-x"])
        assert cfg.task == "churn" and cfg.data is not None
        assert cfg.output_dir == "elsewhere" and cfg.name == f"{name}-x"
    assert not is_churn_config({"name": "x", "model": {"name": "gru4rec"}})
    assert not is_churn_config({"task": "next-item"})
    with pytest.raises(ConfigError, match=r"net\.nope"):
        load_churn_config(REPO / "configs" / "churn" / "cdnow.yaml", ["net.nope=1"])
    with pytest.raises(ConfigError, match="not a churn config"):
        load_churn_config({"task": "next-item", "name": "x"})


def test_run_without_data_section_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tmp_path / "runs")
    del cfg["data"]
    with pytest.raises(ConfigError, match="no 'data' section"):
        fit_churn_run(cfg)

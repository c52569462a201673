"""fit_churn -> bundle -> score_customers on a small synthetic storefront."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from shoprec import schema
from shoprec.churn.config import ChurnConfig
from shoprec.churn.features import FEATURES, build_examples
from shoprec.churn.labels import ChurnDataError
from shoprec.churn.score import SEGMENTS, ChurnBundle, score_customers, write_scores
from shoprec.churn.train import ChurnResult, fit_churn
from shoprec.data.synth import SynthConfig, generate
from tests.churn.helpers import day

START = SynthConfig().start


def _at(days: int) -> datetime:
    return START + timedelta(days=days)


def _config(**kw: object) -> ChurnConfig:
    data: dict[str, object] = {
        "definition": "no_activity",
        "observation_days": 45,
        "horizon_days": 20,
        "train_cutoffs": [_at(50), _at(70)],
        "valid_cutoffs": [_at(90)],
        "test_cutoffs": [_at(110)],
        "net": {"hidden": [16], "max_epochs": 6, "patience": 3, "batch_size": 128},
        "gbt": {"max_iter": 30},
        "segments": {"new_tenure_days": 10, "lapsed_recency_days": 30, "at_risk_probability": 0.5},
        "seed": 3,
    }
    data.update(kw)
    return ChurnConfig.model_validate(data)


@pytest.fixture(scope="module")
def shop() -> pl.DataFrame:
    return generate(SynthConfig(users=400, days=140, seed=0)).events


@pytest.fixture(scope="module")
def fitted(shop: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> ChurnResult:
    return fit_churn(_config(), shop.lazy(), tmp_path_factory.mktemp("bundle"))


def test_bundle_is_framework_free_and_complete(fitted: ChurnResult) -> None:
    root = fitted.bundle_dir
    names = {p.name for p in root.iterdir()}
    assert names == {
        "config.json",
        "weights.pt",
        "standardization.json",
        "calibration.json",
        "metrics.json",
    }
    tensors = torch.load(root / "weights.pt", weights_only=True)
    assert isinstance(tensors, dict) and all(isinstance(v, torch.Tensor) for v in tensors.values())
    stats = json.loads((root / "standardization.json").read_text())
    assert stats["feature_names"] == fitted.feature_names
    np.testing.assert_allclose(stats["mean"], tensors["mean"].numpy())
    metrics = json.loads((root / "metrics.json").read_text())
    assert set(metrics["models"]) == {"churn_net", "logistic_rfm", "gbt", "bgnbd"}
    for entry in metrics["models"].values():
        for split in ("valid", "test"):
            assert set(entry[split]) == {"raw", "calibrated"}
            assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top_decile"} <= set(
                entry[split]["calibrated"]
            )
    sel = metrics["selection"]
    assert sel["bundled_model"] == "churn_net"
    assert sel["best_model"] in metrics["models"] and sel["best_model"] == fitted.best_model
    assert metrics["config"]["horizon_days"] == 20  # the definition travels with the result
    assert json.loads((root / "config.json").read_text())["churn_config"]["definition"] == (
        "no_activity"
    )


def test_bundle_reload_gives_identical_probabilities(
    fitted: ChurnResult, shop: pl.DataFrame
) -> None:
    bundle = ChurnBundle.load(fitted.bundle_dir)
    test_rows = build_examples(shop, fitted.config.test_cutoffs, fitted.config)
    again = bundle.predict(test_rows)
    at_fit = fitted.predictions.filter(pl.col("split") == "test").get_column("churn_net").to_numpy()
    np.testing.assert_array_equal(again, at_fit)
    assert np.all((again > 0) & (again < 1))


def test_score_customers_schema_segments_and_drivers(
    fitted: ChurnResult, shop: pl.DataFrame, tmp_path: Path
) -> None:
    at = _at(110)
    scores = score_customers(fitted.bundle_dir, shop, at)
    expected_users = (
        shop.filter(pl.col(schema.USER_ID).is_not_null() & (pl.col(schema.TIMESTAMP) < at))
        .get_column(schema.USER_ID)
        .unique()
        .sort()
    )
    assert scores.get_column(schema.USER_ID).to_list() == expected_users.to_list()
    assert scores.schema == pl.Schema(
        {
            schema.USER_ID: pl.String(),
            "probability": pl.Float64(),
            "segment": pl.String(),
            "recency_days": pl.Float64(),
            "tenure_days": pl.Float64(),
            "driver_1": pl.String(),
            "contribution_1": pl.Float64(),
            "driver_2": pl.String(),
            "contribution_2": pl.Float64(),
            "driver_3": pl.String(),
            "contribution_3": pl.Float64(),
            "scored_at": schema.UTC_TIMESTAMP,
        }
    )
    assert scores.get_column("probability").is_between(0.0, 1.0).all()
    assert set(scores.get_column("segment").unique()) <= set(SEGMENTS)
    seg = fitted.config.segments
    expected = scores.select(
        pl.when(pl.col("recency_days") > seg.lapsed_recency_days)
        .then(pl.lit("lapsed"))
        .when(pl.col("tenure_days") < seg.new_tenure_days)
        .then(pl.lit("new"))
        .when(pl.col("probability") >= seg.at_risk_probability)
        .then(pl.lit("at_risk"))
        .otherwise(pl.lit("active"))
    ).to_series()
    assert scores.get_column("segment").to_list() == expected.to_list()
    assert scores.get_column("segment").n_unique() >= 3
    # drivers: model features, strongest first, equal to a direct occlusion
    contrib = scores.select("contribution_1", "contribution_2", "contribution_3").to_numpy()
    assert np.all(np.abs(contrib[:, 0]) >= np.abs(contrib[:, 1]))
    assert np.all(np.abs(contrib[:, 1]) >= np.abs(contrib[:, 2]))
    assert set(scores.get_column("driver_1").unique()) <= set(fitted.feature_names)
    bundle = ChurnBundle.load(fitted.bundle_dir)
    from shoprec.churn.features import compute_features

    feats = compute_features(shop, at, bundle.config)
    x = torch.from_numpy(feats.select(bundle.feature_names).to_numpy().astype(np.float32))[:1]
    net = bundle.net
    base = net.predict_logits(x)
    j = bundle.feature_names.index(scores.get_column("driver_1")[0])
    z = net.standardize(x)
    z[:, j] = 0.0
    manual = float(base[0] - net.forward_standardized(z).detach()[0])
    assert scores.get_column("contribution_1")[0] == pytest.approx(manual, abs=1e-5)
    # written files read back equal
    paths = write_scores(scores, tmp_path)
    assert_frame_equal(pl.read_parquet(paths["parquet"]), scores)
    csv = pl.read_csv(paths["csv"])
    assert csv.height == scores.height and csv.columns == scores.columns


def test_segment_thresholds_come_from_the_config(fitted: ChurnResult, shop: pl.DataFrame) -> None:
    bundle = ChurnBundle.load(fitted.bundle_dir)
    at = _at(110)
    bundle.config.segments.at_risk_probability = 0.0
    bundle.config.segments.new_tenure_days = 0.0
    bundle.config.segments.lapsed_recency_days = 1e9
    everyone = score_customers(bundle, shop, at)
    assert everyone.get_column("segment").unique().to_list() == ["at_risk"]
    bundle.config.segments.at_risk_probability = 1.0
    bundle.config.segments.lapsed_recency_days = 5.0
    s = score_customers(bundle, shop, at)
    lapsed = s.get_column("recency_days") > 5.0
    assert (s.filter(lapsed).get_column("segment") == "lapsed").all()
    assert (s.filter(~lapsed).get_column("segment") == "active").all()


def test_scores_ignore_events_at_or_after_at(fitted: ChurnResult, shop: pl.DataFrame) -> None:
    at = _at(100)
    a = score_customers(fitted.bundle_dir, shop, at)
    b = score_customers(fitted.bundle_dir, shop.filter(pl.col(schema.TIMESTAMP) < at), at)
    assert_frame_equal(a, b)


def test_fit_refuses_empty_or_single_class_training(shop: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ChurnDataError, match="no train customers"):
        fit_churn(
            _config(train_cutoffs=[day(-400)], valid_cutoffs=[_at(90)], test_cutoffs=[]),
            shop,
            tmp_path,
        )


def test_features_list_is_what_the_net_sees(fitted: ChurnResult) -> None:
    assert set(fitted.feature_names) <= set(FEATURES)
    assert "recency_days" in fitted.feature_names


def test_train_net_is_deterministic_for_a_seed() -> None:
    from shoprec.churn.config import NetConfig
    from shoprec.churn.train import train_net

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(float)
    cfg = NetConfig(hidden=[8], max_epochs=3, batch_size=64)
    names = ["f0", "f1", "f2", "f3"]
    a, _ = train_net(names, x[:200], y[:200], x[200:], y[200:], cfg, seed=7)
    b, _ = train_net(names, x[:200], y[:200], x[200:], y[200:], cfg, seed=7)
    c, _ = train_net(names, x[:200], y[:200], x[200:], y[200:], cfg, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_restored_weights_are_those_of_the_best_validation_epoch() -> None:
    """The kept state is the one whose validation BCE is reported (not the next epoch's)."""
    from shoprec.churn.config import NetConfig
    from shoprec.churn.train import train_net

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - x[:, 1] + rng.normal(size=400) > 0).astype(float)
    cfg = NetConfig(hidden=[8], max_epochs=6, batch_size=32, patience=6)
    net, info = train_net(["a", "b", "c"], x[:300], y[:300], x[300:], y[300:], cfg, seed=2)
    logits = net.predict_logits(torch.from_numpy(x[300:].astype(np.float32)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(y[300:]).float()
    )
    assert float(bce) == pytest.approx(info["best_val_bce"], rel=1e-5)

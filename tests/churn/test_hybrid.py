"""The hybrid network's pieces: BG/NBD expected purchases, per-cut-off BG/NBD features
(time-safe), the seed ensemble, and the network's input list."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from shoprec import schema
from shoprec.churn.baselines import BGNBD
from shoprec.churn.config import ChurnConfig
from shoprec.churn.features import build_examples
from shoprec.churn.hybrid import BGNBD_FEATURES, add_bgnbd_features
from shoprec.churn.train import net_features
from shoprec.config import ConfigError
from shoprec.data.synth import SynthConfig, generate
from shoprec.models.churn_net import ChurnNet

# Fader, Hardie & Lee (2005), CDNOW, section 5: E[Y(39) | x = 2, t_x = 30.43, T = 38.86]
FHL = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def test_expected_purchases_matches_the_published_example() -> None:
    m = BGNBD(params=dict(FHL))
    e = m.expected_purchases(np.array([2.0]), np.array([30.43]), np.array([38.86]), 39.0)
    assert float(e[0]) == pytest.approx(1.226, abs=5e-4)


def test_expected_purchases_is_bounded_and_grows_with_the_horizon() -> None:
    m = BGNBD(params=dict(FHL))
    x = np.array([0.0, 1.0, 3.0, 10.0])
    t_x = np.array([0.0, 5.0, 20.0, 30.0])
    big_t = np.array([10.0, 30.0, 30.0, 35.0])
    short = m.expected_purchases(x, t_x, big_t, 4.0)
    long = m.expected_purchases(x, t_x, big_t, 40.0)
    assert np.all(short > 0) and np.all(long > short)
    # never more than an alive customer who cannot drop out during the horizon
    r, alpha = FHL["r"], FHL["alpha"]
    bound = m.p_alive(x, t_x, big_t) * (r + x) / (alpha + big_t) * 40.0
    assert np.all(long <= bound + 1e-9)


def _config(**kw: object) -> ChurnConfig:
    start = SynthConfig().start
    data: dict[str, object] = {
        "definition": "no_activity",
        "observation_days": 40,
        "horizon_days": 15,
        "train_cutoffs": [start + timedelta(days=45), start + timedelta(days=60)],
        "valid_cutoffs": [start + timedelta(days=75)],
        "net": {"bgnbd": True, "features": ["recency_days", "frequency"]},
    }
    data.update(kw)
    return ChurnConfig.model_validate(data)


def test_bgnbd_features_are_fitted_per_cutoff_and_time_safe() -> None:
    shop = generate(SynthConfig(users=250, days=100, seed=2)).events
    cfg = _config()
    cutoffs = cfg.train_cutoffs
    full = add_bgnbd_features(build_examples(shop, cutoffs, cfg, check=False), cfg)
    assert full.columns[-3:] == list(BGNBD_FEATURES)
    assert full.select(pl.col(f).is_finite().all() for f in BGNBD_FEATURES).row(0) == (
        True,
        True,
        True,
    )
    assert full.get_column("bgnbd_p_alive").is_between(0.0, 1.0).all()
    # the first cut-off's BG/NBD features do not change when the log stops right after it
    first = cutoffs[0]
    early = shop.filter(pl.col(schema.TIMESTAMP) < first)
    feats = [schema.USER_ID, *BGNBD_FEATURES]
    alone = add_bgnbd_features(build_examples(early, [first], cfg, check=False), cfg)
    assert_frame_equal(
        full.filter(pl.col("cutoff") == first).select(feats), alone.select(feats), rel_tol=1e-9
    )
    # ... and each cut-off has its own model (the second cut-off's fit differs)
    both = full.group_by("cutoff").agg(pl.col("bgnbd_p_no_purchase").mean()).height
    assert both == 2


def test_ensemble_averages_member_logits_and_round_trips() -> None:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    x = torch.randn(50, 3).abs() * 10
    members = []
    for _ in range(3):
        net = ChurnNet(names, [4], 0.0)
        net.set_standardization(x)
        members.append(net)
    ens = ChurnNet.ensemble_of(members)
    assert ens.members == 3
    expected = torch.stack([m.predict_logits(x) for m in members]).mean(dim=0)
    torch.testing.assert_close(ens.predict_logits(x), expected)
    config, tensors = ens.to_bundle()
    again = ChurnNet.from_bundle(config, tensors)
    torch.testing.assert_close(again.predict_logits(x), expected)
    # occlusion contributions are those of the averaged logit
    assert again.occlusion(x).shape == (50, 3)
    assert ChurnNet.ensemble_of(members[:1]) is members[0]
    other = ChurnNet(names, [5], 0.0)
    other.set_standardization(x)
    with pytest.raises(ValueError, match="share"):
        ChurnNet.ensemble_of([members[0], other])


def test_net_features_subset_plus_bgnbd_and_unknown_names() -> None:
    cfg = _config()
    assert net_features(["x", "y"], cfg) == ["recency_days", "frequency", *BGNBD_FEATURES]
    plain = _config(net={})
    assert net_features(["recency_days"], plain) == ["recency_days"]
    with pytest.raises(ConfigError, match="unknown feature"):
        net_features([], _config(net={"features": ["nope"]}))

"""BG/NBD (Fader, Hardie & Lee 2005): likelihood by hand, P(alive), fitting."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.special import beta as beta_fn

from shoprec.churn.baselines import BGNBD, bgnbd_inputs, bgnbd_log_likelihood
from shoprec.churn.features import compute_features
from shoprec.churn.labels import utc
from tests.churn.helpers import day, events

R, ALPHA, A, B = 0.5, 2.0, 0.7, 1.5


def _hand_likelihood(x: int, t_x: float, big_t: float) -> float:
    """FHL 2005 eq. 6, written out with plain gamma / beta functions."""
    g = math.gamma(R + x) * ALPHA**R / math.gamma(R)
    first = beta_fn(A, B + x) / beta_fn(A, B) * g / (ALPHA + big_t) ** (R + x)
    second = 0.0
    if x > 0:
        second = beta_fn(A + 1, B + x - 1) / beta_fn(A, B) * g / (ALPHA + t_x) ** (R + x)
    return first + second


@pytest.mark.parametrize(("x", "t_x", "big_t"), [(0, 0.0, 5.0), (1, 2.0, 5.0), (3, 4.5, 6.0)])
def test_log_likelihood_matches_hand_computation(x: int, t_x: float, big_t: float) -> None:
    ll = bgnbd_log_likelihood(R, ALPHA, A, B, np.array([x]), np.array([t_x]), np.array([big_t]))
    assert float(ll[0]) == pytest.approx(math.log(_hand_likelihood(x, t_x, big_t)), rel=1e-10)


def test_x0_likelihood_is_the_gamma_poisson_zero_term() -> None:
    # no repeat purchase: only the alive branch, L = (alpha / (alpha + T))^r
    ll = bgnbd_log_likelihood(R, ALPHA, A, B, np.array([0.0]), np.array([0.0]), np.array([5.0]))
    assert float(ll[0]) == pytest.approx(R * math.log(ALPHA / (ALPHA + 5.0)))


def test_p_alive_formula_and_x0_is_certainly_alive() -> None:
    m = BGNBD(params={"r": R, "alpha": ALPHA, "a": A, "b": B})
    x = np.array([0.0, 0.0, 2.0, 2.0])
    t_x = np.array([0.0, 0.0, 3.0, 5.0])
    big_t = np.array([1.0, 50.0, 5.0, 5.0])
    p = m.p_alive(x, t_x, big_t)
    assert p[0] == 1.0 and p[1] == 1.0  # BG/NBD: no repeat purchase -> alive for sure
    hand = 1.0 / (1.0 + A / (B + 2 - 1) * ((ALPHA + 5.0) / (ALPHA + 3.0)) ** (R + 2))
    assert p[2] == pytest.approx(hand)
    assert p[3] > p[2]  # a purchase right at T: more likely alive
    q = m.p_no_purchase(x, t_x, big_t, horizon=0.0)
    np.testing.assert_allclose(q, 1.0)
    q1, q2 = m.p_no_purchase(x, t_x, big_t, 1.0), m.p_no_purchase(x, t_x, big_t, 10.0)
    assert np.all(q2 < q1) and np.all(q1 < 1.0)
    # x = 0: P(no purchase) is exactly the Gamma-Poisson zero term
    assert q1[0] == pytest.approx(((ALPHA + 1.0) / (ALPHA + 2.0)) ** R)


def _simulate(n: int, r: float, alpha: float, a: float, b: float, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    big_t = rng.uniform(20.0, 40.0, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > big_t[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    return x, t_x, big_t


def test_fit_recovers_simulated_parameters() -> None:
    truth = {"r": 0.8, "alpha": 3.0, "a": 0.6, "b": 2.5}
    x, t_x, big_t = _simulate(4000, **truth)
    m = BGNBD().fit(x, t_x, big_t)
    assert m.converged
    for k, v in truth.items():
        assert m.params[k] == pytest.approx(v, rel=0.35), k
    # the MLE beats the truth on its own data
    assert (
        m.log_likelihood(x, t_x, big_t).sum()
        >= bgnbd_log_likelihood(*truth.values(), x, t_x, big_t).sum()
    )


def test_bgnbd_inputs_from_features() -> None:
    ev = events([("a", 0, "purchase"), ("a", 14, "purchase"), ("b", 7, "purchase")])
    f = compute_features(ev, day(28))
    x, t_x, big_t = bgnbd_inputs(f, time_unit_days=7.0)
    np.testing.assert_allclose(x, [1.0, 0.0])
    np.testing.assert_allclose(t_x, [2.0, 0.0])
    np.testing.assert_allclose(big_t, [4.0, 3.0])


def test_cdnow_fit_matches_fader_hardie_lee(shared_data: Path, tmp_path: Path) -> None:
    """FHL 2005 (CDNOW, 2,357 customers, 39-week calibration, weeks): r=0.243,
    alpha=4.414, a=0.793, b=2.426."""
    from shoprec.churn.score import events_from_dataset
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(
        DataConfig,
        repo / "configs/data/cdnow.yaml",
        [f"input={shared_data / 'cdnow' / 'CDNOW_sample.txt'}"],
    )
    prepare(cfg, output=tmp_path / "cdnow")
    ev = events_from_dataset(tmp_path / "cdnow").collect()
    f = compute_features(ev, utc(datetime(1997, 10, 1)))  # calibration: 1997-01-01..09-30
    assert f.height == 2357
    m = BGNBD().fit(*bgnbd_inputs(f, 7.0))
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    print("CDNOW BG/NBD params:", m.params, "-LL:", m.neg_log_likelihood)
    for k, v in published.items():
        assert m.params[k] == pytest.approx(v, rel=0.05), (k, m.params)

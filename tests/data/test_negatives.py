"""Popularity^alpha negative sampling: distribution, cache, determinism, logQ weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shoprec.data.negatives import PopularitySampler, gru4rec_log_q, item_counts, log_support

pytestmark = pytest.mark.usefixtures("one_torch_thread")


COUNTS = np.array([0, 1, 4, 9, 100, 30, 0], dtype=np.int64)  # item 6 never seen in train


def _chi_square(observed: np.ndarray, probs: np.ndarray) -> float:
    n = observed.sum()
    keep = probs > 0
    expected = n * probs[keep]
    return float(((observed[keep] - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_samples_follow_popularity_power_alpha(alpha: float) -> None:
    # 400 cache rows of 500: the cache is regenerated several times on the way (chunk 20_000)
    sampler = PopularitySampler(COUNTS, alpha, n_sample=500, chunk_size=20_000, seed=3)
    draws = torch.cat([sampler.sample() for _ in range(400)]).numpy()  # 200k samples
    observed = np.bincount(draws, minlength=len(COUNTS)).astype(np.float64)

    weights = np.ones(len(COUNTS)) if alpha == 0 else COUNTS.astype(np.float64) ** alpha
    weights[0] = 0.0
    expected = weights / weights.sum()
    np.testing.assert_allclose(sampler.probs.numpy(), expected, rtol=1e-12)

    assert observed[0] == 0, "padding must never be drawn"
    if alpha > 0:
        assert observed[6] == 0, "an item without support has probability 0 when alpha > 0"
    else:
        assert observed[6] > 0, "uniform sampling covers every real item"
    dof = int((expected > 0).sum()) - 1
    # 99.9% quantiles of chi-square with 4 / 5 degrees of freedom
    critical = {4: 18.47, 5: 20.52}[dof]
    assert _chi_square(observed, expected) < critical


def test_sampler_rejects_a_wrong_distribution() -> None:
    """The chi-square check above has power: alpha 0.5 samples fail against alpha 1 probs."""
    sampler = PopularitySampler(COUNTS, 0.5, n_sample=1000, seed=0)
    draws = torch.cat([sampler.sample() for _ in range(100)]).numpy()
    observed = np.bincount(draws, minlength=len(COUNTS)).astype(np.float64)
    wrong = COUNTS / COUNTS.sum()
    assert _chi_square(observed, wrong) > 1000


def test_log_probs_and_determinism() -> None:
    a = PopularitySampler(COUNTS, 0.5, n_sample=7, seed=11)
    b = PopularitySampler(COUNTS, 0.5, n_sample=7, seed=11)
    c = PopularitySampler(COUNTS, 0.5, n_sample=7, seed=12)
    sa = [a.sample() for _ in range(5)]
    sb = [b.sample() for _ in range(5)]
    sc = [c.sample() for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(sa, sc, strict=True))
    assert sa[0].shape == (7,) and sa[0].dtype == torch.long
    assert a.log_probs[0] == float("-inf")
    torch.testing.assert_close(a.log_probs[1:6].exp().double(), a.probs[1:6], rtol=1e-6, atol=0)
    assert a.n_items == len(COUNTS) - 1


def test_zero_samples_and_bad_arguments() -> None:
    assert PopularitySampler(COUNTS, 1.0, n_sample=0).sample().numel() == 0
    with pytest.raises(ValueError):
        PopularitySampler(COUNTS, -1.0, n_sample=3)
    with pytest.raises(ValueError):
        PopularitySampler(np.zeros(4), 1.0, n_sample=3)


def test_item_counts() -> None:
    counts = item_counts([np.array([1, 2, 2]), np.array([4, 1])], n_items=5)
    assert counts.tolist() == [0, 2, 2, 0, 1, 0]


def test_log_support() -> None:
    table = log_support(COUNTS)
    assert table.dtype == torch.float32 and table.shape == (len(COUNTS),)
    assert table[0] == float("-inf") and table[6] == float("-inf")
    torch.testing.assert_close(table[1:6], torch.tensor([1.0, 4.0, 9.0, 100.0, 30.0]).log())


def test_gru4rec_log_q_by_hand() -> None:
    """Official GRU4Rec: in-batch columns log(count), sampled columns alpha * log(count)."""
    # columns: in-batch targets with counts 4, 1, 9; sampled negatives with counts 4, 9, 100
    column_counts = torch.tensor([4.0, 1.0, 9.0, 4.0, 9.0, 100.0])
    got = gru4rec_log_q(column_counts.log(), n_sampled=3, alpha=0.5)
    expected = [math.log(4), 0.0, math.log(9), math.log(2), math.log(3), math.log(10)]
    torch.testing.assert_close(got, torch.tensor(expected))
    # the same item (count 4 / 9) gets different weights as a target and as a sample
    assert got[0] != got[3] and got[2] != got[4]
    # alpha 0 (uniform samples): sampled columns 0, also for an item without support (0**0 = 1)
    with_unseen = torch.tensor([4.0, 1.0, 0.0, 9.0]).log()
    uniform = gru4rec_log_q(with_unseen, n_sampled=2, alpha=0.0)
    torch.testing.assert_close(uniform, torch.tensor([math.log(4), 0.0, 0.0, 0.0]))
    # alpha 1: every column log(count); no samples: all columns in-batch
    torch.testing.assert_close(gru4rec_log_q(column_counts.log(), 3, 1.0), column_counts.log())
    torch.testing.assert_close(gru4rec_log_q(column_counts.log(), 0, 0.5), column_counts.log())
    with pytest.raises(ValueError):
        gru4rec_log_q(column_counts.log(), 7, 0.5)

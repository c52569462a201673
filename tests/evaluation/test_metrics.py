"""Rank metrics, pessimistic ranks and deterministic top-k against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoprec.evaluation.metrics import (
    catalogue_coverage,
    hit_rate,
    mean_popularity,
    mrr,
    ndcg,
    pessimistic_ranks,
    popularity_percentiles,
    rank_metrics,
    top_k_items,
)

INF = float("inf")
NEG = float("-inf")


def test_target_tied_with_two_others_has_rank_three() -> None:
    scores = torch.tensor([[NEG, 0.2, 0.7, 0.7, 0.7, 0.1]])
    assert pessimistic_ranks(scores, torch.tensor([3])).tolist() == [3.0]
    # the same holds for every member of the tie
    assert pessimistic_ranks(scores.repeat(3, 1), torch.tensor([2, 3, 4])).tolist() == [3.0] * 3


def test_ranks_ignore_padding_and_mark_unscorable_targets() -> None:
    # a padding column that (wrongly) scores high must never count
    scores = torch.tensor([[5.0, 0.3, 0.1, 0.2], [5.0, 0.0, 0.0, 0.0]])
    assert pessimistic_ranks(scores, torch.tensor([1, 0])).tolist() == [1.0, INF]
    # score 0 shared by the whole catalogue: the target is last
    assert pessimistic_ranks(scores, torch.tensor([2, 3])).tolist() == [3.0, 3.0]


def test_minus_inf_target_ranks_last_and_nan_target_fails() -> None:
    scores = torch.tensor([[NEG, 1.0, NEG, 0.5, NEG]])
    assert pessimistic_ranks(scores, torch.tensor([2])).tolist() == [4.0]
    with pytest.raises(ValueError, match="NaN"):
        pessimistic_ranks(torch.tensor([[NEG, float("nan"), 1.0]]), torch.tensor([1]))


def test_ranks_are_chunk_invariant_and_buffer_reuse_is_safe() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (37, 51), generator=g).float()
    scores[:, 0] = NEG
    targets = torch.randint(0, 51, (37,), generator=g)
    full = pessimistic_ranks(scores, targets)
    buf = torch.full((8 * 50,), 7.0)
    parts = [pessimistic_ranks(scores[i : i + 8], targets[i : i + 8], buf) for i in range(0, 37, 8)]
    assert torch.equal(torch.cat(parts), full)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=-3, max_value=3), min_size=2, max_size=30),
    st.data(),
)
def test_ranks_match_brute_force(values: list[int], data: st.DataObject) -> None:
    row = [NEG, *[float(v) for v in values[1:]]]
    target = data.draw(st.integers(min_value=1, max_value=len(row) - 1))
    expected = 1 + sum(1 for j in range(1, len(row)) if j != target and row[j] >= row[target])
    got = pessimistic_ranks(torch.tensor([row]), torch.tensor([target])).item()
    assert got == expected


def test_metrics_by_hand() -> None:
    ranks = [1, 3, 3, 12, 25, INF]
    n = 6
    assert hit_rate(ranks, 1) == pytest.approx(1 / n)
    assert hit_rate(ranks, 5) == pytest.approx(3 / n)
    assert hit_rate(ranks, 20) == pytest.approx(4 / n)
    assert mrr(ranks, 5) == pytest.approx((1 + 1 / 3 + 1 / 3) / n)
    assert mrr(ranks, 20) == pytest.approx((1 + 2 / 3 + 1 / 12) / n)
    assert ndcg(ranks, 20) == pytest.approx((1 + 2 / 2 + 1 / math.log2(13)) / n)
    assert ndcg(ranks, 1) == pytest.approx(1 / n)
    m = rank_metrics(ranks, cutoffs=(10,), prefix="x/")
    assert m == {
        "x/hr@10": pytest.approx(3 / n),
        "x/mrr@10": pytest.approx((1 + 2 / 3) / n),
        "x/ndcg@10": pytest.approx(2 / n),
    }


def test_metrics_reject_bad_ranks() -> None:
    with pytest.raises(ValueError):
        hit_rate([0, 1], 20)
    with pytest.raises(ValueError):
        mrr([float("nan")], 20)
    assert hit_rate([], 20) == 0.0


def test_coverage_and_popularity_by_hand() -> None:
    lists = np.array([[1, 2], [2, 5], [0, 1]])
    assert catalogue_coverage(lists, n_items=10) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        catalogue_coverage([[11]], n_items=10)
    counts = np.array([0, 10, 1, 1, 4])  # percentiles: 1.0, 0.5, 0.5, 0.75
    pct = popularity_percentiles(counts)
    assert pct.tolist() == [0.0, 1.0, 0.5, 0.5, 0.75]
    assert mean_popularity([[1, 4], [2, 0]], pct) == pytest.approx((1.0 + 0.75 + 0.5) / 3)


def _reference_top_k(row: np.ndarray, k: int) -> list[int]:
    return np.lexsort((np.arange(row.size), -row))[:k].tolist()


def test_top_k_breaks_ties_by_index_and_is_batch_invariant() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 70))
        k = int(rng.integers(1, 25))
        s = rng.integers(0, int(rng.integers(1, 5)), size=(6, n)).astype(np.float32)
        s[rng.random((6, n)) < 0.1] = NEG
        got = top_k_items(torch.from_numpy(s), k).numpy()
        for b in range(6):
            assert got[b].tolist() == _reference_top_k(s[b], k)
            alone = top_k_items(torch.from_numpy(s[b : b + 1]), k).numpy()[0]
            assert alone.tolist() == got[b].tolist()


def test_top_k_large_ties_on_every_path() -> None:
    n = 3000
    rows = np.zeros((5, n), dtype=np.float32)
    rows[0, [5, 2500, 17]] = [3.0, 2.0, 1.0]  # 0s fill the top 21: found in the column prefix
    rows[1, :1500] = -1.0  # the 0-tie starts at column 1500: beyond the prefix, full scan
    rows[1, [2, 9]] = 4.0
    rows[2] = np.arange(n) % 7  # many ties at every value
    rows[3, 2000:2100] = 1.0  # a tie of 100 items: reaches beyond the wide top-k
    rows[4] = -1.0
    rows[4, 100:120] = 10.0
    rows[4, [2999, 50, 1500]] = 2.0  # the K-th place is a tie of 3, all inside the wide top-k
    got = top_k_items(torch.from_numpy(rows), 21).numpy()
    for b in range(rows.shape[0]):
        assert got[b].tolist() == _reference_top_k(rows[b], 21), b


def test_top_k_without_ties_matches_topk() -> None:
    s = torch.randperm(1000).float().reshape(4, 250)
    assert torch.equal(top_k_items(s, 21), torch.topk(s, 21, dim=1).indices)

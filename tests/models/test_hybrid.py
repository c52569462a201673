"""Hybrid (neural + kNN) invariants: the mixture math, member orders, bundles, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from shoprec import schema
from shoprec.config import ConfigError
from shoprec.export import load_bundle, save_bundle
from shoprec.models.base import left_pad
from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
from shoprec.models.hybrid import (
    FULL_SCORE_BLOCK,
    Hybrid,
    HybridConfig,
    ensemble_log_probs,
    full_scores,
    knn_votes,
    member_votes,
    mix_log_probs,
    mix_parts,
    neural_log_probs,
    reminder_votes,
)
from shoprec.models.sasrec import SASRec, SASRecConfig
from shoprec.models.sknn import VSKNN
from shoprec.training.config import validate_model_section

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS = 25


def _members(n_items: int = N_ITEMS) -> tuple[GRU4Rec, VSKNN]:
    torch.manual_seed(0)
    gru = GRU4Rec(GRU4RecConfig(n_items=n_items, layers=[8], dropout_p_embed=0.0)).eval()
    rng = np.random.default_rng(0)
    sessions = [rng.integers(1, n_items + 1, size=rng.integers(2, 6)) for _ in range(60)]
    return gru, VSKNN.fit(sessions, n_items)


def test_mixture_equals_hand_computed_probabilities() -> None:
    neural = torch.tensor([[float("-inf"), 1.0, 0.0, -1.0], [float("-inf"), 0.0, 2.0, 0.0]])
    knn = torch.tensor([[float("-inf"), 0.0, 2.0, 2.0], [float("-inf"), 0.0, 0.0, 0.0]])
    w, tau = 0.75, 2.0
    out = mix_log_probs(neural, knn, w, tau).exp()
    e = np.exp(np.array([1.0, 0.0, -1.0]) / tau)
    row0 = w * e / e.sum() + (1 - w) * np.array([0.0, 0.5, 0.5])
    np.testing.assert_allclose(out[0, 1:].numpy(), row0, rtol=1e-6)
    e1 = np.exp(np.array([0.0, 2.0, 0.0]) / tau)  # no neighbours: the neural part alone
    np.testing.assert_allclose(out[1, 1:].numpy(), e1 / e1.sum(), rtol=1e-6)
    assert out[0, 0] == 0.0 and out[1, 0] == 0.0  # padding: log p = -inf


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.75, 1.0])
def test_sparse_mixing_equals_the_dense_formula(weight: float) -> None:
    """The mixture touches only the voted items; it must equal the dense formula
    ``logaddexp(log w + log p, log(1 - w) + log(knn / sum knn))`` everywhere, with rows
    without votes keeping ``log p``."""
    gen = torch.Generator().manual_seed(3)
    neural = torch.randn(6, 40, generator=gen)
    neural[:, 0] = float("-inf")
    knn = torch.rand(6, 40, generator=gen) * (torch.rand(6, 40, generator=gen) < 0.2)
    knn[4] = 0.0  # a row without neighbours
    log_p = neural_log_probs(neural, 0.5)
    total = knn[:, 1:].sum(dim=1, keepdim=True)
    log_k = torch.log(knn) - torch.log(torch.where(total > 0, total, torch.ones_like(total)))
    if weight >= 1.0:
        want = log_p.clone()
    elif weight <= 0.0:
        want = torch.where(total > 0, log_k, log_p)
    else:
        mixed = torch.logaddexp(log_p + math.log(weight), log_k + math.log(1.0 - weight))
        want = torch.where(total > 0, mixed, log_p)
    want[:, 0] = float("-inf")
    before = log_p.clone()
    got = mix_parts(log_p, knn_votes(knn), weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(log_p, before)  # the input is not modified (a grid reuses it)
    if 0.0 < weight < 1.0:  # the check can fail: the votes do change the voted items
        assert not torch.allclose(got, log_p + math.log(weight))


def test_a_knn_members_sparse_votes_equal_its_dense_scores() -> None:
    _, knn = _members()
    prefixes = left_pad([[1, 2, 3], [4], [5, 6], [25, 24]])
    sparse, dense = member_votes(knn, prefixes), knn_votes(knn.score(prefixes))
    assert sparse.rows.numel() > 0
    for got, want in zip(
        (sparse.rows, sparse.cols, sparse.has), (dense.rows, dense.cols, dense.has), strict=True
    ):
        assert torch.equal(got, want)
    torch.testing.assert_close(sparse.log_share, dense.log_share, rtol=1e-6, atol=1e-6)


def test_an_ensemble_averages_the_members_probabilities() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 9, generator=gen), torch.randn(3, 9, generator=gen)
    lp = [neural_log_probs(s, 0.7) for s in (a, b)]
    got = ensemble_log_probs(lp).exp()
    torch.testing.assert_close(got, (lp[0].exp() + lp[1].exp()) / 2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(3))


def test_an_ensemble_hybrid_mixes_the_members_mean(tmp_path: Path) -> None:
    gru, knn = _members()
    torch.manual_seed(1)
    gru2 = GRU4Rec(GRU4RecConfig(n_items=N_ITEMS, layers=[8], dropout_p_embed=0.0)).eval()
    config = HybridConfig(weight=0.6, temperature=0.5)
    model = Hybrid([gru, gru2], knn, config)
    prefixes = left_pad([[1, 2, 3], [4], [5, 6]])
    p = (
        neural_log_probs(gru.score(prefixes), 0.5).exp()
        + neural_log_probs(gru2.score(prefixes), 0.5).exp()
    ) / 2
    votes = knn.score(prefixes)[:, 1:]
    share = votes / votes.sum(dim=1, keepdim=True)
    want = torch.where(votes.sum(dim=1, keepdim=True) > 0, 0.6 * p[:, 1:] + 0.4 * share, p[:, 1:])
    torch.testing.assert_close(model.score(prefixes).exp()[:, 1:], want, rtol=1e-5, atol=1e-7)
    # one member is not the ensemble (the check above can fail)
    assert not torch.allclose(Hybrid(gru, knn, config).score(prefixes), model.score(prefixes))
    items = pl.DataFrame(
        {
            schema.ITEM_IDX: list(range(1, N_ITEMS + 1)),
            schema.ITEM_ID: [f"i{i}" for i in range(1, N_ITEMS + 1)],
            schema.ITEM_COUNT: [1] * N_ITEMS,
        }
    )
    loaded = load_bundle(save_bundle(tmp_path / "b", model, items))
    assert isinstance(loaded.model, Hybrid) and len(loaded.model.neurals) == 2
    assert [e["name"] for e in loaded.meta["model_config"]["neural"]] == ["gru4rec", "gru4rec"]
    assert torch.equal(loaded.model.score(prefixes), model.score(prefixes))


def test_weight_one_keeps_the_neural_ranking_and_zero_the_knn_votes() -> None:
    gru, knn = _members()
    prefixes = left_pad([[1, 2, 3], [4], [5, 6]])
    s_n, s_k = gru.score(prefixes), knn.score(prefixes)
    only_neural = Hybrid(gru, knn, HybridConfig(weight=1.0, temperature=0.5)).score(prefixes)
    assert torch.equal(only_neural.argsort(dim=1, stable=True), s_n.argsort(dim=1, stable=True))
    only_knn = mix_log_probs(s_n, s_k, 0.0, 1.0)
    voted = s_k[:, 1:] > 0
    for row in range(prefixes.shape[0]):
        if bool(voted[row].any()):  # items with votes keep the kNN order, above all others
            got = only_knn[row, 1:][voted[row]]
            want = s_k[row, 1:][voted[row]]
            assert torch.equal(got.argsort(stable=True), want.argsort(stable=True))
            assert bool((only_knn[row, 1:][~voted[row]] == float("-inf")).all())


def test_padding_does_not_change_scores() -> None:
    model = Hybrid(*_members(), HybridConfig(weight=0.6, temperature=1.0))
    a = model.score(left_pad([[3, 4]]))
    b = model.score(torch.tensor([[0, 0, 0, 3, 4]]))
    torch.testing.assert_close(a, b)


def test_bundle_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    model = Hybrid(*_members(), HybridConfig(weight=0.6, temperature=0.5, reminder=0.1))
    items = pl.DataFrame(
        {
            schema.ITEM_IDX: list(range(1, N_ITEMS + 1)),
            schema.ITEM_ID: [f"i{i}" for i in range(1, N_ITEMS + 1)],
            schema.ITEM_COUNT: [1] * N_ITEMS,
        }
    )
    path = save_bundle(tmp_path / "b", model, items)
    loaded = load_bundle(path)
    assert isinstance(loaded.model, Hybrid)
    assert loaded.meta["model_config"]["neural"]["name"] == "gru4rec"
    assert loaded.model.config == model.config
    prefixes = left_pad([[1, 2, 3], [7], [9, 9, 10, 11]])
    assert torch.equal(model.score(prefixes), loaded.model.score(prefixes))


def _dense_reminder(prefix: list[int], decay: str, width: int) -> torch.Tensor:
    """The reminder distribution of one session, by hand: click ``step`` back weighs
    ``1 / step`` (``div``) or only the last click counts (``last``)."""
    rem = torch.zeros(width, dtype=torch.float64)
    for step, item in enumerate(reversed(prefix), start=1):
        rem[item] += 1.0 / step if decay == "div" else float(step == 1)
    return rem / rem.sum()


@pytest.mark.parametrize("decay", ["div", "last"])
def test_reminder_votes_equal_hand_computed_shares_wherever_the_padding_is(decay: str) -> None:
    sessions = [[4, 2, 4, 9], [7], [3, 3, 3], [1, 2, 3, 4, 5, 2]]
    left = left_pad(sessions)
    right = torch.zeros((len(sessions), 9), dtype=torch.long)  # padding after the clicks
    for i, s in enumerate(sessions):
        right[i, : len(s)] = torch.tensor(s)
    for prefixes in (left, right):
        votes = reminder_votes(prefixes, decay)  # type: ignore[arg-type]
        got = torch.zeros((len(sessions), N_ITEMS + 1), dtype=torch.float64)
        got[votes.rows, votes.cols] = votes.log_share.double().exp()
        for i, s in enumerate(sessions):
            torch.testing.assert_close(got[i], _dense_reminder(s, decay, N_ITEMS + 1))
        assert bool(votes.has.all())
    empty = reminder_votes(torch.zeros((2, 3), dtype=torch.long))
    assert empty.rows.numel() == 0 and not bool(empty.has.any())


@pytest.mark.parametrize("decay", ["div", "last"])
def test_a_reminder_share_mixes_the_sessions_own_items_into_the_hybrid(decay: str) -> None:
    """``log((1 - r) p + r rem)`` with ``p`` the hybrid without reminder: checked against the
    dense formula; r = 0 gives the hybrid's own scores bit for bit."""
    gru, knn = _members()
    sessions = [[1, 2, 3, 2], [4], [5, 6, 5]]
    prefixes = left_pad(sessions)
    base = Hybrid(gru, knn, HybridConfig(weight=0.6, temperature=0.5))
    r = 0.2
    model = Hybrid(
        gru,
        knn,
        HybridConfig(weight=0.6, temperature=0.5, reminder=r, reminder_decay=decay),  # type: ignore[arg-type]
    )
    p = base.score(prefixes).double().exp()
    got = model.score(prefixes).double().exp()
    for i, s in enumerate(sessions):
        want = (1 - r) * p[i] + r * _dense_reminder(s, decay, N_ITEMS + 1)
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-9)
    off = Hybrid(gru, knn, HybridConfig(weight=0.6, temperature=0.5, reminder=0.0))
    assert torch.equal(off.score(prefixes), base.score(prefixes))
    with pytest.raises(ValidationError):
        HybridConfig(reminder=1.0)


def test_members_must_share_the_catalogue() -> None:
    gru, _ = _members(N_ITEMS)
    _, knn = _members(N_ITEMS + 1)
    with pytest.raises(ValueError, match="disagree on the catalogue"):
        Hybrid(gru, knn)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mix_log_probs(torch.zeros(1, 3), torch.tensor([[0.0, -1.0, 1.0]]), 0.5, 1.0)
    with pytest.raises(ValueError, match="weight"):
        mix_log_probs(torch.zeros(1, 3), torch.zeros(1, 3), 1.5, 1.0)
    gru, knn = _members()
    config, tensors = Hybrid(gru, knn).to_bundle()
    config["knn"] = config["neural"] | {"name": "hybrid"}
    with pytest.raises(ValueError, match="cannot contain a hybrid"):
        Hybrid.from_bundle(config, tensors)


def test_a_hybrid_is_not_trained_from_an_experiment_config() -> None:
    with pytest.raises(ConfigError, match="shoprec hybrid build"):
        validate_model_section({"name": "hybrid"}, "x.yaml")


@pytest.mark.parametrize("kind", ["gru4rec", "sasrec"])
def test_full_scores_in_blocks_equal_the_models_own_scores(kind: str) -> None:
    """A catalogue wider than one block: the blocked product gives exactly ``score``'s numbers
    (the hybrid and its tuning rank with them; evaluation relies on the same property)."""
    n_items = 2 * FULL_SCORE_BLOCK + 37
    torch.manual_seed(1)
    model = (
        GRU4Rec(GRU4RecConfig(n_items=n_items, layers=[24]))
        if kind == "gru4rec"
        else SASRec(SASRecConfig(n_items=n_items, hidden=16, max_len=6))
    ).eval()
    if isinstance(model, GRU4Rec):
        with torch.no_grad():
            model.item_bias.normal_(0, 0.1)
    prefixes = left_pad([[1, 5, 9], [n_items], [3, 3], [7, 8, 9, 10, 11, 12, 13]])
    assert torch.equal(full_scores(model, prefixes), model.score(prefixes))


def test_owned_tensors_give_the_same_numbers() -> None:
    gru, knn = _members()
    prefixes = left_pad([[1, 2, 3], [4], [5, 6, 5], [24, 25]])
    scores = gru.score(prefixes)
    kept = scores.clone()
    plain = neural_log_probs(scores, 0.3)
    assert torch.equal(scores, kept)  # not owned: untouched
    owned = neural_log_probs(scores.clone(), 0.3, own=True)
    assert torch.equal(owned, plain)
    votes = member_votes(knn, prefixes)
    for w in (0.0, 0.4, 1.0):
        assert torch.equal(mix_parts(plain.clone(), votes, w, own=True), mix_parts(plain, votes, w))

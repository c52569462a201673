"""The recommender over a bundle: id mapping, fallbacks, exclusions, reasons, cart add-ons,
batching, item neighbours and the churn adapter.

The model is the test TransitionModel (tests/serving/fakes.py): item j scores the number of
times it followed the session's last item in training, -inf when never.
"""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoprec.export import Bundle, load_bundle
from shoprec.inference import (
    CART_REASON,
    GENERIC_REASON,
    POPULAR_REASON,
    SEEN_REASON,
    ChurnScorer,
    ChurnUnavailable,
    Recommender,
    build_cart_neighbours,
    build_item_neighbours,
)
from tests.serving import fakes

# Train counts: b 4, a 3, c 2, f 2, d 1, e 1, g 1 -> popularity order b a c f d e g.
POPULAR = ["b", "a", "c", "f", "d", "e", "g"]


def bundle(
    *, aux: bool = True, cart: bool = True, extra: dict[str, torch.Tensor] | None = None
) -> Bundle:
    n = len(fakes.ITEM_IDS)
    sessions = [np.array(s) for s in fakes.SESSIONS]
    counts = np.bincount(np.concatenate(sessions), minlength=n + 1)[1:].tolist()
    tensors: dict[str, torch.Tensor] = {}
    if aux:
        tensors.update(build_item_neighbours(sessions, n, top_n=4))
    if cart:
        tensors.update(build_cart_neighbours([np.array(b) for b in fakes.BASKETS], n, top_n=4))
    tensors.update(extra or {})
    return Bundle(
        model=fakes.TransitionModel.fit(sessions, n),
        items=fakes.items_table(fakes.ITEM_IDS, counts),
        meta={},
        path=Path("."),
        aux=tensors,
    )


@pytest.fixture(scope="module")
def rec() -> Recommender:
    return Recommender(bundle())


def ids(recs: list) -> list[str]:
    return [r.item_id for r in recs]


# --- ids and fallbacks ---
def test_ids_map_both_ways_and_unknown_ids_are_dropped(rec: Recommender) -> None:
    assert rec.to_idx(["a", "zz", "g"]) == [1, 7]
    assert rec.unknown(["a", "zz", "yy", "zz"]) == ["zz", "yy"]
    assert rec.item_ids[1:] == fakes.ITEM_IDS


def test_model_items_come_first_then_popularity_tops_up(rec: Recommender) -> None:
    got = rec.next_items(["a"], k=4, exclude={"a"})
    assert ids(got) == ["b", "c", "f", "d"]
    assert got[0].score == 3.0 and not got[0].fallback
    assert got[0].reason == "because you viewed a"
    assert all(r.fallback and r.reason == POPULAR_REASON for r in got[1:])


@pytest.mark.parametrize("session", [[], ["unknown"], ["x", "y", "z"]])
def test_new_visitors_and_unknown_sessions_get_popular_items(
    rec: Recommender, session: list[str]
) -> None:
    got = rec.next_items(session, k=3)
    assert ids(got) == POPULAR[:3]
    assert all(r.fallback and r.reason == POPULAR_REASON for r in got)
    assert [r.score for r in got] == [4.0, 3.0, 2.0]


def test_unknown_items_are_ignored_not_fatal(rec: Recommender) -> None:
    assert rec.next_items(["zz", "a", "yy"], k=2) == rec.next_items(["a"], k=2)


def test_the_newest_item_drives_the_model(rec: Recommender) -> None:
    assert ids(rec.next_items(["a", "b"], k=2)) == ["c", "d"]  # b -> c (2), b -> d (1)


def test_k_larger_than_the_catalogue_returns_everything_once(rec: Recommender) -> None:
    got = rec.next_items(["a"], k=50, exclude={"g"})
    assert sorted(ids(got)) == sorted(set(fakes.ITEM_IDS) - {"g"})
    assert rec.next_items(["a"], k=0) == []


@settings(max_examples=60, deadline=None)
@given(
    sessions=st.lists(
        st.lists(st.sampled_from([*fakes.ITEM_IDS, "new1", "new2"]), max_size=6),
        min_size=1,
        max_size=5,
    ),
    k=st.integers(1, 9),
    data=st.data(),
)
def test_batch_equals_one_by_one_and_never_returns_excluded(
    rec: Recommender, sessions: list[list[str]], k: int, data: st.DataObject
) -> None:
    excludes = [
        data.draw(st.sets(st.sampled_from([*fakes.ITEM_IDS, "new1"]), max_size=4)) for _ in sessions
    ]
    batch = rec.next_items_batch(sessions, k, excludes)
    for s, e, got in zip(sessions, excludes, batch, strict=True):
        assert got == rec.next_items(s, k, e)
        assert not set(ids(got)) & e
        assert len(ids(got)) == len(set(ids(got))) == min(k, len(set(fakes.ITEM_IDS) - e))


# --- reasons ---
def hand_neighbours(rows: dict[int, list[tuple[int, float]]]) -> dict[str, torch.Tensor]:
    n = len(fakes.ITEM_IDS)
    idx = torch.zeros((n + 1, 2), dtype=torch.long)
    w = torch.zeros((n + 1, 2))
    for i, pairs in rows.items():
        for j, (nb, weight) in enumerate(pairs):
            idx[i, j], w[i, j] = nb, weight
    return {"neighbour_idx": idx, "neighbour_weight": w}


def test_reason_names_the_most_related_session_item_not_the_newest() -> None:
    # b (2) is recommended after a (1); d (4) is more related to b than a is.
    nb = hand_neighbours({4: [(2, 0.9)], 1: [(2, 0.1)]})
    r = Recommender(bundle(aux=False, extra=nb))
    assert r.next_items(["d", "a"], k=1)[0].reason == "because you viewed d"
    # equal weights: the most recent session item wins
    nb = hand_neighbours({4: [(2, 0.5)], 1: [(2, 0.5)]})
    r = Recommender(bundle(aux=False, extra=nb))
    assert r.next_items(["d", "a"], k=1)[0].reason == "because you viewed a"
    # relation read in either direction: b lists c
    nb = hand_neighbours({2: [(3, 0.7)]})
    r = Recommender(bundle(aux=False, extra=nb))
    assert r.next_items(["c", "a"], k=1)[0].reason == "because you viewed c"


@pytest.mark.parametrize("aux", [True, False])
def test_an_item_the_shopper_already_viewed_is_labelled_as_such(aux: bool) -> None:
    """After b, a the model's best item is b (a -> b 3 times): a reminder, not "because you
    viewed a"; excluding viewed items drops it instead."""
    r = Recommender(bundle(aux=aux))
    got = r.next_items(["b", "a"], k=2)
    assert got[0].item_id == "b" and got[0].reason == SEEN_REASON and not got[0].fallback
    assert all(x.reason != SEEN_REASON for x in got[1:])
    kept = r.next_items(["b", "a"], k=2, exclude={"b", "a"})
    assert "b" not in ids(kept) and all(x.reason != SEEN_REASON for x in kept)


def test_without_neighbours_reasons_are_generic() -> None:
    r = Recommender(bundle(aux=False))
    assert r.neighbours is None
    assert r.next_items(["a"], k=1)[0].reason == GENERIC_REASON


def test_neighbours_of_another_item_index_are_ignored() -> None:
    wrong = {
        "neighbour_idx": torch.zeros((3, 2), dtype=torch.long),
        "neighbour_weight": torch.zeros((3, 2)),
    }
    r = Recommender(bundle(aux=False, extra=wrong))
    assert r.neighbours is None
    assert r.next_items(["a"], k=1)[0].reason == GENERIC_REASON


# --- cart add-ons ---
def test_cart_addons_use_baskets_then_the_model_then_popularity(rec: Recommender) -> None:
    got = rec.cart_addons(["a"], k=4)
    assert ids(got) == ["d", "b", "c", "f"]
    assert got[0].reason == "often bought with a"  # a and d were bought together
    assert got[1].reason == "goes with a"  # the model's a -> b, explained by co-views
    assert [r.fallback for r in got] == [False, False, True, True]


def test_cart_addons_without_basket_data_fall_back_to_the_model() -> None:
    r = Recommender(bundle(cart=False))
    got = r.cart_addons(["a"], k=2)
    assert ids(got) == ["b", "c"]
    assert got[0].reason == "goes with a"
    r = Recommender(bundle(cart=False, aux=False))
    assert r.cart_addons(["a"], k=1)[0].reason == CART_REASON


@settings(max_examples=40, deadline=None)
@given(
    cart=st.lists(st.sampled_from([*fakes.ITEM_IDS, "new"]), min_size=1, max_size=5),
    k=st.integers(1, 8),
)
def test_cart_addons_never_return_cart_items(rec: Recommender, cart: list[str], k: int) -> None:
    got = ids(rec.cart_addons(cart, k))
    assert not set(got) & set(cart)
    assert len(got) == len(set(got)) == min(k, len(set(fakes.ITEM_IDS) - set(cart)))


def test_a_cart_of_unknown_items_gets_popular_items(rec: Recommender) -> None:
    assert ids(rec.cart_addons(["new"], 2)) == ["b", "a"]


# --- item neighbours ---
def brute_force_neighbours(
    sessions: list[list[int]], n: int, window: int
) -> dict[tuple[int, int], float]:
    pairs: dict[tuple[int, int], set[int]] = {}
    support: dict[int, set[int]] = {}
    for sid, s in enumerate(sessions):
        for i, a in enumerate(s):
            support.setdefault(a, set()).add(sid)
            for b in s[i + 1 : i + 1 + window]:
                if a != b:
                    pairs.setdefault((a, b), set()).add(sid)
                    pairs.setdefault((b, a), set()).add(sid)
    return {
        (a, b): len(ss) / np.sqrt(len(support[a]) * len(support[b])) for (a, b), ss in pairs.items()
    }


@settings(max_examples=40, deadline=None)
@given(
    sessions=st.lists(st.lists(st.integers(1, 6), max_size=8), max_size=8),
    window=st.integers(1, 4),
)
def test_vectorised_neighbours_match_a_brute_force_count(
    sessions: list[list[int]], window: int
) -> None:
    n = 6
    got = build_item_neighbours(
        [np.array(s, dtype=np.int64) for s in sessions], n, top_n=n, window=window
    )
    want = brute_force_neighbours(sessions, n, window)
    idx, w = got["neighbour_idx"], got["neighbour_weight"]
    assert idx.shape == w.shape == (n + 1, n)
    assert idx.dtype == torch.long and w.dtype == torch.float32
    found = {
        (a, int(idx[a, j])): float(w[a, j]) for a in range(n + 1) for j in range(n) if idx[a, j] > 0
    }
    assert found.keys() == want.keys()
    for key, value in want.items():
        assert found[key] == pytest.approx(value, rel=1e-6)
    assert torch.all(w[:, :-1] >= w[:, 1:])  # heaviest first


def test_neighbours_keep_top_n_and_ignore_out_of_range_items() -> None:
    got = build_item_neighbours([np.array([1, 2, 3, 4, 99, 0])], n_items=4, top_n=2, window=5)
    assert got["neighbour_idx"].shape == (5, 2)
    assert got["neighbour_idx"][1].tolist() == [2, 3]  # equal weights: lower index first
    empty = build_item_neighbours([], n_items=3)
    assert empty["neighbour_idx"].abs().sum() == 0


def test_window_limits_which_items_count_as_neighbours() -> None:
    got = build_item_neighbours([np.array([1, 2, 3])], n_items=3, top_n=2, window=1)
    assert got["neighbour_idx"][1].tolist() == [2, 0]


# --- bundles on disk ---
def test_a_saved_bundle_recommends_the_same(
    tmp_path: Path, rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.register(monkeypatch)
    loaded = Recommender(load_bundle(fakes.make_bundle(tmp_path / "b")))
    for session in (["a"], ["b", "e"], []):
        assert loaded.next_items(session, 5) == rec.next_items(session, 5)
    assert loaded.cart_addons(["a"], 3) == rec.cart_addons(["a"], 3)


# --- churn adapter ---
def test_churn_scorer_needs_a_bundle_folder(tmp_path: Path) -> None:
    with pytest.raises(ChurnUnavailable, match="not a folder"):
        ChurnScorer(tmp_path / "missing")


def test_churn_scorer_reports_a_missing_churn_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "shoprec.churn", None)  # import now raises ImportError
    with pytest.raises(ChurnUnavailable, match="churn package"):
        ChurnScorer(tmp_path)


def test_churn_scorer_adapts_the_churn_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[object, int, datetime]] = []

    def score_customers(bundle: object, events: pl.DataFrame, at: datetime) -> pl.DataFrame:
        calls.append((bundle, events.height, at))
        return pl.DataFrame(
            {
                "user_id": ["u1"],
                "probability": [0.8],
                "segment": ["at_risk"],
                "driver_1": ["recency_days"],
                "contribution_1": [1.2],
                "driver_2": ["n_sessions"],
                "contribution_2": [float("nan")],
            }
        )

    fake = types.ModuleType("shoprec.churn")
    fake.score_customers = score_customers  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shoprec.churn", fake)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    (risk,) = ChurnScorer(tmp_path).score(pl.DataFrame({"user_id": ["u1"]}), at)
    assert calls == [(tmp_path, 1, at)]  # no ChurnBundle.load: the folder is passed through
    assert (risk.user_id, risk.probability, risk.segment) == ("u1", 0.8, "at_risk")
    assert [(d.feature, d.contribution) for d in risk.drivers] == [
        ("recency_days", 1.2),
        ("n_sessions", None),
    ]


# --- fast top-k for dot-product models (DotScorer) ---
def dot_bundle(model_name: str, n_items: int = 300) -> Bundle:
    """A GRU4Rec / SASRec over ``n_items`` with random weights, a popularity table and item
    neighbours, so every part of next_items runs."""
    from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from shoprec.models.sasrec import SASRec, SASRecConfig

    torch.manual_seed(1)
    model: Any
    if model_name == "gru4rec":
        model = GRU4Rec(GRU4RecConfig(n_items=n_items, layers=[16, 24])).eval()
        with torch.no_grad():
            model.item_bias.normal_(0, 0.05)  # a bias makes the test check it is added
    else:
        model = SASRec(SASRecConfig(n_items=n_items, max_len=8, hidden=16)).eval()
    rng = np.random.default_rng(1)
    sessions = [rng.integers(1, n_items + 1, size=rng.integers(2, 8)) for _ in range(400)]
    counts = np.bincount(np.concatenate(sessions), minlength=n_items + 1)[1:].tolist()
    ids_ = [f"i{i}" for i in range(1, n_items + 1)]
    return Bundle(
        model=model,
        items=fakes.items_table(ids_, counts),
        meta={},
        path=Path("."),
        aux=build_item_neighbours(sessions, n_items, top_n=8),
    )


@pytest.mark.parametrize("coarse", ["int8", "bf16"])
@pytest.mark.parametrize("model_name", ["gru4rec", "sasrec"])
def test_fast_top_k_gives_the_full_ranking_lists(model_name: str, coarse: str) -> None:
    b = dot_bundle(model_name)
    fast, full = Recommender(b, coarse=coarse), Recommender(b, fast_top_k=False)
    assert fast.dot is not None and full.dot is None
    assert fast.dot.coarse.kind == coarse
    rng = np.random.default_rng(2)
    sessions = [
        [f"i{i}" for i in rng.integers(1, 301, size=rng.integers(1, 12))] for _ in range(60)
    ]
    for k in (1, 10, 50, 400):  # 400 > the catalogue: every item once, then nothing else
        for s in sessions[:20]:
            excl = set(s[:2]) | {"i7", "unknown"}
            got, want = fast.next_items(s, k, excl), full.next_items(s, k, excl)
            assert [r.item_id for r in got] == [r.item_id for r in want]
            assert [r.reason for r in got] == [r.reason for r in want]
            np.testing.assert_allclose(
                [r.score for r in got], [r.score for r in want], rtol=1e-5, atol=1e-6
            )
    # a batch ranks as one session at a time (scores: up to float32 rounding of the GRU on a
    # padded batch, as for the full ranking)
    batch = fast.next_items_batch(sessions, 10, [set(s) for s in sessions])
    alone = [fast.next_items(s, 10, set(s)) for s in sessions]
    want = full.next_items_batch(sessions, 10, [set(s) for s in sessions])
    for got_b, alone_b, want_b in zip(batch, alone, want, strict=True):
        assert [r.item_id for r in got_b] == [r.item_id for r in alone_b]
        assert [r.item_id for r in got_b] == [r.item_id for r in want_b]
        np.testing.assert_allclose(
            [r.score for r in got_b], [r.score for r in alone_b], rtol=1e-5, atol=1e-6
        )
    cart = sessions[0][:3]
    assert [r.item_id for r in fast.cart_addons(cart, 12)] == [
        r.item_id for r in full.cart_addons(cart, 12)
    ]


def test_int8_is_the_default_coarse_pass_here() -> None:
    """The int8 kernel exists in this torch (fbgemm) and passes its load-time check."""
    assert Recommender(dot_bundle("gru4rec")).dot is not None
    assert Recommender(dot_bundle("gru4rec")).dot.coarse.kind == "int8"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="coarse"):
        Recommender(dot_bundle("gru4rec"), coarse="fp8")


@pytest.mark.parametrize("coarse", ["int8", "bf16"])
def test_the_coarse_scores_stay_within_their_bound(coarse: str) -> None:
    from shoprec.inference import DotScorer

    torch.manual_seed(3)
    worst = 0.0
    for dim, scale in ((8, 1.0), (100, 1e-3), (512, 30.0), (512, 0.05)):
        weight = torch.randn(2000, dim) * scale
        weight[5] *= 1e3  # rows of very different norms
        weight[6] = 0.0  # and an all-zero row
        weight[7, :3] = torch.tensor([1e4, -1e-6, 0.5]) * scale  # one huge entry: coarse grid
        bias = torch.randn(2000)
        v = torch.randn(6, dim) * torch.tensor([[1e-4], [1.0], [10.0], [1e3], [1.0], [0.0]])
        v[4, 0] = 1e3  # one dominant coordinate: the other ones round to 0 on the int8 grid
        scorer = DotScorer(lambda p, v=v: v[: p.shape[0]], weight, bias, coarse=coarse)
        lower, upper = scorer.bounds(v)
        exact = (v.double() @ weight.double().T + bias.double()).float()
        assert bool((lower <= exact).all()) and bool((exact <= upper).all())
        # the float32 scores the top k is exact for, within the bound too
        f32 = torch.mm(v, weight.T) + bias
        assert bool((lower <= f32).all()) and bool((f32 <= upper).all())
        err = (exact.double() - (lower.double() + upper.double()) / 2).abs()
        worst = max(worst, float((err / ((upper.double() - lower.double()) / 2)).max()))
        # and the top-k of the scorer is the exact top-k
        ((idx, _),) = scorer.top(torch.zeros(1, 1, dtype=torch.long), [25], [{3, 4}])
        row = exact[0].clone()
        row[[0, 3, 4]] = -torch.inf
        assert idx.tolist() == row.topk(25).indices.tolist()
    assert worst < 1.0


def test_a_failing_int8_kernel_falls_back_to_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoprec import inference

    def wrong(self: Any, u_grid: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this CPU")  # e.g. a torch without fbgemm

    def off_by_a_bit(self: Any, u_grid: torch.Tensor) -> torch.Tensor:
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            u_grid, self.act_scale, inference.INT8_ZERO_POINT, self.packed
        )
        return out * (1 + 1e-4)  # e.g. a kernel that saturates or rounds differently

    for fake in (wrong, off_by_a_bit):
        monkeypatch.setattr(inference._Int8Coarse, "_kernel", fake)
        rec = Recommender(dot_bundle("gru4rec"))
        assert rec.dot is not None and rec.dot.coarse.kind == "bf16"
        with pytest.raises(RuntimeError):
            Recommender(dot_bundle("gru4rec"), coarse="int8")


def test_the_state_cache_gives_bit_identical_lists() -> None:
    """Click by click, in batches of mixed sessions: the cached recommender resumes from
    stored GRU states and answers exactly (ids, scores, reasons) as the uncached one."""
    b = dot_bundle("gru4rec")
    cached, cold = Recommender(b, state_cache=50), Recommender(b)
    assert cached.states is not None and cold.states is not None
    assert cached.states.capacity == 50 and cold.states.capacity == 0
    rng = np.random.default_rng(5)
    shoppers = [
        [f"i{i}" for i in rng.integers(1, 301, size=rng.integers(1, 14))] for _ in range(40)
    ]
    for step in range(14):  # every shopper who has a next click sends the session so far
        batch = [s[: step + 1] for s in shoppers if len(s) > step]
        for lo in range(0, len(batch), 7):
            part = batch[lo : lo + 7]
            excl = [set(s) for s in part]
            got = cached.next_items_batch(part, 10, excl)
            want = cold.next_items_batch(part, 10, excl)
            assert got == want  # Recommendation equality: ids, float scores, reasons, flags
            again = cached.next_items_batch(part, 10, excl)  # a repeated request: no step
            assert again == want
    lookups = cached.states.lookups
    assert lookups["prefix"] > 0 and lookups["session"] > 0 and lookups["miss"] > 0
    assert len(cached.states._cache) <= 50  # LRU bound
    assert cold.states.lookups["miss"] > 0 and not cold.states._cache
    # a session longer than the model window is keyed by the window the model sees
    long = [f"i{i}" for i in rng.integers(1, 301, size=60)]
    window = Recommender(b, state_cache=50, max_session_len=50)
    assert window.next_items(long, 10) == Recommender(b, max_session_len=50).next_items(long, 10)


def test_matrix_gru_batches_give_the_lone_lists_up_to_rounding() -> None:
    """``matrix_gru_from``: a batch of that many sessions steps the GRU as matrix products;
    every list is its session's lone list (ids, reasons; scores up to float32 rounding), with
    the state cache on or off, click by click (a cached state may come from a matrix batch);
    smaller batches run from scratch stay bit-identical."""
    b = dot_bundle("gru4rec")
    lone = Recommender(b)
    rng = np.random.default_rng(11)
    shoppers = [
        [f"i{i}" for i in rng.integers(1, 301, size=rng.integers(1, 14))] for _ in range(24)
    ]
    for matrix in (
        Recommender(b, matrix_gru_from=4),
        Recommender(b, state_cache=50, matrix_gru_from=4),
    ):
        assert matrix.states is not None and matrix.states.matrix_from == 4
        for step in range(14):
            batch = [s[: step + 1] for s in shoppers if len(s) > step]
            for lo in range(0, len(batch), 8):
                part = batch[lo : lo + 8]
                got = matrix.next_items_batch(part, 10, [set(s) for s in part])
                for session, recs in zip(part, got, strict=True):
                    want = lone.next_items(session, 10, set(session))
                    assert [(r.item_id, r.reason) for r in recs] == [
                        (r.item_id, r.reason) for r in want
                    ]
                    assert [r.score for r in recs] == pytest.approx(
                        [r.score for r in want], rel=1e-5, abs=1e-6
                    )
                # below the threshold, from no cached state: per session, bit-identical
                if len(part) < 4 and not matrix.states.capacity:
                    assert got == [lone.next_items(s, 10, set(s)) for s in part]


def test_a_non_finite_session_vector_gets_no_model_items() -> None:
    from shoprec.inference import DotScorer

    weight = torch.randn(50, 4)
    v = torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    scorer = DotScorer(lambda p: v, weight)
    (i0, s0), (i1, s1) = scorer.top(torch.ones(2, 1, dtype=torch.long), [5, 5], [set(), set()])
    assert i0.size == 0 and s0.size == 0
    assert i1.size == 5 and np.isfinite(s1).all()


def test_models_without_an_item_matrix_are_ranked_as_they_score(rec: Recommender) -> None:
    assert rec.dot is None  # the TransitionModel: full ranking of its scores
    bad = dot_bundle("gru4rec")
    with torch.no_grad():
        bad.model.item_weight[3, 0] = float("nan")  # type: ignore[attr-defined]
    assert Recommender(bad).dot is None  # no bound holds for NaN weights: full ranking

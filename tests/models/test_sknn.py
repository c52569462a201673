"""SKNN / V-SKNN: hand-computed neighbours and scores, a literal port of session-rec's loops as
the reference on random data, the NextItemModel contract and bundles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from shoprec import schema
from shoprec.config import ConfigError, validate_config
from shoprec.models.base import NextItemModel, left_pad
from shoprec.models.sknn import (
    SKNN,
    VSKNN,
    SKNNConfig,
    VSKNNConfig,
    position_weight,
    step_weight,
)

# train sessions in train order (later = more recent)
TRAIN = [
    np.array([1, 2, 3]),  # s0
    np.array([2, 4]),  # s1
    np.array([1, 5, 1]),  # s2: a repeat, the item set is {1, 5}
    np.array([6, 7]),  # s3
    np.array([2, 3, 5]),  # s4
]
N_ITEMS = 7


def scores_of(model: SKNN | VSKNN, prefix: list[int]) -> list[float]:
    return model.score(left_pad([prefix]))[0, 1:].tolist()


# --- SKNN by hand ------------------------------------------------------------------------------
# prefix [2, 3]: candidates s0 {1,2,3} (overlap 2), s1 {2,4} (1), s4 {2,3,5} (2)
C03 = 2 / math.sqrt(2 * 3)  # cosine of s0 and of s4
C1 = 1 / math.sqrt(2 * 2)  # cosine of s1


def test_sknn_neighbours_by_hand() -> None:
    m = SKNN.fit(TRAIN, N_ITEMS)
    _, row, sess, sim, _ = m.neighbours(np.array([[2, 3]]))
    # ordered by similarity, ties by recency (s4 before s0)
    assert sess.tolist() == [4, 0, 1]
    assert row.tolist() == [0, 0, 0]
    assert sim.tolist() == pytest.approx([C03, C03, C1])


def test_sknn_scores_by_hand() -> None:
    m = SKNN.fit(TRAIN, N_ITEMS)
    expected = [C03, 2 * C03 + C1, 2 * C03, C1, C03, 0.0, 0.0]
    assert scores_of(m, [2, 3]) == pytest.approx(expected, rel=1e-6)
    # items of the prefix itself keep their score (session-rec's ContextKNN)
    assert scores_of(m, [2, 3])[1] > 0
    # repeats in the prefix do not change the item set
    assert scores_of(m, [3, 2, 3]) == pytest.approx(expected, rel=1e-6)


def test_sknn_k_and_sample_size() -> None:
    # k=1: s0 and s4 tie; the more recent s4 wins
    m = SKNN.fit(TRAIN, N_ITEMS, SKNNConfig(k=1))
    assert scores_of(m, [2, 3]) == pytest.approx([0, C03, C03, 0, C03, 0, 0], rel=1e-6)
    # sample_size=2: only the 2 most recent candidates (s1, s4) are considered
    m = SKNN.fit(TRAIN, N_ITEMS, SKNNConfig(sample_size=2))
    assert scores_of(m, [2, 3]) == pytest.approx([0, C03 + C1, C03, C1, C03, 0, 0], rel=1e-6)


def test_sknn_jaccard() -> None:
    m = SKNN.fit(TRAIN, N_ITEMS, SKNNConfig(similarity="jaccard"))
    j03, j1 = 2 / 3, 1 / 3
    assert scores_of(m, [2, 3]) == pytest.approx(
        [j03, 2 * j03 + j1, 2 * j03, j1, j03, 0, 0], rel=1e-6
    )


# --- V-SKNN by hand ----------------------------------------------------------------------------
def test_vsknn_scores_by_hand() -> None:
    m = VSKNN.fit(TRAIN, N_ITEMS)
    # prefix [5, 3, 4]: weights 1/3, 2/3, 1 (div); 3 distinct items
    # s0 shares 3: sim (2/3)/3 = 2/9, last shared click 2 back -> x 1/2 = 1/9
    # s1 shares 4: sim 1/3, 1 back -> 1/3
    # s2 shares 5: sim (1/3)/3 = 1/9, 3 back -> x 1/3 = 1/27
    # s4 shares 3 and 5: sim (2/3 + 1/3)/3 = 1/3, 2 back -> 1/6
    expected = [1 / 9 + 1 / 27, 1 / 9 + 1 / 3 + 1 / 6, 1 / 9 + 1 / 6, 1 / 3, 1 / 27 + 1 / 6, 0, 0]
    assert scores_of(m, [5, 3, 4]) == pytest.approx(expected, rel=1e-6)
    _, _, sess, sim, max_pos = m.neighbours(np.array([[5, 3, 4]]))
    assert sess.tolist() == [4, 1, 0, 2]  # 1/3, 1/3 (recency), 2/9, 1/9
    assert sim.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 9, 1 / 9])
    assert max_pos.tolist() == [2, 3, 2, 1]


def test_vsknn_repeated_items_use_their_last_position() -> None:
    m = VSKNN.fit(TRAIN, N_ITEMS)
    # prefix [4, 3, 4]: item 4 last at 3/3 -> weight 1, item 3 at 2/3; 2 distinct items
    # s1 {2,4}: sim 1/2, 1 back -> 1/2; s0 and s4 share 3: sim 1/3, 2 back -> 1/6 each
    expected = [1 / 6, 1 / 2 + 1 / 6 + 1 / 6, 1 / 6 + 1 / 6, 1 / 2, 1 / 6, 0, 0]
    assert scores_of(m, [4, 3, 4]) == pytest.approx(expected, rel=1e-6)
    # remind=False drops the prefix's own items (session-rec's remind switch)
    m = VSKNN.fit(TRAIN, N_ITEMS, VSKNNConfig(remind=False))
    assert scores_of(m, [4, 3, 4]) == pytest.approx(
        [1 / 6, 1 / 2 + 1 / 3, 0, 0, 1 / 6, 0, 0], rel=1e-6
    )


def test_vsknn_idf_weighting() -> None:
    m = VSKNN.fit(TRAIN, N_ITEMS, VSKNNConfig(idf_weighting=1.0))
    # idf = log(5 sessions / clicks): item 4 has 1 click
    assert scores_of(m, [4, 3, 4])[3] == pytest.approx(0.5 * (1 + math.log(5 / 1)), rel=1e-6)


def test_weights() -> None:
    assert position_weight("quadratic", np.array([1, 2]), np.array([2, 2])).tolist() == [0.25, 1]
    assert position_weight("same", np.array([1]), np.array([5])).tolist() == [1.0]
    assert step_weight("quadratic", np.array([2])).tolist() == [0.25]
    with pytest.raises(ValueError):
        step_weight("nope", np.array([1]))


# --- a literal port of session-rec's loops as the reference -------------------------------------
def reference_scores(
    train: list[np.ndarray],
    n_items: int,
    prefix: list[int],
    kind: str,
    k: int,
    sample_size: int,
    similarity: str = "cosine",
    weighting: str = "div",
    weighting_score: str = "div",
    remind: bool = True,
) -> np.ndarray:
    sets = [set(s.tolist()) for s in train]
    item_sessions: dict[int, set[int]] = {}
    for sid, items in enumerate(sets):
        for i in items:
            item_sessions.setdefault(i, set()).add(sid)
    relevant: set[int] = set()
    for i in prefix:
        relevant |= item_sessions.get(i, set())
    if sample_size and len(relevant) > sample_size:
        relevant = set(sorted(relevant, reverse=True)[:sample_size])  # most recent
    a = set(prefix)
    pos_map: dict[int, float] = {}
    last_pos: dict[int, int] = {}
    for count, item in enumerate(prefix, start=1):
        pos_map[item] = float(
            position_weight(weighting, np.array([count]), np.array([len(prefix)]))[0]
        )
        last_pos[item] = count
    neighbours = []
    for sid in relevant:
        shared = a & sets[sid]
        if kind == "sknn":
            if similarity == "cosine":
                sim = len(shared) / math.sqrt(len(a) * len(sets[sid]))
            else:
                sim = len(shared) / (len(a) + len(sets[sid]) - len(shared))
        else:
            total = 0.0
            for i in sorted(shared, key=last_pos.__getitem__):  # click order (set order in
                total += pos_map[i]  # session-rec; any fixed order is as faithful)
            sim = total / len(pos_map)
        if sim > 0:
            neighbours.append((sid, sim))
    neighbours.sort(key=lambda x: (-x[1], -x[0]))
    scores = np.zeros(n_items + 1)
    for sid, sim in neighbours[:k]:
        decay = 1.0
        if kind == "vsknn":
            for step, item in enumerate(reversed(prefix), start=1):
                if item in sets[sid]:
                    decay = float(step_weight(weighting_score, np.array([step]))[0])
                    break
        for item in sorted(sets[sid]):
            if kind == "vsknn" and not remind and item in a:
                continue
            scores[item] += sim * decay
    return scores[1:].astype(np.float32)


def _random_data(seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    rng = np.random.default_rng(seed)
    train = [rng.integers(1, 16, size=int(rng.integers(1, 7))) for _ in range(80)]
    prefixes = [rng.integers(1, 16, size=int(rng.integers(1, 7))).tolist() for _ in range(40)]
    return train, prefixes


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("sknn", {"k": 5, "sample_size": 10}),
        ("sknn", {"k": 100, "sample_size": 0}),
        ("sknn", {"k": 3, "sample_size": 500, "similarity": "jaccard"}),
        ("vsknn", {"k": 5, "sample_size": 10}),
        ("vsknn", {"k": 100, "sample_size": 0, "weighting": "quadratic"}),
        ("vsknn", {"k": 4, "sample_size": 20, "weighting": "log", "weighting_score": "same"}),
        ("vsknn", {"k": 8, "sample_size": 30, "remind": False, "weighting": "linear"}),
    ],
)
def test_matches_session_rec_reference(kind: str, kwargs: dict[str, object]) -> None:
    train, prefixes = _random_data(11)
    model: SKNN | VSKNN
    if kind == "sknn":
        model = SKNN.fit(train, 15, SKNNConfig.model_validate(kwargs))
    else:
        model = VSKNN.fit(train, 15, VSKNNConfig.model_validate(kwargs))
    got = model.score(left_pad(prefixes)).numpy()[:, 1:]
    for row, prefix in zip(got, prefixes, strict=True):
        ref = reference_scores(train, 15, prefix, kind, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_array_equal(row, ref)


@pytest.mark.parametrize("cls", [SKNN, VSKNN])
def test_item_index_order_does_not_matter(cls: type[SKNN] | type[VSKNN]) -> None:
    # long prefixes and sessions: many shared items, so float sums see different orders
    rng = np.random.default_rng(13)
    train = [rng.integers(1, 16, size=int(rng.integers(3, 11))) for _ in range(150)]
    prefixes = [rng.integers(1, 16, size=int(rng.integers(4, 11))).tolist() for _ in range(300)]
    perm = np.random.default_rng(0).permutation(15) + 1  # new index of item i: perm[i - 1]
    relabel = np.concatenate([[0], perm])
    a = cls.fit(train, 15).score(left_pad(prefixes)).numpy()
    b = (
        cls.fit([relabel[s] for s in train], 15)
        .score(left_pad([relabel[p].tolist() for p in prefixes]))
        .numpy()
    )
    np.testing.assert_array_equal(a[:, 1:], b[:, perm])


# --- contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SKNN, VSKNN])
def test_contract_padding_and_batching(cls: type[SKNN] | type[VSKNN]) -> None:
    train, prefixes = _random_data(5)
    m = cls.fit(train, 15)
    assert isinstance(m, NextItemModel)
    batch = m.score(left_pad(prefixes))
    assert batch.shape == (len(prefixes), 16) and batch.dtype == torch.float32
    assert torch.isinf(batch[:, 0]).all() and (batch[:, 0] < 0).all()
    for i, p in enumerate(prefixes[:10]):
        alone = m.score(left_pad([p], max_len=None))
        padded = m.score(torch.tensor([[0, 0, 0, *p]]))
        assert torch.equal(alone[0], batch[i]) and torch.equal(padded[0], batch[i])
    empty = m.score(torch.zeros((1, 3), dtype=torch.long))
    assert (empty[0, 1:] == 0).all()
    with pytest.raises(ValueError):
        m.score(torch.tensor([[16]]))


@pytest.mark.parametrize("name", ["sknn", "vsknn"])
def test_bundle_round_trip(name: str, tmp_path: Path) -> None:
    from shoprec.export import load_bundle, save_bundle

    train, prefixes = _random_data(3)
    m = (
        SKNN.fit(train, 15, SKNNConfig(k=7))
        if name == "sknn"
        else VSKNN.fit(train, 15, VSKNNConfig(k=7, idf_weighting=2.0))
    )
    config, tensors = m.to_bundle()
    again = type(m).from_bundle(config, tensors)
    x = left_pad(prefixes)
    assert torch.equal(m.score(x), again.score(x))
    items = pl.DataFrame(
        {
            schema.ITEM_IDX: list(range(1, 16)),
            schema.ITEM_ID: [f"i{i}" for i in range(1, 16)],
            schema.ITEM_COUNT: [1] * 15,
        },
        schema=schema.ITEMS_SCHEMA,
    )
    loaded = load_bundle(save_bundle(tmp_path / name, m, items)).model
    assert type(loaded) is type(m)
    assert torch.equal(torch.topk(loaded.score(x), 5).indices, torch.topk(m.score(x), 5).indices)
    assert torch.equal(loaded.score(x), m.score(x))


def test_configs_are_strict() -> None:
    with pytest.raises(ConfigError):
        validate_config(SKNNConfig, {"k": 10, "weighting": "div"})
    with pytest.raises(ConfigError):
        validate_config(VSKNNConfig, {"weighting": "cubic"})
    with pytest.raises(ValueError):
        SKNN.fit([np.array([1, 9])], 5)

"""SASRec invariants: causality, padding, truncation, overfitting, bundles."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pytest
import torch

from shoprec.data.negatives import PopularitySampler, item_counts
from shoprec.data.sequences import SequenceCollator
from shoprec.models.base import NextItemModel, left_pad
from shoprec.models.sasrec import SASRec, SASRecConfig
from shoprec.training.regimes import SequenceConfig, SequenceModule, pessimistic_ranks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(max_len: int = 8, n_heads: int = 2, dropout: float = 0.0) -> SASRec:
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(
            n_items=40, max_len=max_len, hidden=16, n_blocks=2, n_heads=n_heads, dropout=dropout
        )
    )


def test_protocol_shape_and_padding_column() -> None:
    model = _model()
    assert isinstance(model, NextItemModel)
    scores = model.score(left_pad([[1, 2, 3], [4]]))
    assert scores.shape == (2, 41)
    assert scores[:, 0].eq(float("-inf")).all()
    assert torch.isfinite(scores[:, 1:]).all()
    with pytest.raises(ValueError):
        SASRec(SASRecConfig())


def test_causality_later_items_do_not_change_earlier_outputs() -> None:
    model = _model().eval()
    a = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    b = a.clone()
    b[0, 5:] = torch.tensor([11, 12, 13])  # change everything after position 4
    with torch.no_grad():
        ha, hb = model.encode(a), model.encode(b)
    torch.testing.assert_close(ha[:, :5], hb[:, :5])
    assert not torch.allclose(ha[:, 5:], hb[:, 5:])  # later positions do see the change


def test_left_padding_does_not_change_scores() -> None:
    model = _model()
    alone = model.score(torch.tensor([[5, 9, 2]]))
    batch = model.score(torch.tensor([[0, 0, 0, 0, 5, 9, 2], [1, 2, 3, 4, 5, 6, 7]]))
    torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-5)
    padded_hidden = model.eval().encode(torch.tensor([[0, 0, 5, 9, 2]]))[:, 2:]
    torch.testing.assert_close(
        padded_hidden, model.encode(torch.tensor([[5, 9, 2]])), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(model.score(torch.tensor([[9, 5, 2]])), alone)


def test_long_prefixes_keep_the_last_max_len_items() -> None:
    model = _model(max_len=4)
    long = model.score(torch.tensor([[1, 2, 3, 4, 5, 6]]))
    last = model.score(torch.tensor([[3, 4, 5, 6]]))
    torch.testing.assert_close(long, last)
    with pytest.raises(ValueError):
        model.encode(torch.tensor([[1, 2, 3, 4, 5]]))


def test_score_uses_no_dropout_and_keeps_the_mode() -> None:
    model = _model(dropout=0.5).train()
    a = model.score(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(model.score(torch.tensor([[1, 2, 3]])), a)
    assert model.training


@pytest.mark.parametrize("loss", ["ce", "sampled", "gbce"])
def test_overfits_a_tiny_batch(loss: Literal["ce", "sampled", "gbce"]) -> None:
    sessions = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9]), np.array([10, 11, 12, 13])]
    cfg = SASRecConfig(n_items=15, max_len=6, hidden=32, n_blocks=1, dropout=0.0)
    regime = SequenceConfig(loss=loss, n_negatives=14, learning_rate=0.01, ce_chunk=4, gbce_t=0.0)
    module = SequenceModule(cfg, regime)
    sampler = None
    if loss != "ce":
        sampler = PopularitySampler(item_counts(sessions, 15), 0.0, 14, chunk_size=4096)
    collate = SequenceCollator(sampler)
    opt = module.configure_optimizers()
    module.train()
    first = None
    for _ in range(150):
        value = module.loss(collate(sessions))
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert first is not None and float(value.detach()) < 0.2 * first
    prefixes = [s[: i + 1].tolist() for s in sessions for i in range(len(s) - 1)]
    targets = torch.tensor([int(s[i + 1]) for s in sessions for i in range(len(s) - 1)])
    ranks = pessimistic_ranks(module.model.score(left_pad(prefixes)), targets)
    assert (ranks == 1).all(), ranks


def test_bundle_round_trip_gives_identical_scores() -> None:
    model = _model()
    config, tensors = model.to_bundle()
    json.dumps(config)
    assert config["name"] == "sasrec" and config["max_len"] == 8
    rebuilt = SASRec.from_bundle(config, tensors)
    prefixes = left_pad([[1, 2, 3], [4, 5], [40]])
    assert torch.equal(rebuilt.score(prefixes), model.score(prefixes))
    other = _model()
    with torch.no_grad():
        other.pos_emb.weight.add_(0.1)
    assert not torch.equal(other.score(prefixes), model.score(prefixes))


def test_scores_are_full_precision_under_autocast() -> None:
    model = _model()
    prefixes = left_pad([[1, 2, 3], [4, 5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.score(prefixes)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, model.score(prefixes))

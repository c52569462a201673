"""GRU4Rec invariants: padding, session-start resets, overfitting, bundles."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

import numpy as np
import pytest
import torch

from shoprec.data.session_parallel import SessionParallelDataset
from shoprec.models.base import NextItemModel, left_pad
from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
from shoprec.training.regimes import (
    SessionParallelConfig,
    SessionParallelModule,
    pessimistic_ranks,
    session_parallel_loader,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(embedding: int = 0, layers: list[int] | None = None, n_items: int = 30) -> GRU4Rec:
    torch.manual_seed(0)
    cfg = GRU4RecConfig(
        n_items=n_items,
        layers=layers or [16],
        embedding=embedding,
        dropout_p_embed=0.0,
        dropout_p_hidden=0.0,
    )
    return GRU4Rec(cfg)


def _fresh_state(model: GRU4Rec, clicks: list[int]) -> list[torch.Tensor]:
    hidden = model.init_hidden(1)
    for item in clicks:
        hidden = model.step(torch.tensor([item]), hidden)
    return hidden


def test_protocol_shape_and_padding_column() -> None:
    model = _model()
    assert isinstance(model, NextItemModel)
    scores = model.score(left_pad([[1, 2, 3], [4]]))
    assert scores.shape == (2, 31)
    assert torch.isinf(scores[:, 0]).all() and (scores[:, 0] < 0).all()
    assert torch.isfinite(scores[:, 1:]).all()
    with pytest.raises(ValueError):
        GRU4Rec(GRU4RecConfig())  # n_items not set


@pytest.mark.parametrize(("embedding", "layers"), [(0, [16]), (8, [16, 12])])
def test_left_padding_does_not_change_scores(embedding: int, layers: list[int]) -> None:
    model = _model(embedding, layers)
    alone = model.score(torch.tensor([[5, 9, 2]]))
    padded = model.score(torch.tensor([[0, 0, 0, 5, 9, 2], [1, 2, 3, 4, 5, 6]]))[:1]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    # and the padded run equals stepping through the prefix from a zero state
    top = _fresh_state(model, [5, 9, 2])[-1]
    torch.testing.assert_close(model.score_hidden(top), alone, rtol=1e-5, atol=1e-6)
    # a different prefix does give different scores (the check above can fail)
    assert not torch.allclose(model.score(torch.tensor([[9, 5, 2]])), alone)


@pytest.mark.parametrize(("embedding", "layers"), [(0, [16]), (8, [16, 12])])
def test_shared_prefixes_give_each_row_its_own_state(embedding: int, layers: list[int]) -> None:
    """session_vectors steps once per distinct prefix (a trie); every row must still equal its
    own prefix stepped alone from a zero state: rows that share beginnings, duplicates,
    a row that is another's prefix, interior padding, an empty row."""
    model = _model(embedding, layers)
    rows = [[5, 9, 2, 7], [5, 9, 2], [5, 9], [5], [9, 5], [5, 9, 2, 7], [3, 0, 4], [0, 0, 0]]
    width = max(len(r) for r in rows)
    batch = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    got = model.session_vectors(batch)
    for row, out in zip(rows, got, strict=True):
        clicks = [i for i in row if i != 0]
        want = _fresh_state(model, clicks)[-1][0] if clicks else torch.zeros(layers[-1])
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], got[1])  # different prefixes differ (the check can fail)


def test_score_uses_no_dropout_and_keeps_the_mode() -> None:
    torch.manual_seed(0)
    model = GRU4Rec(
        GRU4RecConfig(n_items=20, layers=[8], dropout_p_embed=0.5, dropout_p_hidden=0.5)
    )
    model.train()
    a = model.score(torch.tensor([[1, 2, 3]]))
    b = model.score(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(a, b)
    assert model.training


def test_state_is_reset_exactly_at_session_starts() -> None:
    """Drive the regime's state handling over session-parallel steps: after every step, each
    slot's state equals a fresh run over its own session so far (from a zero state)."""
    lengths = [3, 2, 5, 2, 4, 2, 3, 6, 2]
    sessions, nxt = [], 1
    for n in lengths:  # item = global click number, so an item identifies session and position
        sessions.append(np.arange(nxt, nxt + n, dtype=np.int64))
        nxt += n
    where = {int(x): (s, i) for s, sess in enumerate(sessions) for i, x in enumerate(sess)}
    n_items = nxt - 1
    cfg = GRU4RecConfig(n_items=n_items, layers=[8, 6], dropout_p_embed=0.0, dropout_p_hidden=0.0)
    module = SessionParallelModule(cfg, SessionParallelConfig(batch_size=3, n_sample=0))
    module.eval()
    checked_restarts = 0
    with torch.no_grad():
        for batch in SessionParallelDataset(sessions, batch_size=3):
            hidden = module.carry_state(batch)
            new = module.model.step(batch.inputs, hidden)
            module._hidden = new
            for slot, item in enumerate(batch.inputs.tolist()):
                s, i = where[item]
                fresh = _fresh_state(module.model, sessions[s][: i + 1].tolist())
                for layer in range(2):
                    torch.testing.assert_close(new[layer][slot], fresh[layer][0])
                checked_restarts += int(batch.reset[slot] and i == 0)
    assert checked_restarts == len(sessions)


def test_state_without_reset_would_differ() -> None:
    """Sanity for the test above: carrying state into a new session changes it."""
    model = _model()
    with_history = _fresh_state(model, [1, 2, 3, 7])[-1]
    fresh = _fresh_state(model, [7])[-1]
    assert not torch.allclose(with_history, fresh)


@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_overfits_a_tiny_dataset(loss: Literal["bpr-max", "cross-entropy"]) -> None:
    torch.manual_seed(0)
    sessions = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9]), np.array([10, 11, 12, 13])]
    cfg = GRU4RecConfig(n_items=15, layers=[32], dropout_p_embed=0.0, dropout_p_hidden=0.0)
    regime = SessionParallelConfig(
        batch_size=3,
        n_sample=4,
        sample_alpha=0.0,
        loss=loss,
        sample_chunk=4096,
        bpreg=0.0,
        learning_rate=0.1,
        momentum=0.5,
    )
    module = SessionParallelModule(cfg, regime)
    loader = session_parallel_loader(sessions, 15, regime)
    opt = module.configure_optimizers()
    module.train()
    for _ in range(120):
        module.on_train_epoch_start()
        for batch in loader:
            value = module.loss(module.forward_step(batch), batch)
            opt.zero_grad()
            value.backward()
            opt.step()
    prefixes = [s[: i + 1].tolist() for s in sessions for i in range(len(s) - 1)]
    targets = torch.tensor([int(s[i + 1]) for s in sessions for i in range(len(s) - 1)])
    ranks = pessimistic_ranks(module.model.score(left_pad(prefixes)), targets)
    assert (ranks == 1).all(), ranks


@pytest.mark.parametrize("embedding", [0, 5])
def test_bundle_round_trip_gives_identical_scores(embedding: int) -> None:
    model = _model(embedding, [12, 10])
    with torch.no_grad():
        model.item_bias.normal_()
    config, tensors = model.to_bundle()
    json.dumps(config)
    assert config["name"] == "gru4rec" and config["n_items"] == 30
    rebuilt = GRU4Rec.from_bundle(config, tensors)
    prefixes = left_pad([[1, 2, 3], [4, 5], [30]])
    assert torch.equal(rebuilt.score(prefixes), model.score(prefixes))
    other = _model(embedding, [12, 10])
    with torch.no_grad():
        other.item_weight.add_(0.1)
    assert not torch.equal(other.score(prefixes), model.score(prefixes))


def test_scores_are_full_precision_under_autocast() -> None:
    model = _model()
    prefixes = left_pad([[1, 2, 3], [4, 5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.score(prefixes)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, model.score(prefixes))


# --- serving: advance (the batch-independent GRU the serving cache resumes) ---
@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(("embedding", "layers"), [(0, [16]), (8, [16, 24]), (0, [40])])
def test_advance_resumes_bit_for_bit_and_matches_the_model(
    embedding: int, layers: list[int], prepared: bool
) -> None:
    model = _model(embedding, layers, n_items=60).eval()
    if prepared:
        model.prepare_serving()
    rng = np.random.default_rng(0)
    sessions = [rng.integers(1, 61, size=rng.integers(1, 9)).tolist() for _ in range(7)]
    batch = model.advance(left_pad(sessions))
    # the model's own state: the same up to float32 rounding
    torch.testing.assert_close(
        batch[-1], model.session_vectors(left_pad(sessions)), rtol=1e-5, atol=1e-6
    )
    for row, session in enumerate(sessions):
        alone = model.advance(left_pad([session]))
        for layer, h in enumerate(alone):
            assert torch.equal(h[0], batch[layer][row])  # the batch does not matter, bitwise
        for cut in range(1, len(session)):  # resumed from any earlier state: the same bits
            head = model.advance(left_pad([session[:cut]]))
            tail = model.advance(left_pad([session[cut:]]), head)
            for layer, h in enumerate(tail):
                assert torch.equal(h[0], batch[layer][row])
    # padding anywhere leaves the state unchanged; an empty row keeps the given state
    padded = model.advance(torch.tensor([[0, 0] + sessions[0], [0] * (len(sessions[0]) + 2)]))
    assert torch.equal(padded[-1][0], batch[-1][0])
    assert torch.equal(padded[-1][1], torch.zeros_like(padded[-1][1]))


@pytest.mark.parametrize("matrix_from", [0, 2])
@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(("embedding", "layers"), [(0, [16]), (8, [16, 24])])
def test_the_scripted_serving_loop_gives_the_python_loops_bits(
    embedding: int,
    layers: list[int],
    prepared: bool,
    matrix_from: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``advance`` runs its loop (per session, or per step as matrix products) as TorchScript
    (no GIL held); it must give exactly what the same loop gives in Python, from any state,
    with or without the gate table."""
    from shoprec.models import gru4rec

    assert gru4rec._scripted_advance() is not None  # TorchScript works in this torch
    assert gru4rec._scripted(gru4rec._advance_matrix) is not gru4rec._advance_matrix
    model = _model(embedding, layers, n_items=60).eval()
    if prepared:
        model.prepare_serving()
    rng = np.random.default_rng(3)
    sessions = [rng.integers(1, 61, size=rng.integers(1, 9)).tolist() for _ in range(9)]
    start = [torch.randn(len(sessions), h) for h in layers]
    fast = model.advance(left_pad(sessions), start, matrix_from=matrix_from)
    fresh = model.advance(left_pad(sessions), matrix_from=matrix_from)
    # as where TorchScript is gone
    monkeypatch.setattr(gru4rec, "_SCRIPTED", {"_advance_rows": None, "_advance_matrix": None})
    assert gru4rec._scripted_advance() is None
    assert gru4rec._scripted(gru4rec._advance_matrix) is gru4rec._advance_matrix
    again = model.advance(left_pad(sessions), start, matrix_from=matrix_from)
    for got, want in zip(fast, again, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(
        fresh, model.advance(left_pad(sessions), matrix_from=matrix_from), strict=True
    ):
        assert torch.equal(got, want)


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(("embedding", "layers"), [(0, [16]), (8, [16, 24]), (0, [40])])
def test_the_matrix_gru_gives_the_per_session_states_up_to_rounding(
    embedding: int, layers: list[int], prepared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``matrix_from``: a batch with that many sessions to run (rows with items) runs each
    step as one matrix product; the states are the per-session ones up to float32 rounding,
    whatever the rows' lengths (a row with no items keeps its state), resumed from any state;
    fewer sessions to run go per session."""
    from shoprec.models import gru4rec

    ran: list[str] = []
    scripted = gru4rec._scripted

    def spy(fn: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
        ran.append(fn.__name__)
        return scripted(fn)

    monkeypatch.setattr(gru4rec, "_scripted", spy)
    model = _model(embedding, layers, n_items=60).eval()
    if prepared:
        model.prepare_serving()
    rng = np.random.default_rng(5)
    sessions = [rng.integers(1, 61, size=rng.integers(1, 12)).tolist() for _ in range(8)]
    sessions[3] = []  # nothing to run: the state stays as given
    start = [torch.randn(len(sessions), h) for h in layers]
    prefixes = left_pad(sessions, 12)
    rows = model.advance(prefixes, start)
    assert "_advance_matrix" not in ran
    matrix = model.advance(prefixes, start, matrix_from=7)  # the 7 sessions with items
    assert ran[-1] == "_advance_matrix"
    for got, want, given in zip(matrix, rows, start, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got[0], given[0])
        assert torch.equal(got[3], given[3])
    ran.clear()
    below = model.advance(prefixes, start, matrix_from=8)  # 7 sessions to run < 8
    assert "_advance_matrix" not in ran
    for got, want in zip(below, rows, strict=True):
        assert torch.equal(got, want)


def test_the_gate_table_is_not_used_once_the_weights_change() -> None:
    model = _model(n_items=20).eval()
    model.prepare_serving()
    before = model.advance(torch.tensor([[3, 4, 5]]))[-1]
    with torch.no_grad():
        model.item_weight[4] += 1.0  # e.g. training went on after the table was built
    after = model.advance(torch.tensor([[3, 4, 5]]))[-1]
    assert not torch.equal(before, after)
    torch.testing.assert_close(
        after, model.session_vectors(torch.tensor([[3, 4, 5]])), rtol=1e-5, atol=1e-6
    )

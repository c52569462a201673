"""Losses against values computed by hand (plain ``math``) on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shoprec.training.losses import (
    bpr_max_loss,
    cross_entropy_logq_loss,
    full_softmax_cross_entropy,
    gbce_beta,
    gbce_loss,
    sampled_softmax_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SCORES = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]  # row i's positive is column i


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _neg_log_softmax_first(logits: list[float]) -> float:
    m = max(logits)
    return -(logits[0] - m - math.log(sum(math.exp(v - m) for v in logits)))


def test_cross_entropy_with_logq_by_hand() -> None:
    q = [0.5, 0.25, 0.125]
    for weight in (0.0, 1.0, 0.5):
        expected = 0.0
        for i, row in enumerate(SCORES):
            adj = [r - weight * math.log(qj) for r, qj in zip(row, q, strict=True)]
            expected += _neg_log_softmax_first([adj[i]] + [a for j, a in enumerate(adj) if j != i])
        expected /= 2
        got = cross_entropy_logq_loss(torch.tensor(SCORES), torch.tensor(q).log(), weight)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    # the correction matters: it must change the value
    with_q = cross_entropy_logq_loss(torch.tensor(SCORES), torch.tensor(q).log(), 1.0)
    assert float(with_q) != pytest.approx(float(cross_entropy_logq_loss(torch.tensor(SCORES))))


@pytest.mark.parametrize("bpreg", [0.0, 0.9])
def test_bpr_max_with_score_regularization_by_hand(bpreg: float) -> None:
    expected = 0.0
    for i, row in enumerate(SCORES):
        negs = [r for j, r in enumerate(row) if j != i]
        z = sum(math.exp(r) for r in negs)
        s = [math.exp(r) / z for r in negs]
        ranking = -math.log(sum(sj * _sigmoid(row[i] - rj) for sj, rj in zip(s, negs, strict=True)))
        reg = sum(sj * rj**2 for sj, rj in zip(s, negs, strict=True))
        expected += ranking + bpreg * reg
    expected /= 2
    got = bpr_max_loss(torch.tensor(SCORES), bpreg)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_bpr_max_gradient_pushes_target_up() -> None:
    scores = torch.tensor(SCORES, requires_grad=True)
    bpr_max_loss(scores, 0.5).backward()
    assert scores.grad is not None
    assert (scores.grad.diagonal() < 0).all()  # descending the loss raises the positives


def test_sampled_softmax_with_logq_and_accidental_hits_by_hand() -> None:
    pos = torch.tensor([1.0, 0.0])
    neg = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    pos_q = torch.tensor([0.1, 0.2])
    neg_q = torch.tensor([0.3, 0.4])
    mask = torch.tensor([[True, True], [False, True]])  # row 1: negative 0 is the positive
    row0 = [1.0 - math.log(0.1), 0.5 - math.log(0.3), 2.0 - math.log(0.4)]
    row1 = [0.0 - math.log(0.2), -1.0 - math.log(0.4)]
    expected = (_neg_log_softmax_first(row0) + _neg_log_softmax_first(row1)) / 2
    got = sampled_softmax_loss(pos, neg, pos_q.log(), neg_q.log(), 1.0, mask)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = (_neg_log_softmax_first([1.0, 0.5, 2.0]) + _neg_log_softmax_first([0.0, 1.0, -1.0])) / 2
    assert float(sampled_softmax_loss(pos, neg)) == pytest.approx(plain, rel=1e-6)


def test_gbce_by_hand_and_beta() -> None:
    assert gbce_beta(256, 1001, 0.0) == pytest.approx(1.0)
    alpha = 256 / 1000
    assert gbce_beta(256, 1001, 1.0) == pytest.approx(alpha)
    assert gbce_beta(256, 1001, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    pos = torch.tensor([1.0, -0.5])
    neg = torch.tensor([[0.2, -1.0], [0.3, 0.0]])
    beta = 0.4
    expected = 0.0
    for p, ns in zip([1.0, -0.5], [[0.2, -1.0], [0.3, 0.0]], strict=True):
        # -(log sigmoid(p)^beta + sum log(1 - sigmoid(n))) / (k + 1)
        term = -(beta * math.log(_sigmoid(p)) + sum(math.log(1 - _sigmoid(n)) for n in ns))
        expected += term / 3
    expected /= 2
    assert float(gbce_loss(pos, neg, beta)) == pytest.approx(expected, rel=1e-6)
    masked = gbce_loss(pos, neg, beta, torch.tensor([[True, False], [True, True]]))
    assert float(masked) == pytest.approx(expected - _softplus(-1.0) / 3 / 2, rel=1e-6)
    # beta = 1 is plain binary cross-entropy averaged over the k + 1 labels
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    assert float(gbce_loss(pos, neg, 1.0)) == pytest.approx(float(bce), rel=1e-6)


@pytest.mark.parametrize("store_bytes", [0, 1 << 20])
@pytest.mark.parametrize(("chunk", "grad_scale"), [(1, 1.7), (3, -0.5), (7, 1.0), (64, 0.0)])
def test_chunked_full_softmax_equals_cross_entropy(
    chunk: int, grad_scale: float, store_bytes: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 10, 7])
    ref = F.cross_entropy(hidden @ weight.T, targets)
    ref_grads = torch.autograd.grad(ref * grad_scale, (hidden, weight))
    got = full_softmax_cross_entropy(hidden, weight, targets, chunk, store_bytes)
    grads = torch.autograd.grad(got * grad_scale, (hidden, weight))
    torch.testing.assert_close(got, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_chunked_full_softmax_gradcheck_and_large_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 5, 0])
    for store in (0, 1 << 20):
        # a 2nd backward through one graph recomputes what the 1st consumed: equal up to rounding
        assert torch.autograd.gradcheck(
            lambda h, w, s=store: full_softmax_cross_entropy(h, w, targets, 4, s),
            (hidden, weight),
            nondet_tol=1e-12,
        )
    big = torch.tensor([[300.0, -200.0]])  # logits in the hundreds must not overflow
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    got = full_softmax_cross_entropy(big, w, torch.tensor([0]), chunk=2)
    ref = F.cross_entropy(big @ w.T, torch.tensor([0]))
    torch.testing.assert_close(got, ref)
    assert torch.isfinite(got)


@pytest.mark.parametrize("store_bytes", [0, 1 << 20])
def test_chunked_full_softmax_under_bf16_autocast_stays_close(store_bytes: int) -> None:
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(40, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (40,), generator=gen)
    ref = F.cross_entropy(hidden @ weight.T, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = full_softmax_cross_entropy(hidden, weight, targets, 64, store_bytes)
    grads = torch.autograd.grad(got, (hidden, weight))
    assert got.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=5e-2, atol=5e-3)

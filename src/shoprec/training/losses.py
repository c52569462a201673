"""Next-item losses: GRU4Rec's sampled losses, SASRec's full / sampled softmax and gBCE.

Conventions: every loss returns the mean over rows (positions); GRU4Rec-style score matrices
``(B, C)`` hold the positive of row ``i`` in column ``i`` (the mini-batch targets come first,
then the shared negatives), as in Hidasi et al., ICLR 2016, Sec. 3.1.2.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "bpr_max_loss",
    "cross_entropy_logq_loss",
    "full_softmax_cross_entropy",
    "gbce_beta",
    "gbce_loss",
    "sampled_softmax_loss",
]


def _diag_mask(scores: torch.Tensor) -> torch.Tensor:
    b, c = scores.shape
    return torch.eye(b, c, dtype=torch.bool, device=scores.device)  # (B, C)


def cross_entropy_logq_loss(
    scores: torch.Tensor, log_q: torch.Tensor | None = None, logq: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy over the mini-batch columns, positive of row ``i`` in column ``i``.

    With ``logq > 0`` the logits are corrected to ``r_ij - logq * log Q(j)`` where ``log_q``
    ``(C,)`` is the log proposal weight of column ``j`` (logQ correction of sampled softmax,
    Bengio & Senécal 2008; used by GRU4Rec since v2.x, Hidasi & Czapp, RecSys 2023, whose
    per-column weights are :func:`shoprec.data.negatives.gru4rec_log_q`). Every column is
    corrected, the positive (diagonal) one included.

    >>> round(float(cross_entropy_logq_loss(torch.zeros(2, 4))), 4)  # log(4)
    1.3863
    """
    if log_q is not None and logq != 0.0:
        scores = scores - logq * log_q.unsqueeze(0)  # (B, C)
    logp = scores.log_softmax(dim=1)  # (B, C)
    return -logp.diagonal().mean()


def bpr_max_loss(scores: torch.Tensor, bpreg: float = 1.0) -> torch.Tensor:
    """BPR-max with score regularization (Hidasi & Karatzoglou, CIKM 2018, Eq. 7 and 8).

    For row ``i`` with positive ``r_i = scores[i, i]`` and negatives ``r_j`` (all other columns),
    ``s_j = softmax_{j != i}(r_j)`` and
    ``L_i = -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j**2``.
    The softmax weights are not detached (as in the official implementation).
    """
    diag = _diag_mask(scores)  # (B, C)
    weights = scores.masked_fill(diag, float("-inf")).softmax(dim=1)  # (B, C), 0 on diag
    pos = scores.diagonal().unsqueeze(1)  # (B, 1)
    ranking = -torch.log((torch.sigmoid(pos - scores) * weights).sum(dim=1) + 1e-24)  # (B,)
    reg = (weights * scores.square()).sum(dim=1)  # (B,)
    return (ranking + bpreg * reg).mean()


def sampled_softmax_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    pos_log_q: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
    logq: float = 1.0,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax over ``[positive, K negatives]`` with logQ correction.

    ``pos (N,)``, ``neg (N, K)`` logits; ``pos_log_q (N,)`` / ``neg_log_q (K,)`` or ``(N, K)``
    are log proposal probabilities; every logit ``r`` becomes ``r - logq * log Q``
    (Jean et al., ACL 2015; Yi et al., RecSys 2019). ``neg_mask (N, K)`` marks valid
    negatives (False = accidental hit of the positive, removed).
    """
    if logq != 0.0 and pos_log_q is not None and neg_log_q is not None:
        pos = pos - logq * pos_log_q
        neg = neg - logq * (neg_log_q if neg_log_q.dim() == 2 else neg_log_q.unsqueeze(0))
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (N, 1 + K)
    return -logits.log_softmax(dim=1)[:, 0].mean()


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gBCE's ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``, ``alpha = k / (|I| - 1)``.

    Petrov & Macdonald, RecSys 2023, Eq. 11 and 13: ``t = 0`` gives ``beta = 1`` (plain BCE),
    ``t = 1`` gives ``beta = alpha`` (fully calibrated to the sampling rate).

    >>> gbce_beta(10, 101, 0.0), gbce_beta(10, 101, 1.0)
    (1.0, 0.1)
    """
    if n_items < 2 or n_negatives < 1:
        raise ValueError("gBCE needs at least 2 items and 1 negative")
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    pos: torch.Tensor, neg: torch.Tensor, beta: float, neg_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Generalised BCE (Petrov & Macdonald, RecSys 2023, Eq. 10).

    ``L = -1/(k+1) * (log sigmoid(s+)**beta + sum_j log(1 - sigmoid(s_j)))`` per position,
    averaged over positions; ``pos (N,)``, ``neg (N, K)``; ``neg_mask (N, K)`` False drops an
    accidental hit from the sum (the normaliser stays ``k + 1``).
    """
    k = neg.shape[1]
    pos_term = beta * F.softplus(-pos)  # (N,)  = -beta * log sigmoid(s+)
    neg_terms = F.softplus(neg)  # (N, K) = -log(1 - sigmoid(s_j))
    if neg_mask is not None:
        neg_terms = neg_terms * neg_mask
    return ((pos_term + neg_terms.sum(dim=1)) / (k + 1)).mean()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``hidden @ weight.T`` without the ``(N, V)`` logit matrix.

    The catalogue is processed in chunks of ``chunk`` items with an online logsumexp, so each
    chunk's work stays in cache (the idea of Wijmans et al., "Cut Your Losses in
    Large-Vocabulary Language Models", ICLR 2025). The forward keeps each chunk's
    ``exp(logit - chunk max)`` when the ``(N, V)`` total fits in ``store_bytes``; the backward
    then only rescales them (one matmul and one ``exp`` pass fewer than recomputing the logits,
    which it does otherwise). Under CPU/CUDA autocast the matmuls run (and the kept values are
    stored) in the autocast dtype, e.g. bfloat16; the logsumexp and all accumulations stay in
    float32.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        store_bytes: int,
    ) -> torch.Tensor:
        device = hidden.device.type
        base = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else base
        n, v = hidden.shape[0], weight.shape[0]
        itemsize = torch.empty((), dtype=dtype).element_size()
        store = any(ctx.needs_input_grad[:2]) and n * v * itemsize <= store_bytes
        kept: list[torch.Tensor] = []  # per chunk (N, c): exp(logit - chunk max)
        maxes: list[torch.Tensor] = []  # per chunk (N,): the chunk max
        with torch.autocast(device_type=device, enabled=False):
            hidden, weight = hidden.to(base), weight.to(base)
            h, w_all = hidden.to(dtype), weight.to(dtype)  # matmul operands
            run_max = torch.full((n,), float("-inf"), dtype=base, device=hidden.device)  # (N,)
            run_sum = torch.zeros((n,), dtype=base, device=hidden.device)  # (N,)
            for start in range(0, v, chunk):
                logits = (h @ w_all[start : start + chunk].T).to(base)  # (N, c)
                chunk_max = logits.amax(dim=1)  # (N,)
                e = logits.sub_(chunk_max.unsqueeze(1)).exp_()  # (N, c) in (0, 1]
                new_max = torch.maximum(run_max, chunk_max)
                run_sum = (
                    run_sum * (run_max - new_max).exp_()
                    + e.sum(dim=1) * (chunk_max - new_max).exp_()
                )
                run_max = new_max
                if store:
                    kept.append(e.to(dtype))
                    maxes.append(chunk_max)
            lse = run_max + run_sum.log()  # (N,) online logsumexp
            target_logit = (hidden * weight[targets]).sum(dim=1)  # (N,)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        ctx.compute_dtype = dtype
        ctx.kept, ctx.maxes = kept, maxes
        return (lse - target_logit).mean()

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk: int = ctx.chunk
        dtype: torch.dtype = ctx.compute_dtype
        kept: list[torch.Tensor] = ctx.kept
        maxes: list[torch.Tensor] = ctx.maxes
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            scale = grad_out.to(hidden.dtype) / hidden.shape[0]
            h, w_all = hidden.to(dtype), weight.to(dtype)
            grad_h = torch.zeros_like(hidden) if need_h else None  # (N, D)
            grad_w = torch.empty_like(weight) if need_w else None  # (V, D)
            for k, start in enumerate(range(0, weight.shape[0], chunk)):
                w = w_all[start : start + chunk]  # (c, D)
                if kept:  # p = exp(logit - chunk max) * exp(chunk max - lse) * g
                    factor = ((maxes[k] - lse).exp_() * scale).unsqueeze(1)  # (N, 1)
                    p = kept[k].mul_(factor.to(dtype))  # (N, c)
                else:  # p = exp(logit - lse) * g, logits recomputed
                    logits = (h @ w.T).to(hidden.dtype)  # (N, c)
                    p = logits.sub_(lse.unsqueeze(1)).exp_().mul_(scale).to(dtype)
                if grad_h is not None:
                    grad_h += p @ w
                if grad_w is not None:
                    grad_w[start : start + chunk] = p.T @ h
            if grad_h is not None:
                grad_h.sub_(weight[targets] * scale)
            if grad_w is not None:
                grad_w.index_add_(0, targets, hidden * -scale)
        ctx.kept, ctx.maxes = [], []  # consumed (scaled in place): free them now
        return grad_h, grad_w, None, None, None


def full_softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 1024,
    store_bytes: int = 1 << 30,
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(hidden @ weight.T)`` at ``targets``, memory-efficiently.

    ``hidden (N, D)``, ``weight (V, D)`` (the whole catalogue), ``targets (N,)`` in ``0..V-1``.
    Equal to ``F.cross_entropy(hidden @ weight.T, targets)`` (the full-softmax SASRec loss of
    Klenitskiy & Vasilev, RecSys 2023) but never builds the ``(N, V)`` logits in one piece;
    up to ``store_bytes`` of per-chunk softmax numerators are kept for the backward
    (``store_bytes = 0``: recompute them, the least memory).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out: torch.Tensor = _ChunkedSoftmaxCE.apply(hidden, weight, targets, chunk, store_bytes)
    return out

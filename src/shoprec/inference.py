"""The recommender the storefront serves: a next-item bundle plus filters, fallbacks and reasons.

Offline evaluation scores index tensors; a storefront speaks original item ids, has shoppers
nobody has seen, carts, and wants to say *why* an item is shown. :class:`Recommender` is that
layer, over any :class:`~shoprec.models.base.NextItemModel` (it only calls ``score``):

* ids <-> ``item_idx`` through the bundle's item table; unknown ids are ignored (a new
  product is not an error, it is just something the model cannot use yet);
* a shopper with no known item gets the most popular items ("popular now"), and a model that
  ranks fewer than ``k`` items is topped up the same way, so a rail is never empty;
* every model recommendation says "because you viewed X", X being the session item most related
  to it by item co-occurrence (``bundle.aux["neighbour_idx"/"neighbour_weight"]``, built by
  :func:`build_item_neighbours`); without neighbours the reason is generic; an item of the
  session itself (a reminder, when viewed items are not excluded) says "viewed in this
  session";
* cart add-ons come from cart/purchase co-occurrence (``aux["cart_neighbour_*"]``, built by
  :func:`build_cart_neighbours`), then from the model's next-item scores for the cart;
* :meth:`Recommender.next_items_batch` scores many sessions in one ``score`` call, which the
  service's micro-batcher uses under load;
* for models that score by a dot product with an item matrix (GRU4Rec, SASRec) the top ``k``
  is found without a full-precision pass over the catalogue (:class:`DotScorer`): an int8
  (or bfloat16) pass with a proven error bound picks the few items that can be in the top
  ``k``, and only those are scored in float32. Same items as ranking ``model.score`` (up to
  float32 rounding), a fraction of the memory traffic (the item matrix dominated the cost);
* a GRU4Rec's session states can be cached (:class:`SessionStates`): a session that grows by
  one click costs one GRU step, with bit-identical results.

:class:`ChurnScorer` is a thin adapter over ``shoprec.churn.score_customers`` that the service
uses only when a churn bundle is configured.
"""

from __future__ import annotations

import importlib
import math
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from shoprec import schema
from shoprec.errors import ShoprecError
from shoprec.export import Bundle
from shoprec.models.base import left_pad

__all__ = [
    "CART_REASON",
    "GENERIC_REASON",
    "POPULAR_REASON",
    "SEEN_REASON",
    "ChurnDriver",
    "ChurnRisk",
    "ChurnScorer",
    "ChurnUnavailable",
    "DotScorer",
    "Recommendation",
    "Recommender",
    "SessionStates",
    "build_cart_neighbours",
    "build_item_neighbours",
]

POPULAR_REASON = "popular now"
GENERIC_REASON = "picked for this session"
SEEN_REASON = "viewed in this session"  # a recommended item the shopper already viewed
CART_REASON = "goes with your cart"

NEIGHBOUR_IDX = "neighbour_idx"
NEIGHBOUR_WEIGHT = "neighbour_weight"
CART_NEIGHBOUR_IDX = "cart_neighbour_idx"
CART_NEIGHBOUR_WEIGHT = "cart_neighbour_weight"


def viewed_reason(item_id: str) -> str:
    return f"because you viewed {item_id}"


def bought_with_reason(item_id: str) -> str:
    return f"often bought with {item_id}"


def goes_with_reason(item_id: str) -> str:
    return f"goes with {item_id}"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item. ``score`` orders items within one list only (model scores,
    co-occurrence weights and popularity counts are different scales); ``fallback`` marks an
    item that came from popularity rather than from the shopper's own items."""

    item_id: str
    score: float
    reason: str
    fallback: bool = False


# --- item neighbours (co-occurrence) ---
def _cooccurrence(
    sessions: Sequence[np.ndarray], n_items: int, top_n: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-normalised co-occurrence of items within ``window`` positions of each other.

    A pair counts once per session however often it repeats; the weight of (a, b) is
    ``sessions with both / sqrt(sessions with a * sessions with b)`` so that a reason points to
    the *related* item rather than to the most popular one (item-based CF, Sarwar et al. 2001).
    Everything is vectorised over one concatenated array: one pass per window offset.
    """
    idx_out = torch.zeros((n_items + 1, top_n), dtype=torch.long)
    w_out = torch.zeros((n_items + 1, top_n), dtype=torch.float32)
    lens = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    if lens.sum() == 0 or top_n <= 0:
        return idx_out, w_out
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    sid = np.repeat(np.arange(len(sessions), dtype=np.int64), lens)
    keep = (flat > 0) & (flat <= n_items)
    flat, sid = flat[keep], sid[keep]
    pairs = []
    for d in range(1, min(window, int(lens.max()) - 1) + 1):
        a, b = flat[:-d], flat[d:]
        same = (sid[:-d] == sid[d:]) & (a != b)
        s, a, b = sid[:-d][same], a[same], b[same]
        pairs.append(np.stack([s, a, b], axis=1))
        pairs.append(np.stack([s, b, a], axis=1))
    if not pairs:
        return idx_out, w_out
    triples = np.unique(np.concatenate(pairs), axis=0)  # (M, 3): one per (session, a, b)
    if len(triples) == 0:
        return idx_out, w_out
    ab = triples[:, 1] * (n_items + 1) + triples[:, 2]
    keys, co = np.unique(ab, return_counts=True)
    a, b = keys // (n_items + 1), keys % (n_items + 1)
    support = np.bincount(
        np.unique(np.stack([sid, flat], axis=1), axis=0)[:, 1], minlength=n_items + 1
    )
    weight = co / np.sqrt(support[a] * support[b])
    order = np.lexsort((b, -weight, a))  # per row a: heaviest first, ties by item index
    a, b, weight = a[order], b[order], weight[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    counts = np.diff(np.r_[starts, len(a)])
    rank = np.arange(len(a)) - np.repeat(starts, counts)
    top = rank < top_n
    rows, cols = torch.from_numpy(a[top]), torch.from_numpy(rank[top])
    idx_out[rows, cols] = torch.from_numpy(b[top])
    w_out[rows, cols] = torch.from_numpy(weight[top].astype(np.float32))
    return idx_out, w_out


def build_item_neighbours(
    sessions: list[np.ndarray], n_items: int, top_n: int = 50, window: int = 5
) -> dict[str, torch.Tensor]:
    """Top ``top_n`` co-viewed items per item, for "because you viewed X" and add-on fallbacks.

    ``sessions`` hold item indices (1..n_items, train sessions); the result goes into a bundle's
    ``aux``: ``neighbour_idx`` ``(n_items + 1, top_n)`` long (0 = no neighbour) and
    ``neighbour_weight`` ``(n_items + 1, top_n)`` float, heaviest first.

    >>> nb = build_item_neighbours([np.array([1, 2, 3]), np.array([1, 2])], n_items=3, top_n=2)
    >>> nb["neighbour_idx"].tolist()
    [[0, 0], [2, 3], [1, 3], [1, 2]]
    """
    idx, weight = _cooccurrence(sessions, n_items, top_n, window)
    return {NEIGHBOUR_IDX: idx, NEIGHBOUR_WEIGHT: weight}


def build_cart_neighbours(
    baskets: list[np.ndarray], n_items: int, top_n: int = 50, window: int = 20
) -> dict[str, torch.Tensor]:
    """Top ``top_n`` items carted or bought together, per item: the cart add-on source.

    ``baskets`` hold the item indices of a session's cart and purchase events; the keys are
    ``cart_neighbour_idx`` / ``cart_neighbour_weight`` with the shapes of
    :func:`build_item_neighbours` (a wider window: order within a basket carries little meaning).
    """
    idx, weight = _cooccurrence(baskets, n_items, top_n, window)
    return {CART_NEIGHBOUR_IDX: idx, CART_NEIGHBOUR_WEIGHT: weight}


# --- the recommender ---
@dataclass
class _Neighbours:
    idx: torch.Tensor  # (n_items + 1, top_n) long
    weight: torch.Tensor  # (n_items + 1, top_n) float

    def __post_init__(self) -> None:
        # numpy views for the per-request work: a few small numpy ops cost microseconds, the
        # same torch ops tens of microseconds each (dispatcher overhead)
        self.idx_np: np.ndarray = self.idx.numpy()
        self.weight_np: np.ndarray = self.weight.numpy()

    @classmethod
    def from_aux(
        cls, aux: dict[str, torch.Tensor], idx_key: str, w_key: str, n_items: int
    ) -> _Neighbours | None:
        idx, weight = aux.get(idx_key), aux.get(w_key)
        if idx is None or weight is None:
            return None
        if idx.dim() != 2 or idx.shape != weight.shape or idx.shape[0] != n_items + 1:
            return None  # a bundle from another item index: better no reasons than wrong ones
        return cls(idx.long(), weight.float())

    def relation(self, anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Weight between each anchor and each target, in either neighbour direction.

        ``anchors`` (A,), ``targets`` (R,) -> (A, R); 0 where neither lists the other.
        """
        fwd = self.idx_np[anchors][:, :, None] == targets[None, None, :]  # (A, top_n, R)
        w_fwd = (fwd * self.weight_np[anchors][:, :, None]).max(axis=1)  # (A, R)
        back = self.idx_np[targets][:, :, None] == anchors[None, None, :]  # (R, top_n, A)
        w_back = (back * self.weight_np[targets][:, :, None]).max(axis=1)  # (R, A)
        return np.maximum(w_fwd, w_back.T)


# bfloat16 keeps 8 significant bits: unit roundoff u = 2^-8. A bf16 dot product of bf16-rounded
# inputs, accumulated in float32 and rounded to bf16, is within (2u + u^2 + H 2^-24) * sum|v_j w_j|
# + u |result| of the exact one; with sum|v_j w_j| <= |v| |w| (Cauchy-Schwarz) the error is at
# most COARSE_SLACK * |v| |w| (+ the accumulation term), with one u to spare.
COARSE_SLACK = 4 * 2.0**-8

# int8 coarse scores: a session vector, scaled by a power of two into [-1, 1], is rounded to
# multiples of 1/INT8_LEVELS: integers -63..63, stored as uint8 1..127 (zero point 64). 7 bits
# keep every pair of uint8 x int8 products inside int16, so no x86 kernel can saturate.
INT8_LEVELS = 63
INT8_ZERO_POINT = 64
# the int8 kernel's own float rounding (int32 -> float, two scale multiplies): a few 2^-24 of
# |u'| |W~_i|; the load-time check allows 2^-20, the bound uses 2^-18
INT8_KERNEL_TOL = 2.0**-20
INT8_KERNEL_SLACK = 2.0**-18
# the float32 re-scoring (the reference the top k is exact for) sums ``dim`` products: its
# rounding is at most dim 2^-24 |v| |W_i|; the bound uses twice that
F32_DOT_SLACK = 2.0**-23
# norms and bound terms are computed in float64 from float32 data, then rounded to float32:
# 2^-10 more covers every such rounding many times over
NORM_SPARE = 1 + 2.0**-10


class _Bf16Coarse:
    """Coarse scores ``v @ W.T`` from a bfloat16 copy of ``W`` (half the float32 bytes), each
    within ``|v| * slack_i`` of the exact product (``COARSE_SLACK``)."""

    kind = "bf16"

    def __init__(self, weight: torch.Tensor) -> None:
        dim = weight.shape[1]
        self.matrix = weight.to(torch.bfloat16)  # (N+1, H)
        slack = COARSE_SLACK + dim * F32_DOT_SLACK  # + the float32 re-scoring's own rounding
        self.slack = torch.linalg.vector_norm(weight, dim=1) * slack  # (N+1,)

    def scores(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse (B, N+1), radius (B, N+1))``: ``|coarse - v @ W.T| <= radius``."""
        coarse = torch.mm(v.to(torch.bfloat16), self.matrix.T).to(torch.float32)
        radius = torch.outer(torch.linalg.vector_norm(v, dim=1), self.slack)
        return coarse, radius


class _Int8Coarse:
    """Coarse scores ``v @ W.T`` from an int8 copy of ``W`` (a quarter of the float32 bytes: 22 MB
    for 43k x 512, which stays in this machine's 32 MB L3) with fbgemm's int8 GEMM (AVX-512 VNNI).

    Quantisation, both sides known exactly to this class:

    * ``W_i ~ W~_i = s_i q_i``: per row, symmetric, ``s_i = max|W_i| / 127``; the residual norm
      ``|W_i - W~_i|`` is computed once at load (float64);
    * ``v = alpha u``, ``alpha`` a power of two with ``|u|_inf <= 1`` (so the scaling is exact),
      and ``u ~ u' = (1/63) q``, ``q`` integers in [-63, 63]; the residual ``e = u - u'`` is
      computed per request.

    The kernel returns ``u' . W~_i`` up to its float rounding (int32 accumulation is exact), so

        |v . W_i - alpha (u' . W~_i)| <= alpha (|u' . (W_i - W~_i)| + |e . W_i|)
                                      <= alpha (|u'| |W_i - W~_i| + |e| |W_i|)

    by Cauchy-Schwarz, plus ``INT8_KERNEL_SLACK alpha |u'| |W~_i|`` for the kernel's float
    rounding. That the kernel computes exactly ``u' . W~_i`` is checked at load, on probe vectors
    (extreme ones included), to ``INT8_KERNEL_TOL`` (16x tighter than the bound assumes); a
    kernel that fails the check, or a torch without it, makes :class:`DotScorer` use bfloat16.
    """

    kind = "int8"

    def __init__(self, weight: torch.Tensor) -> None:
        rows, dim = weight.shape
        amax = weight.abs().amax(dim=1)  # (N+1,)
        scales = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        with warnings.catch_warnings():  # torch's quantized tensors are deprecated, still there
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(
                weight, scales.double(), torch.zeros(rows, dtype=torch.long), 0, torch.qint8
            )
            self.packed = torch.ops.quantized.linear_prepack(qw, None)
        self.act_scale = float(np.float32(1.0 / INT8_LEVELS))  # what the kernel holds (float32)
        q_int = qw.int_repr()  # (N+1, H) int8
        w_scale = qw.q_per_channel_scales().to(torch.float32).double()  # as the kernel uses it
        w_norm = torch.empty(rows, dtype=torch.float64)
        deq_norm = torch.empty(rows, dtype=torch.float64)
        err_norm = torch.empty(rows, dtype=torch.float64)
        self._probe_u = self._probes(dim)  # (P, H) float64, entries multiples of 1/63
        probe_ref = torch.empty(self._probe_u.shape[0], rows, dtype=torch.float64)
        for lo in range(0, rows, 8192):  # float64 in chunks: no 4x-sized copy of W at once
            hi = min(rows, lo + 8192)
            w64 = weight[lo:hi].double()
            deq = q_int[lo:hi].double() * w_scale[lo:hi, None]  # W~ (rows, H)
            w_norm[lo:hi] = torch.linalg.vector_norm(w64, dim=1)
            deq_norm[lo:hi] = torch.linalg.vector_norm(deq, dim=1)
            err_norm[lo:hi] = torch.linalg.vector_norm(w64 - deq, dim=1)
            probe_ref[:, lo:hi] = self._probe_u @ deq.T
        # radius = alpha|u'| * p_quant + (alpha|e| * NORM_SPARE + |v| dim 2^-23) * p_w
        self.p_quant = ((err_norm + INT8_KERNEL_SLACK * deq_norm) * NORM_SPARE).float()
        self.p_w = (w_norm * NORM_SPARE).float()
        self.dim = dim
        self._check(probe_ref, deq_norm)

    @staticmethod
    def _probes(dim: int) -> torch.Tensor:
        """Session-vector probes on the activation grid: random ones and the extremes (all
        +1, all -1, alternating), where a saturating or differently-rounding kernel would show."""
        gen = torch.Generator().manual_seed(0)
        rand = torch.randint(-INT8_LEVELS, INT8_LEVELS + 1, (4, dim), generator=gen)
        ones = torch.full((1, dim), INT8_LEVELS)
        alt = ones * torch.tensor([1, -1]).repeat(dim // 2 + 1)[:dim]
        q = torch.cat([rand, ones, -ones, alt]).double()
        return q * float(np.float32(1.0 / INT8_LEVELS))

    def _check(self, probe_ref: torch.Tensor, deq_norm: torch.Tensor) -> None:
        got = self._kernel(self._probe_u.float()).double()  # (P, N+1)
        u_norm = torch.linalg.vector_norm(self._probe_u, dim=1, keepdim=True)  # (P, 1)
        tol = INT8_KERNEL_TOL * u_norm * deq_norm + 1e-30
        if not bool(((got - probe_ref).abs() <= tol).all()):
            raise RuntimeError("the int8 kernel does not compute the dequantised product")

    def _kernel(self, u_grid: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            u_grid, self.act_scale, INT8_ZERO_POINT, self.packed
        )
        return out

    def scores(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse (B, N+1), radius (B, N+1))``: ``|coarse - v @ W.T| <= radius``."""
        v64 = v.numpy().astype(np.float64)  # (B, H); small per-request work in numpy
        amax = np.abs(v64).max(axis=1)  # (B,)
        alpha = np.ldexp(1.0, np.frexp(amax)[1])  # a power of two > amax (1 for a zero row)
        u = v64 / alpha[:, None]  # exact: |u| < 1
        q = np.rint(u * INT8_LEVELS)  # integers in [-63, 63]
        u_grid = q * self.act_scale  # float64 value of the grid point (exact: q * float32)
        coarse = self._kernel(torch.from_numpy(u_grid.astype(np.float32)))  # (B, N+1)
        coarse.mul_(torch.from_numpy(alpha.astype(np.float32))[:, None])  # exact: powers of two
        a_quant = alpha * np.linalg.norm(u_grid, axis=1)
        a_w = alpha * np.linalg.norm(u - u_grid, axis=1) * NORM_SPARE
        a_w += np.linalg.norm(v64, axis=1) * (self.dim * F32_DOT_SLACK)
        radius = torch.outer(torch.from_numpy(a_quant.astype(np.float32)), self.p_quant)
        radius.addcmul_(torch.from_numpy(a_w.astype(np.float32))[:, None], self.p_w[None, :])
        return coarse, radius


def _coarse_scorer(weight: torch.Tensor, kind: str) -> _Bf16Coarse | _Int8Coarse:
    """``kind``: "int8", "bf16", or "auto" (int8 where its kernel exists and passes its check)."""
    if kind not in ("auto", "int8", "bf16"):
        raise ValueError(f"coarse must be auto, int8 or bf16, got {kind!r}")
    if kind != "bf16":
        try:
            return _Int8Coarse(weight)
        except (RuntimeError, AttributeError, NotImplementedError):
            if kind == "int8":
                raise
    return _Bf16Coarse(weight)


class DotScorer:
    """Exact top ``k`` of ``scores = v @ W.T + b`` without a float32 pass over the catalogue.

    ``score`` of a GRU4Rec or SASRec is a session vector ``v (B, H)`` times the item matrix
    ``W (N+1, H)``: for a lone session that is a matrix-vector product, bound by reading ``W``
    from memory (88 MB in float32 for 43k items x 512). Here, per request:

    1. ``v`` in float32, as ``score`` computes it (the model's own code);
    2. coarse scores from an int8 copy of ``W`` (:class:`_Int8Coarse`, a quarter of the bytes,
       VNNI kernel) or, where that kernel is missing, a bfloat16 copy (:class:`_Bf16Coarse`),
       each within a proven radius ``r_i`` of the float32 score (plus ``2^-21 |b_i|`` for the
       float32 rounding of adding the bias);
    3. the candidates: items whose upper bound ``coarse + r`` reaches the ``k``-th largest lower
       bound ``coarse - r`` among items not blocked; every item of the true top ``k`` is one;
    4. their float32 scores ``W_i . v + b_i``; the top ``k`` of those (ties: lower index first).

    So the result is the top ``k`` of the float32 scores, as ranking ``model.score`` would give,
    up to float32 rounding (a different summation order; it can only swap items whose scores
    agree to ~1e-6). Candidates are typically a few dozen items.
    """

    def __init__(
        self,
        vectors: Callable[[torch.Tensor], torch.Tensor],
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        coarse: str = "auto",
    ) -> None:
        self.vectors = vectors
        self.weight = weight.detach().to(torch.float32).contiguous()  # (N+1, H)
        rows = self.weight.shape[0]
        self.bias = (
            torch.zeros(rows)
            if bias is None
            else bias.detach().to(torch.float32).reshape(rows).contiguous()
        )  # (N+1,)
        self.coarse = _coarse_scorer(self.weight, coarse)
        # adding the bias in float32 (here and in the exact scores) rounds at 2^-24 |score|
        self.bias_slack = self.bias.abs() * 2.0**-21 + torch.finfo(torch.float32).tiny  # (N+1,)
        self.last_candidates = 0  # candidates of the last row scored (diagnostics, benchmarks)

    @classmethod
    def of(cls, model: Any, coarse: str = "auto") -> DotScorer | None:
        """The scorer for ``model`` when it scores by a dot product we can reproduce, else None
        (the recommender then ranks ``model.score`` as it is)."""
        if not (
            callable(getattr(model, "session_vectors", None))
            and callable(getattr(model, "output_items", None))
        ):
            return None
        weight, bias = model.output_items()
        vectors: Callable[[torch.Tensor], torch.Tensor] = model.session_vectors
        finite = torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())
        if not bool(finite):  # no bound holds for NaN / inf weights
            return None
        return cls(vectors, weight, bias, coarse)

    def bounds(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lower, upper)``, each ``(B, N+1)``, around the float32 scores of finite ``v``."""
        coarse, radius = self.coarse.scores(v)
        coarse += self.bias
        radius += self.bias_slack
        lower = coarse - radius
        return lower, coarse.add_(radius)

    def top(
        self, prefixes: torch.Tensor, need: Sequence[int], blocked: Sequence[Collection[int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row of LEFT-padded ``prefixes (B, T)``: the ``need[b]`` best item indices (never
        0, never one in ``blocked[b]``) and their float32 scores, best first."""
        with torch.inference_mode():
            return self.top_of_vectors(self.vectors(prefixes).to(torch.float32), need, blocked)

    def top_of_vectors(
        self, v: torch.Tensor, need: Sequence[int], blocked: Sequence[Collection[int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top` from the session vectors ``v (B, H)`` themselves."""
        with torch.inference_mode():
            finite = torch.isfinite(v).all(dim=1).tolist()
            if not all(finite):  # such a row gets no model items (as NaN scores would)
                v = torch.where(torch.isfinite(v), v, 0.0)
            v = v.contiguous()
            lower, upper = self.bounds(v)  # (B, N+1) each
            for b, cols in enumerate(blocked):
                out = [0, *cols]
                lower[b, out] = -math.inf
                upper[b, out] = -math.inf
            width = max(1, min(max(need), lower.shape[1] - 1))
            kth = lower.topk(width, dim=1, sorted=True).values  # (B, width)
            results: list[tuple[np.ndarray, np.ndarray]] = []
            for b, n in enumerate(need):
                if n <= 0 or not finite[b]:
                    results.append((np.empty(0, np.int64), np.empty(0, np.float32)))
                    continue
                # fewer than n items left: the threshold is -inf, and every item not blocked
                # (upper > -inf) is a candidate
                threshold = kth[b, min(n, width) - 1].clamp(min=torch.finfo(torch.float32).min)
                cand = torch.nonzero(upper[b] >= threshold).squeeze(1)  # (C,)
                exact = torch.mv(self.weight[cand], v[b]) + self.bias[cand]  # (C,)
                self.last_candidates = int(cand.numel())
                idx, sc = cand.numpy(), exact.numpy()
                keep = np.isfinite(sc)
                idx, sc = idx[keep], sc[keep]
                order = np.lexsort((idx, -sc))[:n]  # best first, ties by index
                results.append((idx[order], sc[order]))
            return results


class SessionStates:
    """GRU session vectors for serving, resumed from cached states where a session was seen.

    A storefront sends a session again after every click, one item longer. For a model with
    ``advance`` (GRU4Rec), the state after ``items[:-1]`` plus one GRU step is the state after
    ``items``; this keeps the last ``capacity`` sessions' states (LRU, keyed by the exact item
    sequence the model sees) and runs a request from the longest of: its full sequence (no
    step), its sequence minus the newest item (one step), nothing (every step).

    ``advance`` runs each session on its own (matrix-vector products), so a row gets the same
    bits whatever else is in the batch and wherever it resumes: a cached answer is
    bit-identical to an uncached one (tested). With capacity 0 every request runs every step,
    still through ``advance`` (with the model's input-gate table, ``prepare_serving``).

    ``matrix_from > 0``: a batch with at least that many sessions to run steps them all at
    once, as matrix products (``advance(..., matrix_from=...)``; about half the GRU's cost
    for 8 sessions). Their states, cached ones included, then agree with a lone run only up
    to float32 rounding, which can only swap items whose scores agree to ~1e-6.
    """

    def __init__(self, model: Any, capacity: int = 0, matrix_from: int = 0) -> None:
        self.model = model
        if callable(getattr(model, "prepare_serving", None)):
            model.prepare_serving()
        self.capacity = max(0, capacity)
        self.matrix_from = max(0, matrix_from)
        self._cache: OrderedDict[tuple[int, ...], list[torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # the model thread and the event loop (cart add-ons)
        self.lookups: Counter[str] = Counter()  # "session", "prefix", "miss" (diagnostics)

    @classmethod
    def of(cls, model: Any, capacity: int = 0, matrix_from: int = 0) -> SessionStates | None:
        """For a model that can resume a session (``advance`` + ``init_hidden``), else None."""
        if callable(getattr(model, "advance", None)) and callable(
            getattr(model, "init_hidden", None)
        ):
            return cls(model, capacity, matrix_from)
        return None

    def _get(self, key: tuple[int, ...]) -> list[torch.Tensor] | None:
        with self._lock:
            state = self._cache.get(key)
            if state is not None:
                self._cache.move_to_end(key)
            return state

    def _put(self, key: tuple[int, ...], state: list[torch.Tensor]) -> None:
        with self._lock:
            self._cache[key] = state
            self._cache.move_to_end(key)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)

    def vectors(self, sessions: Sequence[Sequence[int]]) -> torch.Tensor:
        """The top layer's state ``(B, H)`` after each session (item indices, oldest first,
        already cut to the model's window; each non-empty)."""
        keys = [tuple(int(i) for i in s) for s in sessions]
        starts: list[list[torch.Tensor] | None] = []
        rest: list[tuple[int, ...]] = []
        for key in keys:
            state = self._get(key) if self.capacity else None
            if state is not None:
                starts.append(state)
                rest.append(())
                self.lookups["session"] += 1
                continue
            state = self._get(key[:-1]) if self.capacity and len(key) > 1 else None
            starts.append(state)
            rest.append(key[-1:] if state is not None else key)
            self.lookups["prefix" if state is not None else "miss"] += 1
        with torch.inference_mode():
            hidden: list[torch.Tensor] = self.model.init_hidden(len(keys))
            for b, state in enumerate(starts):
                if state is not None:
                    for layer, h in enumerate(state):
                        hidden[layer][b] = h
            if any(rest):
                prefixes = left_pad(list(rest))
                if self.matrix_from:
                    hidden = self.model.advance(prefixes, hidden, matrix_from=self.matrix_from)
                else:
                    hidden = self.model.advance(prefixes, hidden)
            if self.capacity:
                for b, key in enumerate(keys):
                    if rest[b]:
                        self._put(key, [h[b].clone() for h in hidden])
            return hidden[-1]


@dataclass
class _Ranked:
    """Per-session working state while a list is assembled."""

    exclude: set[int]
    k: int
    out: list[Recommendation] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)

    def full(self) -> bool:
        return len(self.out) >= self.k

    def add(self, idx: int, rec: Recommendation) -> None:
        if idx in self.taken or idx in self.exclude or self.full():
            return
        self.taken.add(idx)
        self.out.append(rec)


class Recommender:
    """Next items and cart add-ons in original item ids, over a loaded bundle."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        max_session_len: int = 50,
        fast_top_k: bool = True,
        coarse: str = "auto",
        state_cache: int = 0,
        matrix_gru_from: int = 0,
    ) -> None:
        """``fast_top_k=False`` ranks ``model.score`` over the whole catalogue even when a
        :class:`DotScorer` could be used (for comparisons); ``coarse`` picks the DotScorer's
        coarse pass: "int8", "bf16" or "auto" (int8 where its kernel works here);
        ``state_cache`` is how many sessions' GRU states :class:`SessionStates` keeps (0: none;
        only with the fast path); ``matrix_gru_from`` is the smallest batch whose GRU steps run
        as matrix products (0: never; see :class:`SessionStates`)."""
        self.bundle = bundle
        self.model = bundle.model
        self.max_session_len = max_session_len
        items = bundle.items.sort(schema.ITEM_IDX)
        self.n_items = int(self.model.n_items)
        self.item_ids: list[str] = [""] * (self.n_items + 1)
        counts = np.zeros(self.n_items + 1, dtype=np.float64)
        has_count = schema.ITEM_COUNT in items.columns
        for row in items.iter_rows(named=True):
            i = int(row[schema.ITEM_IDX])
            if 1 <= i <= self.n_items:
                self.item_ids[i] = str(row[schema.ITEM_ID])
                counts[i] = float(row[schema.ITEM_COUNT] or 0) if has_count else 0.0
        self.index: dict[str, int] = {iid: i for i, iid in enumerate(self.item_ids) if i > 0}
        # Most popular first; ties by item index so the fallback is deterministic.
        order = np.lexsort((np.arange(self.n_items + 1), -counts))
        self._popular: list[int] = [int(i) for i in order if i > 0 and self.item_ids[i]]
        self._counts = counts
        self.neighbours = _Neighbours.from_aux(
            bundle.aux, NEIGHBOUR_IDX, NEIGHBOUR_WEIGHT, self.n_items
        )
        self.cart_neighbours = _Neighbours.from_aux(
            bundle.aux, CART_NEIGHBOUR_IDX, CART_NEIGHBOUR_WEIGHT, self.n_items
        )
        # Built once per model: the float32 item matrix, its int8 (or bf16) copy and row norms.
        self.dot: DotScorer | None = DotScorer.of(self.model, coarse) if fast_top_k else None
        # GRU4Rec: session vectors through the batch-invariant ``advance``, optionally cached.
        self.states: SessionStates | None = (
            SessionStates.of(self.model, state_cache, matrix_gru_from)
            if self.dot is not None
            else None
        )

    # --- ids ---
    def to_idx(self, item_ids: Sequence[str]) -> list[int]:
        """Known items as indices, in order; unknown ids are dropped."""
        return [i for i in (self.index.get(x, 0) for x in item_ids) if i]

    def unknown(self, item_ids: Sequence[str]) -> list[str]:
        """The ids the model does not know, in order of first appearance."""
        return list(dict.fromkeys(x for x in item_ids if x not in self.index))

    # --- popularity ---
    def _fill_popular(self, ranked: _Ranked) -> None:
        for i in self._popular:
            if ranked.full():
                return
            ranked.add(
                i, Recommendation(self.item_ids[i], float(self._counts[i]), POPULAR_REASON, True)
            )

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[Recommendation]:
        """The ``k`` most popular items (train support), skipping ``exclude``."""
        ranked = _Ranked(exclude=set(self.to_idx(list(exclude))), k=k)
        self._fill_popular(ranked)
        return ranked.out

    # --- next items ---
    def next_items(
        self, session_items: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Recommendation]:
        """The ``k`` best next items for a session (oldest item first), never one in ``exclude``."""
        return self.next_items_batch([session_items], k, [exclude])[0]

    def next_items_batch(
        self,
        sessions: Sequence[Sequence[str]],
        k: int | Sequence[int],
        excludes: Sequence[Collection[str]] | None = None,
    ) -> list[list[Recommendation]]:
        """:meth:`next_items` for many sessions with one ``model.score`` call.

        Padding does not change a prefix's scores (the NextItemModel contract), so batching is
        exact: each list equals the one its session would get alone.
        """
        ks = [k] * len(sessions) if isinstance(k, int) else list(k)
        excl = list(excludes) if excludes is not None else [()] * len(sessions)
        known = [self.to_idx(list(s)) for s in sessions]
        ranked = [
            _Ranked(exclude=set(self.to_idx(list(e))), k=max(0, kk))
            for e, kk in zip(excl, ks, strict=True)
        ]
        self._rank_with_model(known, ranked, viewed_reason, GENERIC_REASON)
        for rk in ranked:
            self._fill_popular(rk)
        return [rk.out for rk in ranked]

    def _rank_with_model(
        self,
        known: list[list[int]],
        ranked: list[_Ranked],
        because: Callable[[str], str],
        generic: str,
    ) -> None:
        """Add the model's best remaining items to each list (one ``score`` call for all)."""
        known = [s[-self.max_session_len :] for s in known]
        rows = [r for r, s in enumerate(known) if s and not ranked[r].full()]
        if not rows:
            return
        need = [ranked[r].k - len(ranked[r].out) for r in rows]
        blocked = [ranked[r].exclude | ranked[r].taken for r in rows]
        if self.dot is not None and self.states is not None:
            v = self.states.vectors([known[r] for r in rows])
            tops = self.dot.top_of_vectors(v, need, blocked)
        else:
            prefixes = left_pad([known[r] for r in rows], self.max_session_len)  # (b, T)
            if self.dot is not None:
                tops = self.dot.top(prefixes, need, blocked)
            else:
                tops = self._top_of_scores(prefixes, need, blocked)
        for (idx, scores), r in zip(tops, rows, strict=True):
            reasons = self._reasons(known[r], idx, because, generic)
            for i, sc, why in zip(idx.tolist(), scores.tolist(), reasons, strict=True):
                ranked[r].add(i, Recommendation(self.item_ids[i], float(sc), why))

    def _top_of_scores(
        self, prefixes: torch.Tensor, need: list[int], blocked: list[set[int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Any model: rank its full ``score`` rows (NaN and blocked items never come out)."""
        # no_grad rather than inference_mode: the result is edited in place below.
        with torch.no_grad():
            scores = self.model.score(prefixes).float().clone()  # (b, n_items + 1)
        scores[torch.isnan(scores)] = -math.inf
        scores[:, 0] = -math.inf
        for b, cols in enumerate(blocked):
            if cols:
                scores[b, list(cols)] = -math.inf
        top_s, top_i = scores.topk(min(max(need), self.n_items), dim=1)  # (b, k_top)
        out = []
        for b, n in enumerate(need):
            s_row, i_row = top_s[b, :n].numpy(), top_i[b, :n].numpy()
            finite = np.isfinite(s_row)
            out.append((i_row[finite], s_row[finite]))
        return out

    def _reasons(
        self,
        session: list[int],
        recs: np.ndarray,
        because: Callable[[str], str],
        generic: str,
        neighbours: _Neighbours | None = None,
    ) -> list[str]:
        """For each recommended index, the reason naming its most related session item.

        Ties go to the most recent session item (a shopper remembers the last thing they saw).
        An item of the session itself is a reminder: :data:`SEEN_REASON`.
        """
        nb = neighbours or self.neighbours
        if nb is None or not session or recs.size == 0:
            reasons = [generic] * int(recs.size)
        else:
            anchors = np.fromiter(dict.fromkeys(reversed(session)), dtype=np.int64)  # newest 1st
            rel = nb.relation(anchors, recs.astype(np.int64, copy=False))  # (A, R)
            best_a = rel.argmax(axis=0)  # first max = most recent anchor
            best_w = rel[best_a, np.arange(rel.shape[1])]
            reasons = [
                because(self.item_ids[int(anchors[a])]) if w > 0 else generic
                for w, a in zip(best_w.tolist(), best_a.tolist(), strict=True)
            ]
        seen = set(session)
        return [
            SEEN_REASON if i in seen else why for i, why in zip(recs.tolist(), reasons, strict=True)
        ]

    # --- cart add-ons ---
    def cart_addons(
        self, cart_items: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Recommendation]:
        """Items that complement the cart; never an item in the cart or in ``exclude``.

        Sources in order: cart/purchase co-occurrence ("often bought with X"), the model's
        next-item scores for the cart as a session, popularity.
        """
        cart = list(dict.fromkeys(self.to_idx(list(cart_items))))
        ranked = _Ranked(exclude=set(cart) | set(self.to_idx(list(exclude))), k=max(0, k))
        if cart and self.cart_neighbours is not None and not ranked.full():
            nb = self.cart_neighbours
            anchors = torch.tensor(cart, dtype=torch.long)
            total = torch.zeros(self.n_items + 1)  # (n_items + 1,)
            total.index_add_(0, nb.idx[anchors].flatten(), nb.weight[anchors].flatten())
            total[0] = 0.0
            total[list(ranked.exclude)] = 0.0
            n_pos = int((total > 0).sum())
            if n_pos:
                top_w, top_i = total.topk(min(n_pos, ranked.k))
                reasons = self._reasons(cart, top_i.numpy(), bought_with_reason, CART_REASON, nb)
                for i, w, why in zip(top_i.tolist(), top_w.tolist(), reasons, strict=True):
                    ranked.add(i, Recommendation(self.item_ids[i], float(w), why))
        # The cart as a session: what the model expects next, explained by co-views.
        self._rank_with_model([cart], [ranked], goes_with_reason, CART_REASON)
        self._fill_popular(ranked)
        return ranked.out


# --- churn ---
class ChurnUnavailable(ShoprecError):
    """No churn model can be used (none configured, or the churn package is not installed)."""


@dataclass(frozen=True, slots=True)
class ChurnDriver:
    """A feature that moves this customer's churn risk; ``contribution`` is in log-odds,
    positive pushes towards churn."""

    feature: str
    contribution: float | None


@dataclass(frozen=True, slots=True)
class ChurnRisk:
    user_id: str
    probability: float
    segment: str
    drivers: list[ChurnDriver]


class ChurnScorer:
    """Thin adapter over ``shoprec.churn.score_customers(bundle, events, at)``.

    The churn package is imported lazily and optionally, so a service without a churn model
    (or a build without the package) still starts. The bundle is loaded once here when the
    package offers ``ChurnBundle.load``, not on every request.
    """

    def __init__(self, bundle_dir: str | Path) -> None:
        self.bundle_dir = Path(bundle_dir)
        if not self.bundle_dir.is_dir():
            raise ChurnUnavailable(f"churn bundle {self.bundle_dir} is not a folder")
        try:
            module = importlib.import_module("shoprec.churn")
            self._score = module.score_customers
        except (ImportError, AttributeError) as exc:
            raise ChurnUnavailable(f"the churn package is not available: {exc}") from exc
        loader = getattr(getattr(module, "ChurnBundle", None), "load", None)
        self._bundle: Any = loader(self.bundle_dir) if loader is not None else self.bundle_dir

    def score(self, events: pl.DataFrame, at: datetime) -> list[ChurnRisk]:
        """Churn risk as of ``at`` of every user with an event before ``at``."""
        frame: pl.DataFrame = self._score(self._bundle, events, at)
        n_drivers = sum(1 for c in frame.columns if c.startswith("driver_"))
        out = []
        for row in frame.iter_rows(named=True):
            drivers = [
                ChurnDriver(str(row[f"driver_{k}"]), _finite(row.get(f"contribution_{k}")))
                for k in range(1, n_drivers + 1)
                if row.get(f"driver_{k}") is not None
            ]
            out.append(
                ChurnRisk(
                    user_id=str(row[schema.USER_ID]),
                    probability=float(row["probability"]),
                    segment=str(row.get("segment") or ""),
                    drivers=drivers,
                )
            )
        return out


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None

"""Full-catalogue next-item metrics over *pessimistic* ranks.

Every metric here is a pure function of the target's rank in the whole catalogue, where

    rank = 1 + #(other real items whose score >= the target's score)

(padding column 0 excluded; ``inf`` when the target is unscorable, e.g. unseen in train). Ties
are therefore resolved against the model: a target tied with two other items has rank 3, and a
target that shares the score 0 with most of the catalogue is a miss. This is the strict
protocol argued for by Krichene & Rendle, "On Sampled Metrics for Item Recommendation" (KDD 2020:
rank against the full catalogue, never a sample) and the "pessimistic" tie rule of Sun et al.,
"Are We Evaluating Rigorously?" (RecSys 2020). Definitions follow the SR-GNN / session-rec
conventions (Wu et al., AAAI 2019; Ludewig et al., RecSys 2019): HR@K (= "P@20"/"Recall@20"
there), MRR@K and NDCG@K with one relevant item per case, averaged over ALL cases (an
unscorable target counts as a miss).

Beyond accuracy: catalogue coverage@K (share of the catalogue that appears in any top-K list,
Ludewig & Jannach 2018) and popularity@K, the mean train-popularity percentile of the items
recommended in the top-K lists (1.0 = only the most popular item; cf. the average
recommendation popularity of Abdollahpouri et al., 2019).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import torch

__all__ = [
    "CUTOFFS",
    "catalogue_coverage",
    "hit_rate",
    "mean_popularity",
    "mrr",
    "ndcg",
    "pessimistic_ranks",
    "popularity_percentiles",
    "rank_metrics",
    "top_k_items",
]

CUTOFFS: Final = (1, 5, 10, 20)


def _as_ranks(ranks: Iterable[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if np.isnan(arr).any():
        raise ValueError("ranks must not be NaN (use inf for an unscorable target)")
    if arr.size and arr.min() < 1:
        raise ValueError("ranks are 1-based: every rank must be >= 1 (inf for unscorable)")
    return arr


def hit_rate(ranks: Iterable[float] | np.ndarray, k: int) -> float:
    """HR@K: share of cases whose target ranks in the top K (``inf`` = miss).

    >>> hit_rate([1, 3, 25, float("inf")], 20)
    0.5
    >>> hit_rate([1, 3, 25, float("inf")], 1)
    0.25
    """
    arr = _as_ranks(ranks)
    if arr.size == 0:
        return 0.0
    return float(np.mean(arr <= k))


def mrr(ranks: Iterable[float] | np.ndarray, k: int) -> float:
    """MRR@K: mean of ``1/rank`` over all cases, 0 for ranks beyond K.

    >>> mrr([1, 4, 25, float("inf")], 20)  # (1 + 1/4 + 0 + 0) / 4
    0.3125
    >>> mrr([3], 2)
    0.0
    """
    arr = _as_ranks(ranks)
    if arr.size == 0:
        return 0.0
    return float(np.mean(np.where(arr <= k, 1.0 / arr, 0.0)))


def ndcg(ranks: Iterable[float] | np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: mean of ``1/log2(rank + 1)``, 0 beyond K.

    >>> ndcg([1, 3, float("inf")], 20)  # (1 + 1/log2(4) + 0) / 3 = 1.5 / 3
    0.5
    >>> round(ndcg([2], 5), 6)  # 1 / log2(3)
    0.63093
    """
    arr = _as_ranks(ranks)
    if arr.size == 0:
        return 0.0
    return float(np.mean(np.where(arr <= k, 1.0 / np.log2(arr + 1.0), 0.0)))


def rank_metrics(
    ranks: Iterable[float] | np.ndarray, cutoffs: Sequence[int] = CUTOFFS, prefix: str = ""
) -> dict[str, float]:
    """HR/MRR/NDCG at every cutoff, keyed ``{prefix}hr@K`` etc.

    >>> m = rank_metrics([1, 3, 3, float("inf")], cutoffs=(1, 5), prefix="test/")
    >>> {k: round(v, 4) for k, v in m.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'test/hr@1': 0.25, 'test/mrr@1': 0.25, 'test/ndcg@1': 0.25,
     'test/hr@5': 0.75, 'test/mrr@5': 0.4167, 'test/ndcg@5': 0.5}
    """
    arr = _as_ranks(ranks)
    out: dict[str, float] = {}
    for k in cutoffs:
        out[f"{prefix}hr@{k}"] = hit_rate(arr, k)
        out[f"{prefix}mrr@{k}"] = mrr(arr, k)
        out[f"{prefix}ndcg@{k}"] = ndcg(arr, k)
    return out


def catalogue_coverage(recommended: np.ndarray | Iterable[int], n_items: int) -> float:
    """Distinct real items (1..n_items) among the recommended ones, over ``n_items``.

    ``recommended`` holds item indices (any shape: e.g. the ``(n_cases, 20)`` top-20 lists);
    0 (padding) is ignored.

    >>> catalogue_coverage([[1, 2, 3], [3, 2, 1], [1, 4, 0]], n_items=8)
    0.5
    """
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    arr = np.asarray(recommended, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() > n_items):
        raise ValueError(f"recommended item indices must lie in 0..{n_items}")
    distinct = np.unique(arr)
    return float(np.count_nonzero(distinct > 0) / n_items)


def popularity_percentiles(counts: np.ndarray | Sequence[int]) -> np.ndarray:
    """Train-popularity percentile per item index: ``#(items with count <= c) / n_items``.

    ``counts[0]`` is the padding slot and ignored (its percentile is 0). The most popular
    item gets 1.0; tied counts share a percentile.

    >>> popularity_percentiles([0, 5, 1, 5, 3]).tolist()
    [0.0, 1.0, 0.25, 1.0, 0.5]
    """
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    real = c[1:]
    n = real.size
    out = np.zeros_like(c)
    if n == 0:
        return out
    ordered = np.sort(real)
    out[1:] = np.searchsorted(ordered, real, side="right") / n
    return out


def mean_popularity(recommended: np.ndarray | Iterable[int], percentiles: np.ndarray) -> float:
    """Mean popularity percentile of the recommended items (padding entries ignored).

    >>> pct = popularity_percentiles([0, 5, 1, 5, 3])
    >>> mean_popularity([[1, 2], [4, 3]], pct)  # (1.0 + 0.25 + 0.5 + 1.0) / 4
    0.6875
    """
    arr = np.asarray(recommended, dtype=np.int64).reshape(-1)
    arr = arr[arr > 0]
    if arr.size == 0:
        return 0.0
    return float(np.asarray(percentiles, dtype=np.float64)[arr].mean())


def _usable(buffer: torch.Tensor | None, size: int, device: torch.device) -> bool:
    return (
        buffer is not None
        and buffer.dtype == torch.float32
        and buffer.device == device
        and buffer.numel() >= size
    )


def pessimistic_ranks(
    scores: torch.Tensor, targets: torch.Tensor, buffer: torch.Tensor | None = None
) -> torch.Tensor:
    """Full-catalogue pessimistic rank of each target: ``1 + #(other items scoring >= it)``.

    ``scores`` is ``(B, n_items + 1)`` with column 0 the padding (never counted), ``targets``
    ``(B,)`` item indices where 0 marks an unscorable target (rank ``inf``). Works on any
    chunk of cases, so a caller never needs the full ``(n_cases, n_items)`` matrix. A target
    scored ``-inf`` (e.g. excluded) ties with every other item: rank ``n_items``. A NaN target
    score is an error. ``buffer``: optional float32 scratch of at least ``(B, n_items)``,
    reused across chunks (counting through a float buffer is several times faster than
    summing a bool tensor; the counts stay exact below 2**24 items).

    >>> s = torch.tensor([[float("-inf"), 0.5, 0.2, 0.5, 0.5, 0.9],
    ...                   [float("-inf"), 0.0, 0.0, 0.0, 0.3, 0.0]])
    >>> pessimistic_ranks(s, torch.tensor([1, 4])).tolist()  # tied with 2 others, 1 above
    [4.0, 1.0]
    >>> pessimistic_ranks(s, torch.tensor([2, 0])).tolist()
    [5.0, inf]
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError("expected scores (B, n_items + 1) and targets (B,)")
    n_rows, width = scores.shape
    if width - 1 >= 2**24:
        raise ValueError("catalogues of 2**24 items or more are not supported")
    tgt = targets.to(device=scores.device, dtype=torch.long)
    scorable = tgt > 0
    target_scores = scores.gather(1, tgt.clamp(min=0).unsqueeze(1))
    if bool(torch.isnan(target_scores[scorable]).any()):
        raise ValueError("a target's score is NaN")
    if not _usable(buffer, n_rows * (width - 1), scores.device):
        buffer = torch.empty(n_rows * (width - 1), dtype=torch.float32, device=scores.device)
    assert buffer is not None
    flag = buffer.view(-1)[: n_rows * (width - 1)].view(n_rows, width - 1)
    torch.ge(scores[:, 1:], target_scores, out=flag)
    ranks = flag.sum(dim=1, dtype=torch.float32).to(torch.float64)  # counts the target itself
    return torch.where(scorable, ranks, torch.full_like(ranks, float("inf")))


def _lowest_equal_columns(
    sub: torch.Tensor, value: torch.Tensor, k: int, buffer: torch.Tensor | None
) -> torch.Tensor:
    """The ``k`` lowest columns of each row of ``sub`` whose score equals ``value`` (R, 1).

    Each row must hold at least ``k`` such columns. A column prefix is tried first (a tie
    that reaches far beyond the top-K is a large one, e.g. the zeros of a kNN model, and
    fills the prefix), the whole row only where the prefix is not enough.
    """
    n_rows, n = sub.shape
    out = torch.empty((n_rows, k), dtype=torch.long, device=sub.device)
    todo = torch.arange(n_rows, device=sub.device)
    width = min(n, 1024)
    if width < k:
        width = n
    while todo.numel():
        rows = sub if todo.numel() == n_rows else sub.index_select(0, todo)
        size = todo.numel() * width
        if not _usable(buffer, size, sub.device):
            buffer = torch.empty(size, dtype=torch.float32, device=sub.device)
        assert buffer is not None
        key = buffer.view(-1)[:size].view(todo.numel(), width)
        # key = column where the score equals the value, >= 2**24 elsewhere
        torch.ne(rows[:, :width], value.index_select(0, todo), out=key)
        key.mul_(float(2**24)).add_(torch.arange(width, dtype=torch.float32, device=sub.device))
        lowest_vals, lowest = torch.topk(key, k, dim=1, largest=False, sorted=True)
        if width == n:
            out[todo] = lowest
            break
        done = lowest_vals[:, -1] < 2**24
        out[todo[done]] = lowest[done]
        todo = todo[~done]
        width = n
    return out


def top_k_items(scores: torch.Tensor, k: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Column indices of the ``k`` best scores per row, deterministic under ties.

    Ordered by score descending, equal scores by column ascending, independent of how the
    rows are batched. ``torch.topk`` alone leaves the order (and, at the K-th place, the
    choice) of tied items unspecified. One ``topk`` of ``3k`` finds the rows with a tie across
    the K-th place and, usually, the whole tie; only rows whose tie reaches beyond it are
    scanned again. ``buffer``: optional float32 scratch of at least ``scores.numel()``.

    >>> s = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0, -1.0]])
    >>> top_k_items(s, 3).tolist()
    [[1, 3, 0], [0, 1, 2]]
    """
    if scores.dim() != 2:
        raise ValueError("scores must be (B, n)")
    n_rows, n = scores.shape
    if n >= 2**24:
        raise ValueError("catalogues of 2**24 items or more are not supported")
    k = min(k, n)
    if k <= 0 or n_rows == 0:
        return torch.zeros((n_rows, max(k, 0)), dtype=torch.long, device=scores.device)
    wide = min(n, 3 * k)
    vals, idx = torch.topk(scores, wide, dim=1, largest=True, sorted=True)
    top = idx[:, :k].clone()
    if n > k:
        tied = torch.nonzero(vals[:, k] == vals[:, k - 1]).reshape(-1)
        if tied.numel():
            t_vals = vals.index_select(0, tied)
            t_idx = idx.index_select(0, tied)
            kth = t_vals[:, k - 1 : k]
            n_gt = (t_vals[:, :k] > kth).sum(dim=1, keepdim=True)  # all of them are in the top k
            # the tie ends inside the wide top (or the wide top is the whole row): pick there
            inside = (t_vals[:, -1] != kth[:, 0]) | (wide == n)
            eq_key = torch.where(t_vals == kth, t_idx, t_idx + n)  # equal items first, by column
            lowest_eq = torch.sort(eq_key, dim=1).values[:, :k]
            out_rows = torch.nonzero(~inside).reshape(-1)
            if out_rows.numel():
                sub = scores.index_select(0, tied.index_select(0, out_rows))
                lowest_eq[out_rows] = _lowest_equal_columns(
                    sub, kth.index_select(0, out_rows), k, buffer
                )
            j = torch.arange(k, device=scores.device).unsqueeze(0)
            from_eq = lowest_eq.gather(1, (j - n_gt).clamp(min=0))
            top[tied] = torch.where(j < n_gt, t_idx[:, :k], from_eq)
    # order: score descending, column ascending (two stable sorts of k entries)
    top, _ = torch.sort(top, dim=1, stable=True)
    order = torch.sort(scores.gather(1, top), dim=1, descending=True, stable=True).indices
    return top.gather(1, order)

"""Negative item sampling from popularity^alpha, drawn in big precomputed chunks.

GRU4Rec (Hidasi & Karatzoglou, CIKM 2018, Sec. 3.1 "Adding negative samples") adds
``n_sample`` extra negatives shared by the whole mini-batch, drawn from
``supp(i)^alpha`` (``sample_alpha``: 0 = uniform, 1 = popularity) and generated in large
chunks ahead of time because drawing a few thousand samples per step is slow; the official
implementation caches ``sample_cache_max_size`` samples and binary-searches a cumulative
distribution. :class:`PopularitySampler` does the same with ``torch.searchsorted``.

It also exposes the sampling distribution (``probs`` / ``log_probs``) so a loss can apply the
logQ correction (Bengio & Senécal 2008; Yi et al., RecSys 2019), and :func:`gru4rec_log_q` for
GRU4Rec's per-column correction (in-batch targets by ``log supp``, the extra popularity^alpha
samples by ``alpha * log supp``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PopularitySampler", "gru4rec_log_q", "item_counts", "log_support"]


def item_counts(sessions: list[np.ndarray], n_items: int) -> np.ndarray:
    """Train support of every item index ``0..n_items`` (index 0, padding, gets 0).

    >>> item_counts([np.array([1, 2, 2]), np.array([3])], 3).tolist()
    [0, 1, 2, 1]
    """
    if not sessions:
        return np.zeros(n_items + 1, dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    counts = np.bincount(flat, minlength=n_items + 1)[: n_items + 1].astype(np.int64)
    counts[0] = 0
    return counts


class PopularitySampler:
    """Draws item indices ``i`` in ``1..n_items`` with probability ``∝ count[i]**alpha``.

    ``alpha = 0`` is uniform over all real items (also those with zero train support);
    ``alpha > 0`` never draws an item with zero support. Index 0 (padding) is never drawn.
    Samples come from a cache of ``ceil(chunk_size / n_sample)`` rows of ``n_sample`` items,
    regenerated when used up (deterministic given ``seed``).
    """

    def __init__(
        self,
        counts: np.ndarray | torch.Tensor,
        alpha: float,
        n_sample: int,
        chunk_size: int = 1 << 22,
        seed: int = 0,
    ) -> None:
        c = torch.as_tensor(np.asarray(counts), dtype=torch.float64).clone()  # (n_items+1,)
        if c.ndim != 1 or c.numel() < 2:
            raise ValueError("counts must be a 1-D array over item indices 0..n_items")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if n_sample < 0:
            raise ValueError(f"n_sample must be >= 0, got {n_sample}")
        weights = torch.ones_like(c) if alpha == 0 else c.clamp(min=0.0).pow(alpha)
        weights[0] = 0.0
        total = float(weights.sum())
        if total <= 0:
            raise ValueError("no item has positive sampling weight")
        self.alpha = float(alpha)
        self.n_sample = int(n_sample)
        self.probs: torch.Tensor = weights / total  # (n_items+1,) float64, sums to 1
        self.log_probs: torch.Tensor = self.probs.log().float()  # (n_items+1,), -inf at 0
        cdf = self.probs.cumsum(0)
        cdf[-1] = 1.0
        self._cdf = cdf  # (n_items+1,)
        self._rows = max(1, -(-int(chunk_size) // max(1, self.n_sample)))
        self._gen = torch.Generator().manual_seed(int(seed))
        self._cache = torch.empty((0, self.n_sample), dtype=torch.long)
        self._pointer = 0

    @property
    def n_items(self) -> int:
        return int(self.probs.numel() - 1)

    def draw(self, n: int) -> torch.Tensor:
        """``n`` fresh independent samples (LongTensor ``(n,)``), bypassing the cache."""
        u = torch.rand(n, generator=self._gen, dtype=torch.float64)  # (n,)
        idx = torch.searchsorted(self._cdf, u, right=True)  # (n,) first cdf > u
        return idx.clamp_(max=self.n_items)

    def sample(self) -> torch.Tensor:
        """The next ``n_sample`` negatives (LongTensor ``(n_sample,)``) from the cache."""
        if self.n_sample == 0:
            return torch.empty(0, dtype=torch.long)
        if self._pointer >= self._cache.shape[0]:
            self._cache = self.draw(self._rows * self.n_sample).view(self._rows, self.n_sample)
            self._pointer = 0
        out = self._cache[self._pointer]  # (n_sample,)
        self._pointer += 1
        return out


def log_support(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``log supp(i)`` of every item index (float32 ``(n_items+1,)``, ``-inf`` where 0).

    The per-item table that :class:`shoprec.data.session_parallel.SessionParallelDataset`
    gathers into ``column_log_q`` for :func:`gru4rec_log_q` (float32, as the official ``P0``).

    >>> log_support(np.array([0, 1, 4])).exp().tolist()
    [0.0, 1.0, 4.0]
    """
    return torch.as_tensor(np.asarray(counts)).to(torch.float32).log()


def gru4rec_log_q(column_log_support: torch.Tensor, n_sampled: int, alpha: float) -> torch.Tensor:
    """GRU4Rec's logQ weights ``(C,)`` of its output columns ``[in-batch targets, samples]``.

    ``column_log_support (C,)`` is ``log supp(j)`` (train count) of each column; the last
    ``n_sampled`` columns are the extra shared negatives drawn from ``supp**alpha``, the others
    the mini-batch targets (which occur in proportion to ``supp``). As the official
    ``xe_loss_with_softmax`` (hidasib/GRU4Rec_PyTorch_Official, ``gru4rec_pytorch.py``):
    ``O - logq * log(cat([P0[Y[:M]], P0[Y[M:]] ** sample_alpha]))`` with ``P0`` the item
    counts, i.e. ``log supp(j)`` for an in-batch column and ``alpha * log supp(j)`` for a
    sampled one (``0`` when ``alpha = 0``, also for an item without support, as ``0**0 = 1``).
    The target column of a row is one of the in-batch columns, so it is corrected too.

    >>> q = gru4rec_log_q(torch.tensor([4.0, 1.0, 4.0, 9.0]).log(), n_sampled=2, alpha=0.5)
    >>> [round(v, 4) for v in q.exp().tolist()]
    [4.0, 1.0, 2.0, 3.0]
    """
    n_inbatch = column_log_support.shape[0] - n_sampled
    if n_sampled < 0 or n_inbatch < 0:
        raise ValueError(f"n_sampled={n_sampled} outside 0..{column_log_support.shape[0]}")
    sampled = column_log_support[n_inbatch:]  # (S,)
    sampled = sampled * alpha if alpha != 0 else torch.zeros_like(sampled)
    return torch.cat([column_log_support[:n_inbatch], sampled])  # (C,)

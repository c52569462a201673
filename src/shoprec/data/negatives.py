"""Negative item sampling from popularity^alpha, drawn in big precomputed chunks.

GRU4Rec (Hidasi & Karatzoglou, CIKM 2018, Sec. 3.1 "Adding negative samples") adds
``n_sample`` extra negatives shared by the whole mini-batch, drawn from
``supp(i)^alpha`` (``sample_alpha``: 0 = uniform, 1 = popularity) and generated in large
chunks ahead of time because drawing a few thousand samples per step is slow; the official
implementation caches ``sample_cache_max_size`` samples and binary-searches a cumulative
distribution. :class:`PopularitySampler` does the same with ``torch.searchsorted``.

It also exposes the sampling distribution (``probs`` / ``log_probs``) so a loss can apply the
logQ correction (Bengio & Senécal 2008; Yi et al., RecSys 2019), and :func:`mixture_log_q` for
GRU4Rec's mixed proposal (in-batch targets + popularity^alpha samples).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PopularitySampler", "item_counts", "mixture_log_q"]


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


def mixture_log_q(
    data_probs: torch.Tensor, sampler: PopularitySampler | None, n_inbatch: int
) -> torch.Tensor:
    """Log expected count of each item among GRU4Rec's output columns, per item ``(n_items+1,)``.

    The columns of a GRU4Rec mini-batch are ``n_inbatch`` targets (drawn from the data
    distribution ``data_probs``) plus ``sampler.n_sample`` draws from popularity^alpha, so an
    item's proposal weight is ``n_inbatch * p_data(i) + n_sample * p_alpha(i)``. Subtracting its
    log is the logQ correction of sampled softmax (Bengio & Senécal 2008); constants cancel in
    the softmax, so only the relative weights matter.
    """
    q = n_inbatch * data_probs.double()
    if sampler is not None and sampler.n_sample > 0:
        q = q + sampler.n_sample * sampler.probs
    return q.log().float()  # (n_items+1,); -inf where an item is never a column

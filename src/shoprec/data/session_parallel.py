"""Session-parallel mini-batches for GRU4Rec (Hidasi et al., ICLR 2016, Sec. 3.1.1, Fig. 2).

``B`` slots each walk through one session, one click per step: the input of a slot is the
item at its current position and the target is the next item of the same session. When a
slot's session has no more targets, the next unseen session takes that slot and the slot is
flagged in ``reset`` so the model zeroes exactly that row of its hidden state before the step.
When no unseen session is left, finished slots are dropped and the mini-batch shrinks (the
official implementation's behaviour), so every (input, target) pair of every session is
yielded exactly once; ``keep`` tells the consumer which rows of its carried state survive.

Sessions are stored once as a concatenated item array plus offsets; a step costs a handful of
vectorized numpy operations on ``B`` integers, nothing per session in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from shoprec.data.negatives import PopularitySampler

__all__ = [
    "SessionParallelBatch",
    "SessionParallelDataset",
    "iterate_session_parallel",
    "pack_sessions",
]


class SessionParallelBatch(NamedTuple):
    """One session-parallel step (``B`` may shrink at the end of an epoch)."""

    inputs: torch.Tensor  # (B,) item_idx at each slot's current position
    targets: torch.Tensor  # (B,) the next item of the same session
    reset: torch.Tensor  # (B,) bool: the slot's session starts at this step -> zero its state
    keep: torch.Tensor | None  # (B_prev,) bool: previous slots still present; None = all
    negatives: torch.Tensor  # (S,) extra shared negatives, S = n_sample (empty without sampler)
    column_log_q: torch.Tensor  # (B + S,) log training count of [targets, negatives] or empty


def pack_sessions(sessions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate sessions into ``(items (n_clicks,), offsets (n_sessions + 1,))``.

    >>> items, offsets = pack_sessions([np.array([1, 2]), np.array([3, 4, 5])])
    >>> items.tolist(), offsets.tolist()
    ([1, 2, 3, 4, 5], [0, 2, 5])
    """
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(sessions):
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    else:
        items = np.zeros(0, dtype=np.int64)
    return items, offsets


def iterate_session_parallel(
    items: np.ndarray,
    offsets: np.ndarray,
    batch_size: int,
    order: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(inputs (B,), targets (B,), reset (B,), keep (B_prev,) | None)`` numpy arrays.

    ``order`` is the order in which sessions are started (default: stored order, i.e. by
    session start time as in the official ``session_order='time'``). Sessions shorter than 2
    have no (input, target) pair and are skipped.

    >>> items, offsets = pack_sessions([np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7])])
    >>> [(i.tolist(), t.tolist(), r.tolist()) for i, t, r, _ in
    ...  iterate_session_parallel(items, offsets, 2)]
    [([1, 4], [2, 5], [True, True]), ([2, 6], [3, 7], [False, True])]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = offsets[1:] - offsets[:-1]
    sess_order = np.arange(len(lengths)) if order is None else np.asarray(order, dtype=np.int64)
    sess_order = sess_order[lengths[sess_order] >= 2]
    n_sessions = len(sess_order)
    if n_sessions == 0:
        return
    b = min(batch_size, n_sessions)
    pos = offsets[sess_order[:b]].copy()  # (B,) index of each slot's current input click
    end = offsets[sess_order[:b] + 1].copy()  # (B,) one past each slot's last click
    next_session = b
    reset = np.ones(b, dtype=bool)
    no_reset = np.zeros(b, dtype=bool)
    keep: np.ndarray | None = None
    while True:
        yield items[pos], items[pos + 1], reset, keep
        pos += 1
        finished = pos + 1 >= end  # (B,) no target left in the slot's session
        if not finished.any():
            reset, keep = no_reset, None
            continue
        fin = np.flatnonzero(finished)
        n_new = min(len(fin), n_sessions - next_session)
        refill = fin[:n_new]
        new = sess_order[next_session : next_session + n_new]
        next_session += n_new
        pos[refill] = offsets[new]
        end[refill] = offsets[new + 1]
        reset = np.zeros(b, dtype=bool)
        reset[refill] = True
        if n_new == len(fin):
            keep = None
            continue
        keep = np.ones(b, dtype=bool)  # (B_prev,)
        keep[fin[n_new:]] = False
        pos, end, reset = pos[keep], end[keep], reset[keep]
        b = len(pos)
        if b == 0:
            return
        no_reset = np.zeros(b, dtype=bool)


class SessionParallelDataset(IterableDataset[SessionParallelBatch]):
    """Iterable of :class:`SessionParallelBatch` for a ``DataLoader(batch_size=None)``.

    Each ``iter()`` is one epoch. With ``shuffle`` the session order is permuted per epoch
    from ``seed + epoch`` (deterministic); without it sessions start in stored order. When a
    ``sampler`` is given, each step carries ``sampler.n_sample`` shared negatives; with a
    ``log_q_table (n_items+1,)`` (``negatives.log_support``) each step carries the log training
    count of its columns ``[targets, negatives]``; the loss turns it into the official GRU4Rec
    logQ correction (``negatives.gru4rec_log_q``).
    """

    def __init__(
        self,
        sessions: Sequence[np.ndarray],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        sampler: PopularitySampler | None = None,
        log_q_table: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.items, self.offsets = pack_sessions(sessions)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.sampler = sampler
        self.log_q_table = log_q_table
        self.epoch = 0

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_pairs(self) -> int:
        """Number of (input, target) pairs in one epoch."""
        lengths = self.offsets[1:] - self.offsets[:-1]
        return int(np.clip(lengths - 1, 0, None).sum())

    def __iter__(self) -> Iterator[SessionParallelBatch]:
        order = None
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n_sessions)
        self.epoch += 1
        empty = torch.empty(0, dtype=torch.long)
        no_log_q = torch.empty(0)
        for inp, tgt, reset, keep in iterate_session_parallel(
            self.items, self.offsets, self.batch_size, order
        ):
            targets = torch.from_numpy(tgt)
            negatives = self.sampler.sample() if self.sampler is not None else empty
            log_q = no_log_q
            if self.log_q_table is not None:
                log_q = torch.cat([self.log_q_table[targets], self.log_q_table[negatives]])
            yield SessionParallelBatch(
                inputs=torch.from_numpy(inp),
                targets=targets,
                reset=torch.from_numpy(reset),
                keep=None if keep is None else torch.from_numpy(keep),
                negatives=negatives,
                column_log_q=log_q,
            )

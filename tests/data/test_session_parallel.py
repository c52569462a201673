"""Session-parallel iteration: every pair exactly once, resets exactly at session starts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoprec.data.negatives import PopularitySampler
from shoprec.data.session_parallel import (
    SessionParallelDataset,
    iterate_session_parallel,
    pack_sessions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unique_click_sessions(lengths: list[int]) -> list[np.ndarray]:
    """Sessions whose items are the global click numbers 1..n: an item identifies its click."""
    out, nxt = [], 1
    for n in lengths:
        out.append(np.arange(nxt, nxt + n, dtype=np.int64))
        nxt += n
    return out


def _check_stream(sessions: list[np.ndarray], steps: list[tuple], batch_size: int) -> None:
    expected = Counter((int(s[i]), int(s[i + 1])) for s in sessions for i in range(len(s) - 1))
    starts = {int(s[0]) for s in sessions if len(s) >= 2}
    seen: Counter[tuple[int, int]] = Counter()
    prev_targets: np.ndarray | None = None
    for step, (inp, tgt, reset, keep) in enumerate(steps):
        assert inp.shape == tgt.shape == reset.shape
        assert len(inp) <= batch_size
        seen.update(zip(inp.tolist(), tgt.tolist(), strict=True))
        # reset is True exactly where the input is the first click of a session
        assert reset.tolist() == [int(x) in starts for x in inp]
        if step == 0:
            assert keep is None and reset.all()
        else:
            assert prev_targets is not None
            carried = prev_targets if keep is None else prev_targets[keep]
            assert len(carried) == len(inp)
            # a slot that did not restart continues its own session: input = its last target
            np.testing.assert_array_equal(inp[~reset], carried[~reset])
        prev_targets = tgt
    assert seen == expected  # every (input, target) pair of every session exactly once


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=7), min_size=0, max_size=25),
    batch_size=st.integers(min_value=1, max_value=6),
    shuffle_seed=st.none() | st.integers(min_value=0, max_value=1000),
)
def test_every_pair_exactly_once_and_resets_at_starts(
    lengths: list[int], batch_size: int, shuffle_seed: int | None
) -> None:
    sessions = _unique_click_sessions(lengths)
    items, offsets = pack_sessions(sessions)
    order = None
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(sessions))
    steps = list(iterate_session_parallel(items, offsets, batch_size, order))
    _check_stream(sessions, steps, batch_size)


def test_official_order_and_tail_shrinking() -> None:
    # 3 slots; sessions start in stored order; the batch shrinks once no session is left
    sessions = _unique_click_sessions([3, 2, 4, 2])  # 1-3, 4-5, 6-9, 10-11
    items, offsets = pack_sessions(sessions)
    steps = list(iterate_session_parallel(items, offsets, 3))
    got = [
        (i.tolist(), t.tolist(), r.tolist(), None if k is None else k.tolist())
        for i, t, r, k in steps
    ]
    assert got == [
        ([1, 4, 6], [2, 5, 7], [True, True, True], None),
        ([2, 10, 7], [3, 11, 8], [False, True, False], None),
        ([8], [9], [False], [False, False, True]),
    ]


def test_dataset_shuffles_per_epoch_deterministically() -> None:
    sessions = _unique_click_sessions([2, 3, 4, 2, 5, 3, 2, 2])
    sampler = PopularitySampler(np.ones(28, dtype=np.int64), 0.0, n_sample=5, seed=1)

    def epoch_inputs(ds: SessionParallelDataset) -> list[list[int]]:
        return [b.inputs.tolist() for b in ds]

    a = SessionParallelDataset(sessions, 3, shuffle=True, seed=7, sampler=sampler)
    b = SessionParallelDataset(sessions, 3, shuffle=True, seed=7)
    first, second = epoch_inputs(a), epoch_inputs(a)
    assert first == epoch_inputs(b)
    assert first != second  # a new order every epoch
    batch = next(iter(a))
    assert batch.negatives.shape == (5,) and batch.column_log_q.numel() == 0
    assert batch.inputs.dtype == torch.long and batch.reset.dtype == torch.bool
    assert a.n_pairs == sum(len(s) - 1 for s in sessions)
    # without shuffling, the stream equals the plain iterator over stored order
    plain = SessionParallelDataset(sessions, 3)
    items, offsets = pack_sessions(sessions)
    ref = [i.tolist() for i, *_ in iterate_session_parallel(items, offsets, 3)]
    assert epoch_inputs(plain) == ref


def test_dataset_carries_log_q_of_columns() -> None:
    sessions = _unique_click_sessions([3, 3])
    table = torch.arange(7, dtype=torch.float32) / 10
    sampler = PopularitySampler(np.ones(7, dtype=np.int64), 0.0, n_sample=4, seed=0)
    ds = SessionParallelDataset(sessions, 2, sampler=sampler, log_q_table=table)
    batch = next(iter(ds))
    columns = torch.cat([batch.targets, batch.negatives])
    torch.testing.assert_close(batch.column_log_q, table[columns])

"""SASRec training sequences: truncation, left padding, shifted targets, length buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoprec.data.negatives import PopularitySampler
from shoprec.data.sequences import (
    LengthBucketSampler,
    SequenceCollator,
    SequenceDataset,
    build_sequences,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_build_sequences_truncates_to_last_max_len_plus_one() -> None:
    sessions = [np.array([5]), np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8])]
    seqs = build_sequences(sessions, max_len=3)
    assert [s.tolist() for s in seqs] == [[3, 4, 5, 6], [7, 8]]
    ds = SequenceDataset(sessions, max_len=3)
    assert len(ds) == 2 and ds.lengths().tolist() == [3, 1]
    with pytest.raises(ValueError):
        build_sequences(sessions, max_len=0)


def test_collate_left_pads_and_shifts_targets() -> None:
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9])]
    batch = SequenceCollator()(seqs)
    assert batch.inputs.tolist() == [[1, 2, 3], [0, 0, 5], [0, 7, 8]]
    assert batch.targets.tolist() == [[2, 3, 4], [0, 0, 6], [0, 8, 9]]
    # every real position's target is the next item of the same sequence
    for row, s in enumerate(seqs):
        n = len(s) - 1
        assert batch.inputs[row, -n:].tolist() == s[:-1].tolist()
        assert batch.targets[row, -n:].tolist() == s[1:].tolist()
    assert ((batch.inputs == 0) == (batch.targets == 0)).all()
    assert batch.negatives.numel() == 0 and batch.target_log_q.numel() == 0


def test_collate_with_sampler_carries_negatives_and_log_q() -> None:
    sampler = PopularitySampler(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), 1.0, n_sample=6)
    batch = SequenceCollator(sampler)([np.array([1, 2, 3]), np.array([4, 5])])
    assert batch.negatives.shape == (6,)
    torch.testing.assert_close(batch.negative_log_q, sampler.log_probs[batch.negatives])
    torch.testing.assert_close(batch.target_log_q, sampler.log_probs[batch.targets])


def test_length_buckets_cover_every_index_once_and_reduce_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.geometric(0.25, size=1000)
    sampler = LengthBucketSampler(lengths, batch_size=32, bucket_batches=8, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(1 <= len(b) <= 32 for b in batches)
    assert list(sampler) != batches  # reshuffled every epoch

    def padded_cells(bs: list[list[int]]) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in bs)

    plain = list(LengthBucketSampler(lengths, batch_size=32, bucket_batches=1, seed=1))
    assert sorted(i for b in plain for i in b) == list(range(1000))
    assert padded_cells(batches) < 0.8 * padded_cells(plain)

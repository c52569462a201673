"""Training sequences for SASRec (Kang & McAuley, ICDM 2018, Sec. III-A and III-F).

Each train session ``s_1..s_n`` becomes one sequence truncated to its last ``max_len + 1``
items; the input is ``s_1..s_{n-1}`` and the target at position ``t`` is ``s_{t+1}`` (shifted
targets: every position is trained to predict the next item). Batches are LEFT-padded with 0
(the most recent item last, as in the paper's fixed-length input), but only to the longest
sequence of the batch, not to ``max_len``; padded positions have target 0 and are excluded
from the loss. :class:`LengthBucketSampler` groups sequences of similar length into batches
(shuffled per epoch) so little compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from shoprec.data.negatives import PopularitySampler

__all__ = [
    "LengthBucketSampler",
    "SequenceBatch",
    "SequenceCollator",
    "SequenceDataset",
    "build_sequences",
]


class SequenceBatch(NamedTuple):
    """A left-padded batch of shifted sequences (0 = padding / no target)."""

    inputs: torch.Tensor  # (B, T) items s_1..s_{n-1}, left-padded
    targets: torch.Tensor  # (B, T) items s_2..s_n aligned with inputs, 0 where padded
    negatives: torch.Tensor  # (K,) shared sampled negatives (empty without a sampler)
    target_log_q: torch.Tensor  # (B, T) log sampling probability of each target, or empty
    negative_log_q: torch.Tensor  # (K,) log sampling probability of each negative, or empty


def build_sequences(sessions: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Keep sessions with at least 2 items, each truncated to its last ``max_len + 1`` items.

    >>> [s.tolist() for s in build_sequences([np.array([1]), np.array([1, 2, 3, 4])], 2)]
    [[2, 3, 4]]
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return [np.asarray(s[-(max_len + 1) :], dtype=np.int64) for s in sessions if len(s) >= 2]


class SequenceDataset(Dataset[np.ndarray]):
    """Training sequences (each an int64 array of ``2..max_len+1`` item indices)."""

    def __init__(self, sessions: Sequence[np.ndarray], max_len: int) -> None:
        self.sequences = build_sequences(sessions, max_len)
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.sequences[index]

    def lengths(self) -> np.ndarray:
        """Number of (input, target) positions of each sequence."""
        return np.fromiter((len(s) - 1 for s in self.sequences), dtype=np.int64)


class SequenceCollator:
    """``collate_fn``: list of sequences -> :class:`SequenceBatch`, padded to the batch maximum.

    With a ``sampler``, each batch also carries ``sampler.n_sample`` shared negatives and the
    sampler's log probabilities of targets and negatives (for the logQ correction).

    >>> b = SequenceCollator()([np.array([1, 2, 3]), np.array([4, 5])])
    >>> b.inputs.tolist(), b.targets.tolist()
    ([[1, 2], [0, 4]], [[2, 3], [0, 5]])
    """

    def __init__(self, sampler: PopularitySampler | None = None) -> None:
        self.sampler = sampler

    def __call__(self, sequences: Sequence[np.ndarray]) -> SequenceBatch:
        width = max((len(s) - 1 for s in sequences), default=1)
        full = np.zeros((len(sequences), width + 1), dtype=np.int64)  # (B, T+1)
        for row, s in enumerate(sequences):
            full[row, width + 1 - len(s) :] = s
        inputs = torch.from_numpy(full[:, :-1].copy())  # (B, T)
        targets = torch.from_numpy(full[:, 1:].copy())  # (B, T)
        targets[inputs == 0] = 0  # the first real item has no predecessor: not a target
        if self.sampler is None:
            empty = torch.empty(0)
            return SequenceBatch(inputs, targets, torch.empty(0, dtype=torch.long), empty, empty)
        negatives = self.sampler.sample()  # (K,)
        log_probs = self.sampler.log_probs
        return SequenceBatch(inputs, targets, negatives, log_probs[targets], log_probs[negatives])


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of indices grouped by similar length, in a new random order every epoch.

    Indices are shuffled (``seed + epoch``), cut into pools of ``batch_size * bucket_batches``,
    each pool is sorted by length and cut into batches, and the batches are shuffled.
    ``bucket_batches = 1`` gives plain shuffled batches. Every index appears exactly once.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, bucket_batches: int = 64, seed: int = 0
    ) -> None:
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError("batch_size and bucket_batches must be >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        n, b, pool = len(self.lengths), self.batch_size, self.batch_size * self.bucket_batches
        full, rest = divmod(n, pool)
        return full * (pool // b) + -(-rest // b)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        perm = rng.permutation(len(self.lengths))
        pool = self.batch_size * self.bucket_batches
        batches: list[np.ndarray] = []
        for start in range(0, len(perm), pool):
            chunk = perm[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(
                np.array_split(chunk, range(self.batch_size, len(chunk), self.batch_size))
            )
        for i in rng.permutation(len(batches)):
            yield batches[i].tolist()

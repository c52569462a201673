"""Data-parallel training across processes: Lightning DDP (gloo on CPU, NCCL on GPUs).

Turned on by config alone (``trainer.strategy: ddp``, ``trainer.devices: W``, and
``trainer.num_nodes`` for several machines). Lightning's ``ddp`` re-launches the running
script (or ``shoprec train ...``) once per extra process; every process runs ``fit`` up to the
end of training, and only global rank 0 evaluates and writes the bundle and ``metrics.json``.
(``ddp_spawn`` works too: the processes are spawned inside ``trainer.fit`` and the caller's
module gets rank 0's weights back, but the per-epoch history stays in the spawned processes.)

The regimes shard their own training data (Lightning's DistributedSampler is switched off with
``use_distributed_sampler=False``: neither regime is a plain map-style dataset). Every process
builds the *same global* stream of batches of ``W * b`` rows, where ``b`` is the configured
per-process ``training.batch_size`` (same seed, so the same order), and keeps its own share of
every global batch. So ``W`` processes with batch ``b`` take the optimizer steps of one process
with batch ``W * b``, on the same rows:

* Sequences (SASRec): :class:`ShardedBatchSampler` gives process ``r`` rows ``r, r + W, ...``
  of each global batch. DDP averages the per-process mean losses; the rows of a
  length-bucketed batch are sorted by length, so the shares hold nearly the same number of
  target positions and the average is within rounding of the global mean.
* Session-parallel (GRU4Rec): :class:`ShardedSessionParallel` gives process ``r`` the *slots*
  ``s`` of the global mini-batch with ``s % W == r``. A slot walks its sessions to the end, so
  each process walks a disjoint set of whole sessions and carries the hidden state of its own
  slots only. The other processes' targets of the step go in front of the shared sampled
  negatives, so each row is scored against all ``W * b - 1`` in-batch negatives as in one
  process (columns are item ids, the same everywhere: no communication). Each step carries
  the weight ``W * rows_here / rows_global`` for the loss, so the DDP average equals the global
  mean also at the end of an epoch, where the mini-batch shrinks unevenly; a process with no
  slot left then takes a zero-row step (DDP needs every process at every step). Up to
  floating-point order the updates are those of one process with batch ``W * b``.
* Validation is not sharded: every process scores all validation cases with the same weights,
  so the monitored metric is identical on every rank and checkpointing / early stopping agree
  without a cross-process reduction.

DDP all-reduces dense gradients only, so GRU4Rec's sparse item-row gradients are computed
dense under DDP and turned back into row-sparse ones before the optimizer step
(:func:`row_sparse_grads_`): Adagrad-with-momentum then updates exactly the rows some process
touched, as the single-process lazy update does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sized
from typing import Any, NamedTuple

import torch
from torch.utils.data import IterableDataset, Sampler

from shoprec.data.session_parallel import SessionParallelBatch

__all__ = [
    "ShardStep",
    "ShardedBatchSampler",
    "ShardedSessionParallel",
    "launched_as_rank_zero",
    "rank_and_world",
    "row_sparse_grads_",
    "shard_rows",
]

# Variables a launcher sets to say which process this is (Lightning's own list, plus the node).
_RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0, judged from the launcher's environment.

    Usable before any Trainer exists (e.g. to decide whether to open a tracking run): Lightning's
    ``ddp`` re-launches the script with ``LOCAL_RANK`` (and ``NODE_RANK`` on other machines);
    torchrun and SLURM set ``RANK`` / ``SLURM_PROCID``. A process started by hand is rank 0.

    >>> launched_as_rank_zero()
    True
    """
    for var in _RANK_VARS:
        if os.environ.get(var):
            return int(os.environ[var]) == 0
    node = int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or 0)
    return node == 0 and int(os.environ.get("LOCAL_RANK") or 0) == 0


def rank_and_world(trainer: Any | None) -> tuple[int, int]:
    """``(global_rank, world_size)`` of the Trainer a module or datamodule is attached to;
    ``(0, 1)`` without one (a loader built outside training).

    >>> rank_and_world(None)
    (0, 1)
    """
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def shard_rows(n: int, rank: int, world: int) -> list[int]:
    """Positions of this process's rows in a global batch of ``n`` rows.

    Rows ``rank, rank + world, ...``; a batch with fewer rows than processes gives every
    process one row (``rank % n``, a repeat), so every process has a batch at every step.

    >>> shard_rows(5, 0, 2), shard_rows(5, 1, 2), shard_rows(1, 1, 2)
    ([0, 2, 4], [1, 3], [0])
    """
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")
    if n <= 0:
        return []
    if n < world:
        return [rank % n]
    return list(range(rank, n, world))


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's share of every batch of a *global* batch sampler.

    ``batches`` must yield the same batches in the same order on every process (same seed,
    same epoch counter); build it with the global batch size ``world * batch_size``. Every
    process yields one batch per global batch, so all take the same number of steps.

    >>> [b for b in ShardedBatchSampler([[7, 3, 9, 1], [5]], rank=1, world=2)]
    [[3, 1], [5]]
    """

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int) -> None:
        shard_rows(1, rank, world)  # validates rank/world
        self.batches = batches
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        if not isinstance(self.batches, Sized):
            raise TypeError(f"{type(self.batches).__name__} has no length")
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            rows = list(batch)
            yield [rows[i] for i in shard_rows(len(rows), self.rank, self.world)]


class ShardStep(NamedTuple):
    """One process's share of a global session-parallel step, and its loss weight."""

    batch: SessionParallelBatch  # this process's rows (possibly none at the end of an epoch)
    weight: float  # world * rows here / rows in the global step: DDP's mean is the global mean


class ShardedSessionParallel(IterableDataset[ShardStep]):
    """This process's slots of a global session-parallel stream (see the module docstring).

    ``dataset`` yields the global :class:`SessionParallelBatch` steps (``W * b`` slots), the
    same on every process. Slot ``s`` (numbered at the first step of an epoch and followed
    through the mini-batch shrinking at its end) belongs to process ``s % world``; each step
    keeps that process's rows of ``inputs``, ``targets``, ``reset`` and ``keep`` (restricted
    to its previous rows). ``negatives`` become the other processes' targets followed by the
    shared sampled negatives (the same on every process: same sampler seed, one draw per
    global step), and ``column_log_q`` is reordered alike, so a row has the columns it has in
    one process, in another order. Every process yields one :class:`ShardStep` per global step.

    >>> import numpy as np
    >>> from shoprec.data.session_parallel import SessionParallelDataset
    >>> sessions = [np.array([1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8, 9])]
    >>> steps = ShardedSessionParallel(SessionParallelDataset(sessions, 2), rank=1, world=2)
    >>> [(s.batch.inputs.tolist(), s.batch.negatives.tolist(), s.weight) for s in steps]
    [([4], [2], 1.0), ([5], [3], 1.0), ([6], [9], 1.0)]

    At the end of an epoch the shares become uneven, and a process may have no row left:

    >>> sessions = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    >>> for rank in (0, 1):
    ...     steps = ShardedSessionParallel(SessionParallelDataset(sessions, 2), rank, world=2)
    ...     print([(s.batch.inputs.tolist(), s.weight) for s in steps])
    [([1], 1.0), ([2], 2.0), ([3], 2.0)]
    [([5], 1.0), ([], 0.0), ([], 0.0)]
    """

    def __init__(self, dataset: Iterable[SessionParallelBatch], rank: int, world: int) -> None:
        super().__init__()
        shard_rows(1, rank, world)  # validates rank/world
        self.dataset = dataset
        self.rank = rank
        self.world = world

    def __iter__(self) -> Iterator[ShardStep]:
        slots: torch.Tensor | None = None  # (B,) global slot number of each row
        mine_before: torch.Tensor | None = None  # (B_prev,) this process's rows last step
        for batch in self.dataset:
            b = int(batch.inputs.shape[0])
            if slots is None:
                slots = torch.arange(b)
            elif batch.keep is not None:
                slots = slots[batch.keep]
            mine = slots % self.world == self.rank  # (B,)
            others = ~mine
            keep = None
            if batch.keep is not None and mine_before is not None:
                kept = batch.keep[mine_before]  # (B_prev_mine,)
                keep = None if bool(kept.all()) else kept
            log_q = batch.column_log_q  # (B + S,) or empty
            if log_q.numel():
                log_q = torch.cat([log_q[:b][mine], log_q[:b][others], log_q[b:]])
            mine_before = mine
            share = SessionParallelBatch(
                inputs=batch.inputs[mine],
                targets=batch.targets[mine],
                reset=batch.reset[mine],
                keep=keep,
                negatives=torch.cat([batch.targets[others], batch.negatives]),
                column_log_q=log_q,
            )
            yield ShardStep(share, self.world * int(mine.sum()) / b)


def row_sparse_grads_(params: Iterable[torch.Tensor | None]) -> None:
    """Replace each dense gradient by a row-sparse one holding its non-zero rows, in place.

    Under DDP the item matrices get dense (all-reduced) gradients; the lazy optimizer update
    (:class:`shoprec.training.regimes.AdagradM`) must still touch only the rows that some
    process used, which are exactly the rows with a non-zero gradient.

    >>> p = torch.nn.Parameter(torch.zeros(3, 2)); p.grad = torch.tensor([[0., 0], [1, 0], [0, 0]])
    >>> row_sparse_grads_([p]); p.grad.is_sparse, p.grad.coalesce().indices().tolist()
    (True, [[1]])
    """
    for p in params:
        if p is None or p.grad is None or p.grad.is_sparse:
            continue
        grad = p.grad
        rows = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1).nonzero().squeeze(1)  # (R,)
        p.grad = torch.sparse_coo_tensor(
            rows.unsqueeze(0),
            grad.index_select(0, rows),
            grad.shape,
            is_coalesced=True,
            check_invariants=False,  # built from unique sorted rows
        )

"""Lightning training regimes for the neural next-item models: one module + datamodule each.

* :class:`SessionParallelModule` / :class:`SessionParallelDataModule`: GRU4Rec's
  session-parallel mini-batches with shared sampled negatives and BPR-max or cross-entropy
  (+ logQ) over the mini-batch columns (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou,
  CIKM 2018). The module owns the GRU state across mini-batches: detached after every step
  (one-step truncated BPTT, as the official code), rows dropped when the mini-batch shrinks,
  and rows zeroed exactly at session starts. Optimizer: Adagrad with momentum on sparse item
  rows (:class:`AdagradM`, the official GRU4Rec optimizer) or Adam.
* :class:`SequenceModule` / :class:`SequenceDataModule`: SASRec on left-padded session
  sequences with shifted targets; full softmax cross-entropy (default, Klenitskiy & Vasilev,
  RecSys 2023), sampled softmax with logQ correction, or gBCE (Petrov & Macdonald,
  RecSys 2023); Adam with ``betas = (0.9, 0.98)`` (Kang & McAuley, ICDM 2018).

Both validate on next-item cases (prefix -> target) by full-catalogue ranking with pessimistic
ties (rank = number of real items scoring >= the target) and log ``val/hr@K`` and
``val/mrr@K`` (``K = cutoff``, default 20) so early stopping can monitor ``val/mrr@20``.
Every training step logs ``train/loss``.

Constructors are ``Module(model_config, regime_config)`` and
``DataModule(model_config, regime_config, dataset)``. ``L.Trainer(precision="bf16-mixed")``
runs the matmuls in bfloat16 (about 1.3x faster for GRU4Rec and 1.6x for SASRec on an AVX-512
CPU); losses, optimizer state and evaluation scores stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Sampler

from shoprec import schema
from shoprec.config import StrictModel
from shoprec.data.dataset import VALID_CASES, PreparedDataset
from shoprec.data.negatives import PopularitySampler, gru4rec_log_q, item_counts, log_support
from shoprec.data.sequences import (
    LengthBucketSampler,
    SequenceBatch,
    SequenceCollator,
    SequenceDataset,
)
from shoprec.data.session_parallel import SessionParallelBatch, SessionParallelDataset
from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
from shoprec.models.sasrec import SASRec, SASRecConfig
from shoprec.training.ddp import (
    ShardedBatchSampler,
    ShardedSessionParallel,
    ShardStep,
    rank_and_world,
    row_sparse_grads_,
)
from shoprec.training.losses import (
    bpr_max_loss,
    cross_entropy_logq_loss,
    full_softmax_cross_entropy,
    gbce_beta,
    gbce_loss,
    sampled_softmax_loss,
)

__all__ = [
    "REGIMES",
    "AdagradM",
    "CasesBatch",
    "Regime",
    "SequenceConfig",
    "SequenceDataModule",
    "SequenceModule",
    "SessionParallelConfig",
    "SessionParallelDataModule",
    "SessionParallelModule",
    "cases_loader",
    "pessimistic_ranks",
    "sequence_loader",
    "session_parallel_loader",
]


# --- configs -----------------------------------------------------------------------------------
class SessionParallelConfig(StrictModel):
    """GRU4Rec training knobs; defaults are the official Diginetica paramfile
    (``paramfiles/diginetica_bprmax_shared_best.py``: bpr-max, batch 128, 2048 negatives,
    sample_alpha 0.3, bpreg 0.9, elu_param 1, Adagrad lr 0.05 with momentum 0.15, logq 0).
    """

    batch_size: int = Field(default=128, ge=1)
    n_sample: int = Field(default=2048, ge=0)  # extra shared negatives per step
    sample_alpha: float = Field(default=0.3, ge=0.0)  # popularity^alpha; 0 = uniform
    sample_chunk: int = Field(default=1 << 22, ge=1)  # samples precomputed at once
    loss: Literal["bpr-max", "cross-entropy"] = "bpr-max"
    bpreg: float = Field(default=0.9, ge=0.0)  # BPR-max score regularization
    elu_param: float = Field(default=1.0, ge=0.0)  # ELU before BPR-max (official); 0 = none
    logq: float = Field(default=0.0, ge=0.0)  # logQ correction weight (cross-entropy only)
    optimizer: Literal["adagrad", "adam"] = "adagrad"  # adagrad = Adagrad with momentum
    learning_rate: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.15, ge=0.0, lt=1.0)  # Adagrad momentum
    shuffle_sessions: bool = False  # False = sessions start in time order (official)
    seed: int = 42
    val_batch_size: int = Field(default=512, ge=1)
    cutoff: int = Field(default=20, ge=1)


class SequenceConfig(StrictModel):
    """SASRec training knobs (Adam lr 1e-3 and batch 128 from Kang & McAuley).

    ``beta2`` is Adam's default 0.999, not the paper's 0.98: with 0.98 the training loss on
    Diginetica (43k items, full softmax) stopped falling after 4 epochs and then rose, in fp32
    as in bf16, while with 0.999 it kept falling (experiments/2026-12-05-sasrec-beta2.md).
    A short second-moment memory lets the rarely updated item embeddings take large steps.

    ``loss``: ``ce`` = full softmax over the catalogue (Klenitskiy & Vasilev, RecSys 2023);
    ``sampled`` = sampled softmax over ``n_negatives`` popularity^``sample_alpha`` negatives
    with logQ correction; ``gbce`` = gSASRec's gBCE (Petrov & Macdonald, RecSys 2023) with
    calibration ``gbce_t`` (their default 0.75) and uniform negatives (``sample_alpha = 0``,
    which its beta formula assumes). Negatives are shared by the whole batch (as GRU4Rec's
    shared samples, Hidasi & Karatzoglou 2018) rather than drawn per position; a negative that
    equals a position's target is masked out.
    """

    batch_size: int = Field(default=128, ge=1)
    loss: Literal["ce", "sampled", "gbce"] = "ce"
    n_negatives: int = Field(default=256, ge=1)  # shared negatives per batch (sampled, gbce)
    sample_alpha: float = Field(default=0.0, ge=0.0)  # popularity^alpha; gBCE assumes 0
    logq: float = Field(default=1.0, ge=0.0)  # logQ correction weight (sampled)
    gbce_t: float = Field(default=0.75, ge=0.0, le=1.0)  # gSASRec's calibration t
    learning_rate: float = Field(default=1e-3, gt=0.0)
    beta2: float = Field(default=0.999, gt=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    bucket_batches: int = Field(default=64, ge=1)  # length bucketing pool, in batches
    ce_chunk: int = Field(default=1024, ge=1)  # items per chunk of the full softmax
    ce_store_mb: int = Field(default=1024, ge=0)  # softmax numerators kept for backward; 0 = none
    seed: int = 42
    val_batch_size: int = Field(default=512, ge=1)
    cutoff: int = Field(default=20, ge=1)


# --- optimizer -----------------------------------------------------------------------------------
class AdagradM(torch.optim.Optimizer):
    """Adagrad with momentum, with sparse-row updates (the official GRU4Rec optimizer).

    ``acc += g**2``; ``v = momentum * v - lr * g / sqrt(acc + eps)``; ``p += v``. For a sparse
    gradient only the touched rows update their accumulator and momentum (lazy momentum, as the
    official ``IndexedAdagradM``), so a step costs O(rows in the mini-batch), not O(catalogue).
    The accumulator starts at ``eps`` (so ``sqrt(acc)`` is ``sqrt(sum g**2 + eps)``); sparse
    rows are updated in blocks of ``row_block`` rows so each block's work stays in cache.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 0.05,
        momentum: float = 0.0,
        eps: float = 1e-6,
        row_block: int = 256,
    ) -> None:
        if lr <= 0 or momentum < 0 or eps <= 0 or row_block < 1:
            raise ValueError("need lr > 0, momentum >= 0, eps > 0, row_block >= 1")
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps})
        self.row_block = row_block

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["acc"] = torch.full_like(p, eps, memory_format=torch.contiguous_format)
                    state["mom"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                acc_all: torch.Tensor = state["acc"]
                mom_all: torch.Tensor = state["mom"]
                grad = p.grad
                if grad.is_sparse and grad.sparse_dim() != 1:
                    grad = grad.to_dense()  # only row-sparse (embedding) gradients are lazy
                if not grad.is_sparse:
                    acc_all.addcmul_(grad, grad)
                    mom_all.mul_(momentum).addcdiv_(grad, acc_all.sqrt(), value=-lr)
                    p.add_(mom_all)
                    continue
                grad = grad.coalesce()  # unique rows: the update is non-linear
                all_rows, all_g = grad.indices()[0], grad.values()  # (R,), (R, ...)
                for start in range(0, all_rows.shape[0], self.row_block):
                    rows = all_rows[start : start + self.row_block]  # (r,)
                    g = all_g[start : start + self.row_block]  # (r, ...)
                    acc = acc_all.index_select(0, rows).addcmul_(g, g)
                    acc_all.index_copy_(0, rows, acc)
                    mom = mom_all.index_select(0, rows).mul_(momentum)
                    mom.addcdiv_(g, acc.sqrt_(), value=-lr)
                    mom_all.index_copy_(0, rows, mom)
                    p.index_add_(0, rows, mom)
        return loss


# --- validation cases ----------------------------------------------------------------------------
class CasesBatch(NamedTuple):
    """Next-item evaluation cases."""

    prefixes: torch.Tensor  # (B, T) LEFT-padded prefixes
    targets: torch.Tensor  # (B,) target item_idx (0 = unseen in train: always a miss)


class _CasesDataset(Dataset[tuple[np.ndarray, int]]):
    def __init__(self, prefixes: Sequence[Sequence[int]], targets: Sequence[int]) -> None:
        self.prefixes = [np.asarray(p, dtype=np.int64) for p in prefixes]
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.prefixes[i], int(self.targets[i])


class _CasesCollator:
    def __init__(self, max_len: int | None) -> None:
        self.max_len = max_len

    def __call__(self, rows: Sequence[tuple[np.ndarray, int]]) -> CasesBatch:
        prefixes = [p[-self.max_len :] if self.max_len else p for p, _ in rows]
        width = max(1, max(len(p) for p in prefixes))
        out = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
        for i, p in enumerate(prefixes):
            if len(p):
                out[i, width - len(p) :] = p
        targets = torch.tensor([t for _, t in rows], dtype=torch.long)  # (B,)
        return CasesBatch(prefixes=torch.from_numpy(out), targets=targets)


def cases_loader(
    prefixes: Sequence[Sequence[int]],
    targets: Sequence[int],
    batch_size: int,
    max_len: int | None = None,
) -> DataLoader[Any]:
    """Batches of :class:`CasesBatch`, grouped by prefix length (metrics are order-free)."""
    order = np.argsort([len(p) for p in prefixes], kind="stable")
    ds = _CasesDataset([prefixes[i] for i in order], [targets[i] for i in order])
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=_CasesCollator(max_len))


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based ranks ``(B,)`` of ``targets`` in ``scores (B, N+1)``, ties counted against them.

    rank = number of real items (column 0 excluded) with score >= the target's score; a
    target 0 (unknown item) gets ``N + 1`` (a miss).

    >>> pessimistic_ranks(torch.tensor([[float("-inf"), 1.0, 2.0, 2.0]]), torch.tensor([2]))
    tensor([2])
    """
    real = scores[:, 1:]  # (B, N)
    target_score = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    ranks = (real >= target_score).sum(dim=1)  # (B,)
    return torch.where(targets > 0, ranks, torch.full_like(ranks, real.shape[1] + 1))


def _identity(batch: Any) -> Any:
    return batch


def _valid_cases(dataset: PreparedDataset) -> tuple[list[list[int]], list[int]] | None:
    if not dataset.has(VALID_CASES):
        return None
    cases = dataset.cases("valid")
    return (
        [list(p) for p in cases.get_column(schema.PREFIX_IDX).to_list()],
        cases.get_column(schema.TARGET_IDX).to_list(),
    )


class _NextItemModule(L.LightningModule):
    """Shared validation: full-catalogue HR@K / MRR@K with pessimistic ties."""

    model: GRU4Rec | SASRec
    cutoff: int

    def _build(
        self,
        model_class: type[GRU4Rec] | type[SASRec],
        model: GRU4RecConfig | SASRecConfig,
        config: SessionParallelConfig | SequenceConfig,
    ) -> None:
        """Hyper-parameters, the validation cut-off, and the model, initialised from
        ``config.seed`` without touching the global random state."""
        self.save_hyperparameters({"model": model.model_dump(), "regime": config.model_dump()})
        self.cutoff = config.cutoff
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = model_class(model)  # type: ignore[arg-type]

    def validation_step(self, batch: CasesBatch, batch_idx: int) -> None:
        scores = self.model.score(batch.prefixes)  # (B, N+1)
        ranks = pessimistic_ranks(scores, batch.targets)  # (B,)
        hit = ranks <= self.cutoff
        rr = torch.where(hit, 1.0 / ranks.float(), torch.zeros_like(ranks, dtype=torch.float))
        n = int(batch.targets.shape[0])
        self.log(
            f"val/hr@{self.cutoff}", hit.float().mean(), on_epoch=True, batch_size=n, prog_bar=True
        )
        self.log(f"val/mrr@{self.cutoff}", rr.mean(), on_epoch=True, batch_size=n, prog_bar=True)


# --- GRU4Rec: session-parallel ---------------------------------------------------------------
class SessionParallelModule(_NextItemModule):
    """Trains :class:`GRU4Rec` on :class:`SessionParallelBatch` steps."""

    model: GRU4Rec

    def __init__(self, model: GRU4RecConfig, config: SessionParallelConfig) -> None:
        super().__init__()
        self.config = config
        self._build(GRU4Rec, model, config)
        self.model.sparse_grad = config.optimizer == "adagrad"
        self._dense_item_grads = False
        self._hidden: list[torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        # DDP all-reduces dense gradients only: under DDP the item rows get dense gradients,
        # made row-sparse again before the step (the same lazy Adagrad update as one process)
        if self.model.sparse_grad and rank_and_world(self._trainer)[1] > 1:
            self.model.sparse_grad = False
            self._dense_item_grads = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._dense_item_grads:
            m = self.model
            row_sparse_grads_([m.item_weight, m.item_bias, m.input_embedding])

    def carry_state(self, batch: SessionParallelBatch) -> list[torch.Tensor]:
        """The state entering this step: previous state, rows dropped per ``keep``, rows of
        slots whose session starts now zeroed (a fresh state exactly at session starts)."""
        b = int(batch.inputs.shape[0])
        hidden = self._hidden
        if hidden is not None and batch.keep is not None:
            hidden = [h[batch.keep] for h in hidden]
        if hidden is None or hidden[0].shape[0] != b:
            return self.model.init_hidden(b, batch.inputs.device)
        start = batch.reset.unsqueeze(1)  # (B, 1)
        return [h.masked_fill(start, 0.0) for h in hidden]

    def forward_step(self, batch: SessionParallelBatch) -> torch.Tensor:
        """Scores ``(B, B + S)`` of one step; updates the carried (detached) state."""
        hidden = self.carry_state(batch)
        columns = torch.cat([batch.targets, batch.negatives])  # (B + S,)
        scores, new_hidden = self.model.train_scores(batch.inputs, hidden, columns)
        self._hidden = [h.detach() for h in new_hidden]
        return scores

    def loss(self, scores: torch.Tensor, batch: SessionParallelBatch) -> torch.Tensor:
        cfg = self.config
        scores = scores.float()  # (B, B + S); the loss in float32 even under bf16 autocast
        if cfg.loss == "bpr-max":
            if cfg.elu_param > 0:
                scores = F.elu(scores, cfg.elu_param)
            return bpr_max_loss(scores, cfg.bpreg)
        log_q = None
        if batch.column_log_q.numel():  # log supp of the columns [in-batch targets, samples]
            # the last n_sample columns are the sampled negatives (also under DDP, where the
            # other processes' targets come first among ``negatives``): official logQ weights
            log_q = gru4rec_log_q(batch.column_log_q, cfg.n_sample, cfg.sample_alpha)
        return cross_entropy_logq_loss(scores, log_q, cfg.logq)

    def training_step(
        self, batch: SessionParallelBatch | ShardStep, batch_idx: int
    ) -> torch.Tensor:
        weight = 1.0
        if isinstance(batch, ShardStep):  # DDP: this process's share of a global step
            weight = batch.weight
            batch = batch.batch
            if batch.inputs.shape[0] == 0:  # no slot left here at the end of the epoch; DDP
                # still needs a (zero) gradient for every parameter from every process
                return torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0
        loss = self.loss(self.forward_step(batch), batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=int(batch.inputs.shape[0]),
        )
        return loss * weight

    def on_train_epoch_start(self) -> None:
        self._hidden = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``Trainer(gradient_clip_val=...)`` on row-sparse item gradients too (Lightning's
        own clipping cannot take a norm of a sparse tensor). The official GRU4Rec never clips."""
        if not gradient_clip_val:
            return
        grads = []
        for p in self.parameters():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
                grads.append(p.grad.values())
            else:
                grads.append(p.grad)
        if gradient_clip_algorithm == "value":
            for g in grads:
                g.clamp_(-gradient_clip_val, gradient_clip_val)
            return
        total = torch.sqrt(sum((g.double().square().sum() for g in grads), torch.zeros(())))
        factor = gradient_clip_val / (float(total) + 1e-6)
        if factor < 1.0:
            for g in grads:
                g.mul_(factor)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adagrad":
            return AdagradM(self.model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
        return torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, fused=True)


def session_parallel_loader(
    sessions: Sequence[np.ndarray],
    n_items: int,
    config: SessionParallelConfig,
    rank: int = 0,
    world: int = 1,
) -> DataLoader[Any]:
    """The training loader of the session-parallel regime (sampler and logQ table included).

    With ``world > 1`` processes, this process's slots of the global stream of
    ``world * batch_size`` slots (:class:`shoprec.training.ddp.ShardedSessionParallel`).
    """
    counts = item_counts(list(sessions), n_items)
    sampler = None
    if config.n_sample > 0:
        sampler = PopularitySampler(
            counts, config.sample_alpha, config.n_sample, config.sample_chunk, seed=config.seed
        )
    log_q_table = None  # log supp per item; the loss turns it into per-column logQ weights
    if config.loss == "cross-entropy" and config.logq > 0:
        log_q_table = log_support(counts)
    ds = SessionParallelDataset(
        sessions,
        config.batch_size * world,
        shuffle=config.shuffle_sessions,
        seed=config.seed,
        sampler=sampler,
        log_q_table=log_q_table,
    )
    if world == 1:
        return DataLoader(ds, batch_size=None, collate_fn=_identity)
    shard = ShardedSessionParallel(ds, rank, world)
    return DataLoader(shard, batch_size=None, collate_fn=_identity)


class _PreparedDataModule(L.LightningDataModule):
    """A prepared dataset's train sessions as one regime's training loader (built once, for
    this process's rank) and its validation cases, if any. ``sessions``: the train sessions
    when the caller has read them already (``fit`` has), else they are read here."""

    def __init__(
        self,
        model: GRU4RecConfig | SASRecConfig,
        config: SessionParallelConfig | SequenceConfig,
        dataset: PreparedDataset,
        sessions: Sequence[np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if model.n_items != dataset.n_items:
            raise ValueError(f"model n_items={model.n_items} but dataset has {dataset.n_items}")
        self.model_config = model
        self.config = config
        self.dataset = dataset
        self.sessions = sessions
        self._train: DataLoader[Any] | None = None
        self._valid: tuple[list[list[int]], list[int]] | None = None

    def _train_loader(self, sessions: Sequence[np.ndarray], rank: int, world: int) -> Any:
        raise NotImplementedError

    def _val_max_len(self) -> int | None:
        """Validation prefixes longer than this keep their last items (None: all)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            sessions = self.sessions
            if sessions is None:
                sessions = self.dataset.train_sessions()
            self._train = self._train_loader(sessions, *rank_and_world(self.trainer))
            self._valid = _valid_cases(self.dataset)

    def train_dataloader(self) -> DataLoader[Any]:
        self.setup()
        assert self._train is not None
        return self._train

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        self.setup()
        if self._valid is None:
            return []
        return cases_loader(
            *self._valid, batch_size=self.config.val_batch_size, max_len=self._val_max_len()
        )


class SessionParallelDataModule(_PreparedDataModule):
    """Train sessions of a prepared dataset as session-parallel steps; valid cases if any."""

    model_config: GRU4RecConfig
    config: SessionParallelConfig

    def _train_loader(self, sessions: Sequence[np.ndarray], rank: int, world: int) -> Any:
        return session_parallel_loader(
            sessions, self.model_config.n_items, self.config, rank, world
        )


# --- SASRec: sequences -----------------------------------------------------------------------
class SequenceModule(_NextItemModule):
    """Trains :class:`SASRec` on :class:`SequenceBatch` batches."""

    model: SASRec

    def __init__(self, model: SASRecConfig, config: SequenceConfig) -> None:
        super().__init__()
        self.config = config
        self._build(SASRec, model, config)
        self.beta = 1.0
        if config.loss == "gbce":
            self.beta = gbce_beta(config.n_negatives, model.n_items, config.gbce_t)

    def loss(self, batch: SequenceBatch) -> torch.Tensor:
        cfg = self.config
        mask = batch.targets != 0  # (B, T) real positions
        hidden = self.model.encode(batch.inputs)[mask]  # (N, D)
        targets = batch.targets[mask]  # (N,)
        weight = self.model.output_weight  # (N_items + 1, D)
        if cfg.loss == "ce":
            return full_softmax_cross_entropy(
                hidden, weight[1:], targets - 1, cfg.ce_chunk, cfg.ce_store_mb << 20
            )
        negatives = batch.negatives  # (K,)
        pos = (hidden * weight[targets]).sum(dim=1).float()  # (N,)
        neg = (hidden @ weight[negatives].T).float()  # (N, K) float32 even under autocast
        neg_mask = negatives.unsqueeze(0) != targets.unsqueeze(1)  # (N, K) accidental hits
        if cfg.loss == "gbce":
            return gbce_loss(pos, neg, self.beta, neg_mask)
        pos_log_q = batch.target_log_q[mask] if batch.target_log_q.numel() else None
        neg_log_q = batch.negative_log_q if batch.negative_log_q.numel() else None
        return sampled_softmax_loss(pos, neg, pos_log_q, neg_log_q, cfg.logq, neg_mask)

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=int(batch.inputs.shape[0]),
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        # fused: one kernel over all parameters (several times faster than the default on CPU)
        return torch.optim.Adam(
            self.model.parameters(),
            lr=cfg.learning_rate,
            betas=(0.9, cfg.beta2),
            weight_decay=cfg.weight_decay,
            fused=True,
        )


def sequence_loader(
    sessions: Sequence[np.ndarray],
    n_items: int,
    max_len: int,
    config: SequenceConfig,
    rank: int = 0,
    world: int = 1,
) -> DataLoader[Any]:
    """The training loader of the sequence regime (length-bucketed, sampler when needed).

    With ``world > 1`` processes, this process's share of every global batch of
    ``world * batch_size`` sequences (:class:`shoprec.training.ddp.ShardedBatchSampler`).
    """
    ds = SequenceDataset(sessions, max_len)
    sampler = None
    if config.loss != "ce":
        counts = item_counts(list(sessions), n_items)
        sampler = PopularitySampler(
            counts, config.sample_alpha, config.n_negatives, seed=config.seed
        )
    batches: Sampler[list[int]] = LengthBucketSampler(
        ds.lengths(), config.batch_size * world, config.bucket_batches, seed=config.seed
    )
    if world > 1:
        batches = ShardedBatchSampler(batches, rank, world)
    return DataLoader(ds, batch_sampler=batches, collate_fn=SequenceCollator(sampler))


class SequenceDataModule(_PreparedDataModule):
    """Train sessions of a prepared dataset as SASRec sequences; valid cases if any."""

    model_config: SASRecConfig
    config: SequenceConfig

    def _val_max_len(self) -> int | None:
        return self.model_config.max_len

    def _train_loader(self, sessions: Sequence[np.ndarray], rank: int, world: int) -> Any:
        m = self.model_config
        return sequence_loader(sessions, m.n_items, m.max_len, self.config, rank, world)


# --- registry ------------------------------------------------------------------------------------
class Regime(NamedTuple):
    """What the training glue needs to train one model family."""

    model_config: type[StrictModel]
    regime_config: type[StrictModel]
    module: type[L.LightningModule]
    datamodule: type[_PreparedDataModule]


REGIMES: dict[str, Regime] = {
    "gru4rec": Regime(
        GRU4RecConfig, SessionParallelConfig, SessionParallelModule, SessionParallelDataModule
    ),
    "sasrec": Regime(SASRecConfig, SequenceConfig, SequenceModule, SequenceDataModule),
}

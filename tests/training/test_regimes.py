"""Lightning regimes: fits on tiny synthetic sessions log train/loss and val metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping

from shoprec import schema
from shoprec.data.dataset import PreparedDataset
from shoprec.data.session_parallel import SessionParallelBatch
from shoprec.models.gru4rec import GRU4RecConfig
from shoprec.models.sasrec import SASRecConfig
from shoprec.training.losses import bpr_max_loss, cross_entropy_logq_loss
from shoprec.training.regimes import (
    REGIMES,
    AdagradM,
    SequenceConfig,
    SequenceDataModule,
    SequenceModule,
    SessionParallelConfig,
    SessionParallelDataModule,
    SessionParallelModule,
    cases_loader,
    pessimistic_ranks,
    session_parallel_loader,
)

N_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _synthetic_sessions(n: int, seed: int) -> list[list[int]]:
    """Walks through 6 groups of 5 items in order (item i -> i + 1 inside a group)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        group = int(rng.integers(0, 6))
        start = int(rng.integers(0, 3))
        length = int(rng.integers(2, 6 - start))
        out.append([group * 5 + 1 + (start + k) for k in range(length)])
    return out


def _write_prepared(root: Path, with_valid: bool = True) -> PreparedDataset:
    """A minimal prepared dataset folder (the layout of ``shoprec.data.dataset``)."""
    root.mkdir(parents=True, exist_ok=True)
    train = _synthetic_sessions(120, seed=0)
    rows = [(f"s{s}", idx, k) for s, sess in enumerate(train) for k, idx in enumerate(sess)]
    pl.DataFrame(
        {
            schema.SESSION_ID: [r[0] for r in rows],
            schema.ITEM_ID: [f"i{r[1]}" for r in rows],
            schema.ITEM_IDX: pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "pos": [r[2] for r in rows],
        }
    ).write_parquet(root / "train.parquet")
    counts = np.bincount([r[1] for r in rows], minlength=N_ITEMS + 1)
    pl.DataFrame(
        {
            schema.ITEM_IDX: pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int32),
            schema.ITEM_ID: [f"i{i}" for i in range(1, N_ITEMS + 1)],
            schema.ITEM_COUNT: pl.Series(counts[1:].tolist(), dtype=pl.Int64),
        }
    ).write_parquet(root / "items.parquet")
    (root / "manifest.json").write_text(json.dumps({"synthetic": True}))
    if with_valid:
        cases = [
            (s[: k + 1], s[k + 1]) for s in _synthetic_sessions(40, 1) for k in range(len(s) - 1)
        ]
        pl.DataFrame(
            {
                schema.CASE_ID: list(range(len(cases))),
                schema.SESSION_ID: [f"v{i}" for i in range(len(cases))],
                schema.PREFIX_IDX: pl.Series([p for p, _ in cases], dtype=pl.List(pl.Int32)),
                schema.PREFIX_IDS: [[f"i{x}" for x in p] for p, _ in cases],
                schema.TARGET_IDX: pl.Series([t for _, t in cases], dtype=pl.Int32),
                schema.TARGET_ID: [f"i{t}" for _, t in cases],
            }
        ).write_parquet(root / "valid_cases.parquet")
    return PreparedDataset.open(root)


def _trainer(
    max_epochs: int, callbacks: list[L.Callback] | None = None, precision: str = "32-true"
) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=max_epochs,
        callbacks=callbacks,
    )


def _check_metrics(trainer: L.Trainer) -> dict[str, float]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss", "val/hr@20", "val/mrr@20"):
        assert key in metrics, sorted(metrics)
        assert math.isfinite(metrics[key])
    assert 0.0 <= metrics["val/mrr@20"] <= metrics["val/hr@20"] <= 1.0
    return metrics


def _val_mrr(module: SessionParallelModule | SequenceModule, dataset: PreparedDataset) -> float:
    cases = dataset.cases("valid")
    loader = cases_loader(
        [list(p) for p in cases[schema.PREFIX_IDX].to_list()],
        cases[schema.TARGET_IDX].to_list(),
        batch_size=64,
    )
    rr = []
    for batch in loader:
        ranks = pessimistic_ranks(module.model.score(batch.prefixes), batch.targets)
        rr.append(torch.where(ranks <= 20, 1.0 / ranks, torch.zeros(len(ranks))))
    return float(torch.cat(rr).mean())


@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_session_parallel_fit_logs_loss_and_val_metrics(
    tmp_path: Path, loss: Literal["bpr-max", "cross-entropy"]
) -> None:
    ds = _write_prepared(tmp_path / "ds")
    model_cfg = GRU4RecConfig(
        n_items=N_ITEMS, layers=[32], dropout_p_embed=0.1, dropout_p_hidden=0.1
    )
    regime = SessionParallelConfig(
        batch_size=16,
        n_sample=16,
        sample_chunk=4096,
        loss=loss,
        logq=1.0 if loss == "cross-entropy" else 0.0,
        learning_rate=0.1,
        momentum=0.3,
    )
    module = SessionParallelModule(model_cfg, regime)
    before = _val_mrr(module, ds)
    trainer = _trainer(2)
    trainer.fit(module, datamodule=SessionParallelDataModule(model_cfg, regime, ds))
    metrics = _check_metrics(trainer)
    assert trainer.current_epoch == 2
    assert metrics["val/mrr@20"] == pytest.approx(_val_mrr(module, ds), abs=1e-6)
    assert metrics["val/mrr@20"] > before + 0.1  # it learned the item -> next item walks


@pytest.mark.parametrize("loss", ["ce", "sampled", "gbce"])
def test_sequence_fit_logs_loss_and_val_metrics(
    tmp_path: Path, loss: Literal["ce", "sampled", "gbce"]
) -> None:
    ds = _write_prepared(tmp_path / "ds")
    model_cfg = SASRecConfig(n_items=N_ITEMS, max_len=6, hidden=16, n_blocks=1, dropout=0.1)
    regime = SequenceConfig(batch_size=16, loss=loss, n_negatives=8, learning_rate=0.01, ce_chunk=8)
    module = SequenceModule(model_cfg, regime)
    before = _val_mrr(module, ds)
    torch.manual_seed(0)  # dropout and sampling: independent of the tests that ran before
    trainer = _trainer(2)
    trainer.fit(module, datamodule=SequenceDataModule(model_cfg, regime, ds))
    metrics = _check_metrics(trainer)
    # gBCE (8 uniform negatives, t = 0.75) learns slower in two epochs: +0.097..+0.105 over
    # seeds 0-3, against +0.42..+0.64 for the softmax losses
    gain = 0.05 if loss == "gbce" else 0.1
    assert metrics["val/mrr@20"] > before + gain


def test_early_stopping_monitors_val_mrr(tmp_path: Path) -> None:
    ds = _write_prepared(tmp_path / "ds")
    model_cfg = SASRecConfig(n_items=N_ITEMS, max_len=6, hidden=8, n_blocks=1)
    regime = SequenceConfig(batch_size=32, learning_rate=1e-6)  # too small to improve
    stop = EarlyStopping(monitor="val/mrr@20", mode="max", patience=1, min_delta=0.05)
    trainer = _trainer(20, callbacks=[stop])
    trainer.fit(
        SequenceModule(model_cfg, regime), datamodule=SequenceDataModule(model_cfg, regime, ds)
    )
    assert trainer.current_epoch < 20 and stop.stopped_epoch > 0


def test_fit_without_validation_cases(tmp_path: Path) -> None:
    ds = _write_prepared(tmp_path / "ds", with_valid=False)
    model_cfg = GRU4RecConfig(n_items=N_ITEMS, layers=[8])
    regime = SessionParallelConfig(batch_size=8, n_sample=4, sample_chunk=1024)
    trainer = _trainer(1)
    trainer.fit(
        SessionParallelModule(model_cfg, regime),
        datamodule=SessionParallelDataModule(model_cfg, regime, ds),
    )
    assert "train/loss" in trainer.callback_metrics
    assert "val/mrr@20" not in trainer.callback_metrics


def test_datamodules_check_the_catalogue_size(tmp_path: Path) -> None:
    ds = _write_prepared(tmp_path / "ds", with_valid=False)
    with pytest.raises(ValueError, match="n_items"):
        SessionParallelDataModule(GRU4RecConfig(n_items=7), SessionParallelConfig(), ds)
    with pytest.raises(ValueError, match="n_items"):
        SequenceDataModule(SASRecConfig(n_items=7), SequenceConfig(), ds)
    assert set(REGIMES) == {"gru4rec", "sasrec"}


def test_carried_state_follows_keep_and_reset() -> None:
    module = SessionParallelModule(
        GRU4RecConfig(n_items=5, layers=[3]), SessionParallelConfig(n_sample=0)
    )
    module._hidden = [torch.arange(12, dtype=torch.float).view(4, 3) + 1]
    batch = SessionParallelBatch(
        inputs=torch.tensor([1, 2, 3]),
        targets=torch.tensor([2, 3, 4]),
        reset=torch.tensor([False, True, False]),
        keep=torch.tensor([True, False, True, True]),
        negatives=torch.empty(0, dtype=torch.long),
        column_log_q=torch.empty(0),
    )
    (state,) = module.carry_state(batch)
    assert state.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [10.0, 11.0, 12.0]]


# train counts of LOGQ_SESSIONS: item 1 twice, item 2 three times, item 3 four times, item 4 never
LOGQ_SESSIONS = [[1, 2, 2], [3, 1], [2, 3, 3, 3]]
LOGQ_COUNTS = {1: 2, 2: 3, 3: 4, 4: 0}


@pytest.mark.parametrize(
    ("alpha", "logq", "n_sample"), [(0.5, 1.0, 3), (0.2, 0.7, 3), (0.0, 1.0, 40)]
)
def test_cross_entropy_logq_matches_the_official_correction_by_hand(
    alpha: float, logq: float, n_sample: int
) -> None:
    """Official GRU4Rec ``xe_loss_with_softmax``: ``O - logq * log(cat([P0[targets],
    P0[samples] ** sample_alpha]))`` with ``P0`` the train counts, on every column (the target
    one too); checked on the first step of the real loader against plain ``math``."""
    config = SessionParallelConfig(
        batch_size=2,
        n_sample=n_sample,
        sample_alpha=alpha,
        sample_chunk=64,
        loss="cross-entropy",
        logq=logq,
    )
    module = SessionParallelModule(GRU4RecConfig(n_items=4, layers=[3]), config)
    sessions = [np.array(s) for s in LOGQ_SESSIONS]
    batch = next(iter(session_parallel_loader(sessions, 4, config)))
    assert batch.targets.tolist() == [2, 1]  # in-batch columns: the targets, in row order
    negatives = batch.negatives.tolist()
    assert len(negatives) == n_sample
    if alpha == 0:  # uniform samples reach item 4, without train support
        assert 4 in negatives
    columns = batch.targets.tolist() + negatives
    scores = [[1.0, 0.5, -0.5, 2.0, 0.0] + [0.1 * k for k in range(n_sample - 3)]]
    scores.append([0.3, -1.0, 1.5, 0.2, 0.7] + [-0.05 * k for k in range(n_sample - 3)])
    weights = [math.log(LOGQ_COUNTS[j]) for j in columns[:2]]  # log(count): 2 -> 3, 1 -> 2
    weights += [math.log(LOGQ_COUNTS[j] ** alpha) for j in negatives]  # 0**0 = 1: log 0
    expected = 0.0
    for i, row in enumerate(scores):
        adjusted = [r - logq * w for r, w in zip(row, weights, strict=True)]
        lse = math.log(sum(math.exp(a) for a in adjusted))
        expected += (lse - adjusted[i]) / len(scores)
    got = module.loss(torch.tensor(scores), batch)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_without_logq_and_bpr_max_ignore_counts() -> None:
    """No logQ table (logq 0, or BPR-max): the loss is the plain one on the raw scores."""
    sessions = [np.array(s) for s in LOGQ_SESSIONS]
    scores = torch.tensor([[1.0, 0.5, -0.5, 2.0, 0.0], [0.3, -1.0, 1.5, 0.2, 0.7]])
    cases = [("cross-entropy", 0.0), ("bpr-max", 0.0), ("bpr-max", 1.0)]
    for loss, logq in cases:
        config = SessionParallelConfig(batch_size=2, n_sample=3, loss=loss, logq=logq)
        module = SessionParallelModule(GRU4RecConfig(n_items=4, layers=[3]), config)
        batch = next(iter(session_parallel_loader(sessions, 4, config)))
        assert batch.column_log_q.numel() == 0
        if loss == "cross-entropy":
            plain = cross_entropy_logq_loss(scores)
        else:
            plain = bpr_max_loss(F.elu(scores, config.elu_param), config.bpreg)
        assert torch.equal(module.loss(scores, batch), plain)


def test_pessimistic_ranks_count_ties_against_the_target() -> None:
    scores = torch.tensor(
        [
            [float("-inf"), 1.0, 2.0, 2.0, 0.5],
            [float("-inf"), 3.0, 3.0, 3.0, 3.0],
            [float("-inf"), 1.0, 2.0, 3.0, 4.0],
        ]
    )
    ranks = pessimistic_ranks(scores, torch.tensor([2, 1, 0]))
    assert ranks.tolist() == [2, 4, 5]  # unknown target (0): rank N + 1, a miss


def _adagrad_m_reference(
    p: torch.Tensor, grads: list[torch.Tensor], lr: float, momentum: float, eps: float
) -> torch.Tensor:
    acc = torch.zeros_like(p)
    vel = torch.zeros_like(p)
    for g in grads:
        acc = acc + g * g
        vel = momentum * vel - lr * g / torch.sqrt(acc + eps)
        p = p + vel
    return p


@pytest.mark.parametrize("sparse", [False, True])
def test_adagrad_momentum_matches_the_formula(sparse: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(3)]
    param = torch.nn.Parameter(start.clone())
    opt = AdagradM([param], lr=0.1, momentum=0.4, eps=1e-6, row_block=3)  # 2 row blocks
    for g in grads:
        # every row is touched, so lazy (sparse) momentum equals dense momentum
        param.grad = g.to_sparse(sparse_dim=1) if sparse else g.clone()
        opt.step()
    if sparse:  # a fully sparse (COO over both dims) gradient is applied densely
        other = torch.nn.Parameter(start.clone())
        opt2 = AdagradM([other], lr=0.1, momentum=0.4, eps=1e-6)
        for g in grads:
            other.grad = g.to_sparse()
            opt2.step()
        torch.testing.assert_close(other.data, param.data)
    expected = _adagrad_m_reference(start, grads, 0.1, 0.4, 1e-6)
    torch.testing.assert_close(param.data, expected)


def test_adagrad_sparse_rows_only_touch_their_rows() -> None:
    param = torch.nn.Parameter(torch.ones(5, 2))
    opt = AdagradM([param], lr=0.5, momentum=0.0)
    rows = torch.tensor([[1, 3, 1]])  # row 1 twice: gradients add up before the update
    param.grad = torch.sparse_coo_tensor(rows, torch.ones(3, 2), (5, 2), check_invariants=True)
    opt.step()
    assert param.data[[0, 2, 4]].eq(1.0).all()
    torch.testing.assert_close(param.data[1], torch.full((2,), 1 - 0.5 * 2 / math.sqrt(4 + 1e-6)))
    torch.testing.assert_close(param.data[3], torch.full((2,), 1 - 0.5 / math.sqrt(1 + 1e-6)))


def test_bf16_mixed_precision_fits_both_regimes(tmp_path: Path) -> None:
    ds = _write_prepared(tmp_path / "ds")
    gru = GRU4RecConfig(n_items=N_ITEMS, layers=[16])
    gru_regime = SessionParallelConfig(batch_size=16, n_sample=8, sample_chunk=1024)
    sas = SASRecConfig(n_items=N_ITEMS, max_len=6, hidden=16, n_blocks=1)
    sas_regime = SequenceConfig(batch_size=16, ce_chunk=8)
    for module, datamodule in (
        (SessionParallelModule(gru, gru_regime), SessionParallelDataModule(gru, gru_regime, ds)),
        (SequenceModule(sas, sas_regime), SequenceDataModule(sas, sas_regime, ds)),
    ):
        trainer = _trainer(1, precision="bf16-mixed")
        trainer.fit(module, datamodule=datamodule)
        _check_metrics(trainer)
        assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_handles_sparse_item_gradients(algorithm: str) -> None:
    module = SessionParallelModule(
        GRU4RecConfig(n_items=6, layers=[3]), SessionParallelConfig(n_sample=2)
    )
    params = dict(module.named_parameters())
    for p in params.values():
        p.grad = torch.full_like(p, 3.0)
    rows = torch.tensor([[1, 4, 1]])  # row 1 twice: 6.0 after coalescing
    params["model.item_weight"].grad = torch.sparse_coo_tensor(
        rows, torch.full((3, 3), 3.0), (7, 3), check_invariants=True
    )

    def dense_grads() -> dict[str, torch.Tensor]:
        out = {}
        for n, p in params.items():
            assert p.grad is not None
            out[n] = p.grad.to_dense().clone()
        return out

    def norm(grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.flatten() for g in grads.values()]).norm()

    dense_before = dense_grads()
    norm_before = norm(dense_before)
    module.configure_gradient_clipping(None, 1.0, algorithm)  # type: ignore[arg-type]
    after = dense_grads()
    if algorithm == "value":
        assert all(bool(g.abs().max() <= 1.0) for g in after.values())
    else:
        assert float(norm(after)) == pytest.approx(1.0, rel=1e-4)
        for n in after:  # same direction
            torch.testing.assert_close(
                after[n] * norm_before, dense_before[n], rtol=1e-4, atol=1e-4
            )
    item_grad = params["model.item_weight"].grad
    assert item_grad is not None and item_grad.is_sparse

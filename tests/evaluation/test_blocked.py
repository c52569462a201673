"""The blocked scoring path of ``evaluate_model`` (dot-product models, catalogue in blocks):
the same ranks, metrics and predictions file as scoring with ``model.score`` in one piece, and
pessimistic ranks that equal a brute-force count, across ties, short last blocks, excluded
items, catalogues smaller than the list and the real GRU4Rec / SASRec."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shoprec.data.dataset import PreparedDataset
from shoprec.evaluation.evaluate import GROUP, _dot_blocks, _top_and_ranks, evaluate_model
from shoprec.evaluation.metrics import pessimistic_ranks, top_k_items
from shoprec.models.gru4rec import GRU4Rec, GRU4RecConfig
from shoprec.models.sasrec import SASRec, SASRecConfig
from tests.evaluation.test_evaluate import write_dataset


class DotTable:
    """Session vector = the last prefix item's row of ``emb``; scores ``v @ W.T + b``.
    Small integer-valued weights make exact ties common (the hard case for top-k and ranks)."""

    name = "dot_table"

    def __init__(self, emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.emb, self.weight, self.bias = emb, weight, bias
        self.n_items = weight.shape[0] - 1
        self.column_calls = 0

    def session_vectors(self, prefixes: torch.Tensor) -> torch.Tensor:
        return self.emb[prefixes[:, -1]]

    def score_columns(
        self, vectors: torch.Tensor, lo: int, hi: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.column_calls += 1
        scores = torch.addmm(self.bias[lo:hi].unsqueeze(0), vectors, self.weight[lo:hi].T)
        if lo == 0:
            scores[:, 0] = -math.inf
        if out is not None:
            out.copy_(scores)
            return out
        return scores

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        return self.score_columns(self.session_vectors(prefixes), 0, self.n_items + 1)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {"emb": self.emb, "weight": self.weight, "bias": self.bias}

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DotTable:
        return cls(tensors["emb"], tensors["weight"], tensors["bias"])


def _dataset(tmp_path: Path, n_items: int, seed: int = 0) -> tuple[PreparedDataset, list[Any]]:
    rng = np.random.default_rng(seed)
    ids = [str(1000 + i) for i in range(1, n_items + 1)]
    cases: list[tuple[list[int], int]] = []
    for c in range(90):
        length = int(rng.integers(1, 6))
        prefix = rng.integers(1, n_items + 1, size=length).tolist()
        target = 0 if c % 17 == 0 else int(rng.integers(1, n_items + 1))
        if c % 5 == 0:  # a repeat of a prefix item (matters when seen items are excluded)
            target = prefix[0]
        cases.append((prefix, target))
    train = [rng.integers(1, n_items + 1, size=4).tolist() for _ in range(40)]
    return write_dataset(tmp_path / f"ds{n_items}", ids, train, cases), cases


def _dot_table(n_items: int, dim: int = 3, seed: int = 0) -> DotTable:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randint(-2, 3, (n_items + 1, dim), generator=gen).float()
    weight = torch.randint(-2, 3, (n_items + 1, dim), generator=gen).float()
    bias = torch.randint(0, 2, (n_items + 1,), generator=gen).float()
    return DotTable(emb, weight, bias)


def _run(model: Any, ds: PreparedDataset, out: Path, **kw: Any) -> tuple[Any, list[float], str]:
    res = evaluate_model(model, ds, batch_size=16, predictions_out=out, **kw)
    return res.metrics, res.ranks.tolist(), out.read_text()


@pytest.mark.parametrize("n_items", [7, 20, 300, 1400])  # < list, < 21 groups, several blocks
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_blocked_equals_one_piece_with_ties(
    tmp_path: Path, n_items: int, exclude_seen: bool
) -> None:
    ds, _ = _dataset(tmp_path, n_items)
    model = _dot_table(n_items)
    whole = _run(model, ds, tmp_path / "whole.tsv", exclude_seen=exclude_seen, item_block=None)
    calls = model.column_calls
    for block in (64, 128, 4096):
        blocked = _run(
            model, ds, tmp_path / f"b{block}.tsv", exclude_seen=exclude_seen, item_block=block
        )
        assert blocked == whole
    assert model.column_calls > calls  # the blocked path ran


def test_blocked_ranks_equal_brute_force(tmp_path: Path) -> None:
    n_items = 300
    ds, cases = _dataset(tmp_path, n_items, seed=3)
    model = _dot_table(n_items, seed=3)
    res = evaluate_model(model, ds, batch_size=8, item_block=GROUP)
    assert res.timing["item_block"] == GROUP
    for (prefix, target), rank in zip(cases, res.ranks.tolist(), strict=True):
        if target == 0:
            assert rank == math.inf
            continue
        v = model.emb[prefix[-1]].double()
        row = model.weight[1:].double() @ v + model.bias[1:].double()
        assert rank == int((row >= row[target - 1]).sum())  # counts the target itself


def test_blocked_top_is_the_exact_top_with_index_ties(tmp_path: Path) -> None:
    """Many items tie at the 21st place: the list takes the lowest indices among them."""
    n_items = 500
    dim = 2
    emb = torch.ones(n_items + 1, dim)
    weight = torch.zeros(n_items + 1, dim)
    weight[[450, 7, 300], 0] = torch.tensor([3.0, 2.0, 1.0])  # three clear leaders
    model = DotTable(emb, weight, torch.zeros(n_items + 1))  # the other 497 tie at 0
    scratch: dict[str, torch.Tensor] = {}
    blocks = _dot_blocks(model, torch.tensor([[1], [2]]), n_items, 128, scratch)
    assert [lo for lo, _ in blocks] == [1, 129, 257, 385]  # the last block is short
    flag = torch.empty(2 * 128)
    top, ranks = _top_and_ranks(blocks, torch.tensor([450, 9]), n_items, flag, "dot")
    expected = [450, 7, 300, *[i for i in range(1, 30) if i != 7][:18]]
    assert top.tolist() == [expected, expected]
    assert ranks.tolist() == [1.0, float(n_items)]  # 9 ties with 496 others below 3 leaders


@pytest.mark.parametrize("n_items", [1400, 3000])  # >= 21 groups: the screen's theta is finite
def test_screened_top_equals_a_full_sort(n_items: int) -> None:
    """The group-maximum screen against the catalogue-wide reference (``top_k_items``, ties
    by column) and ``pessimistic_ranks``, on integer scores full of ties."""
    model = _dot_table(n_items, seed=7)
    gen = torch.Generator().manual_seed(7)
    batch = torch.randint(1, n_items + 1, (40, 3), generator=gen)
    targets = torch.randint(1, n_items + 1, (40,), generator=gen)
    full = model.score(batch)
    for block in (GROUP, 1024):
        blocks = _dot_blocks(model, batch, n_items, block, {})
        flag = torch.empty(40 * block)
        top, ranks = _top_and_ranks(blocks, targets, n_items, flag, "dot")
        assert top.tolist() == (top_k_items(full[:, 1:], 21) + 1).tolist()
        assert ranks.tolist() == pessimistic_ranks(full, targets).tolist()


def test_nan_scores_fail_loudly(tmp_path: Path) -> None:
    ds, _ = _dataset(tmp_path, 300)
    model = _dot_table(300)
    model.weight[5, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_model(model, ds, batch_size=16)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kind", ["gru4rec", "sasrec"])
def test_real_models_blocked_equals_one_piece(tmp_path: Path, kind: str) -> None:
    n_items = 300
    ds, _ = _dataset(tmp_path, n_items, seed=1)
    torch.manual_seed(0)
    model: Any
    if kind == "gru4rec":
        model = GRU4Rec(GRU4RecConfig(n_items=n_items, layers=[16]))
        with torch.no_grad():
            model.item_bias.normal_(0, 0.1)
    else:
        model = SASRec(SASRecConfig(n_items=n_items, hidden=16, max_len=8))
    model.eval()
    for exclude_seen in (False, True):
        whole = _run(model, ds, tmp_path / "w.tsv", exclude_seen=exclude_seen, item_block=None)
        blocked = _run(model, ds, tmp_path / "b.tsv", exclude_seen=exclude_seen, item_block=64)
        assert blocked == whole

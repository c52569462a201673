"""evaluate_model on hand-built prepared datasets: hand-computed ranks, chunking, predictions
file agreement with the independent scorer (``shared/tools/score_predictions.py``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from shoprec import schema
from shoprec.data.dataset import PreparedDataset
from shoprec.evaluation.evaluate import evaluate_model, lists_with_target
from shoprec.models.base import NextItemModel
from tests.conftest import REPO_ROOT, require

SCORER = REPO_ROOT.parent / "shared" / "tools" / "score_predictions.py"
NEG = float("-inf")


def write_dataset(
    root: Path,
    item_ids: list[str],
    train: list[list[int]],
    cases: list[tuple[list[int], int]],
    counts: list[int] | None = None,
) -> PreparedDataset:
    """A prepared dataset folder per ``shoprec.data.dataset``'s layout (cases: prefix, target)."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(item_ids)
    if counts is None:
        flat = [i for s in train for i in s]
        counts = [flat.count(i) for i in range(1, n + 1)]
    pl.DataFrame(
        {
            schema.ITEM_IDX: list(range(1, n + 1)),
            schema.ITEM_ID: item_ids,
            schema.ITEM_COUNT: counts,
        },
        schema=schema.ITEMS_SCHEMA,
    ).write_parquet(root / "items.parquet")
    pl.DataFrame(
        {
            schema.SESSION_ID: [str(s) for s, sess in enumerate(train) for _ in sess],
            schema.ITEM_ID: [item_ids[i - 1] for sess in train for i in sess],
            schema.ITEM_IDX: pl.Series([i for sess in train for i in sess], dtype=pl.Int32),
        }
    ).write_parquet(root / "train.parquet")
    pl.DataFrame(
        {
            schema.CASE_ID: list(range(len(cases))),
            schema.SESSION_ID: [f"t{c}" for c in range(len(cases))],
            schema.PREFIX_IDX: [p for p, _ in cases],
            schema.PREFIX_IDS: [[item_ids[i - 1] for i in p] for p, _ in cases],
            schema.TARGET_IDX: [t for _, t in cases],
            schema.TARGET_ID: [item_ids[t - 1] if t else "999999" for _, t in cases],
        },
        schema=schema.CASES_SCHEMA,
    ).write_parquet(root / "test_cases.parquet")
    manifest = {"name": "tiny", "split": {"kind": "given"}, "filters": {"min_item_support": 1}}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return PreparedDataset.open(root)


class TableModel:
    """Scores = ``table[last prefix item]``; records every batch it is given."""

    name = "table"

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.clone()
        self.table[:, 0] = NEG
        self.n_items = table.shape[1] - 1
        self.batches: list[tuple[int, ...]] = []
        self.seen: list[torch.Tensor] = []

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(prefixes.shape))
        self.seen.append(prefixes.clone())
        return self.table[prefixes[:, -1]]

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {"table": self.table}

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TableModel:
        return cls(tensors["table"])


# --- the tiny hand example ------------------------------------------------------------------
# rows: scores given the last prefix item (column 0 = padding)
TABLE = torch.tensor(
    [
        [NEG, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # empty prefix
        [NEG, 0.9, 0.5, 0.5, 0.5, 0.1, 0.0],  # last item 1
        [NEG, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        [NEG, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # last item 3: all tied at 0
        [NEG, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [NEG, 0.1, 0.2, 0.3, 0.4, 0.6, 0.5],  # last item 5
        [NEG, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
CASES = [
    ([1], 3),  # 0.5 tied with items 2, 4 and below item 1 -> rank 4
    ([2, 1], 1),  # 0.9 -> rank 1
    ([1], 0),  # target unseen in train -> inf
    ([3], 6),  # everything tied at 0 -> rank 6 (last of 6 items)
    ([4, 5], 5),  # 0.6, the best -> rank 1 (a repeat of a prefix item)
]
RANKS = [4.0, 1.0, math.inf, 6.0, 1.0]
RANKS_EXCLUDING_SEEN = [3.0, 6.0, math.inf, 5.0, 6.0]


@pytest.fixture()
def tiny(tmp_path: Path) -> PreparedDataset:
    ids = ["101", "102", "103", "104", "105", "106"]
    return write_dataset(tmp_path / "tiny", ids, [[1, 2], [1, 3, 1], [5]], CASES)


def test_hand_computed_ranks_and_metrics(tiny: PreparedDataset) -> None:
    model = TableModel(TABLE)
    assert isinstance(model, NextItemModel)
    res = evaluate_model(model, tiny, batch_size=2)
    assert res.ranks.tolist() == RANKS
    m = res.metrics
    n = 5
    assert m["test/hr@1"] == pytest.approx(2 / n)
    assert m["test/hr@5"] == pytest.approx(3 / n)
    assert m["test/hr@10"] == pytest.approx(4 / n)
    assert m["test/hr@20"] == pytest.approx(4 / n)
    assert m["test/mrr@5"] == pytest.approx((1 / 4 + 1 + 1) / n)
    assert m["test/mrr@20"] == pytest.approx((1 / 4 + 1 + 1 + 1 / 6) / n)
    assert m["test/ndcg@20"] == pytest.approx((1 / math.log2(5) + 1 + 1 + 1 / math.log2(7)) / n)
    # the 6-item catalogue is shorter than 20: every list holds all 6 items
    assert m["test/coverage@20"] == pytest.approx(1.0)
    # train counts 3, 1, 1, 0, 1, 0 -> percentiles 1, 5/6, 5/6, 2/6, 5/6, 2/6; every list
    # holds the whole catalogue
    assert m["test/popularity@20"] == pytest.approx((1 + 5 / 6 * 3 + 2 / 6 * 2) / 6)
    assert max(b[0] for b in model.batches) == 2  # chunked: never all cases at once


def test_protocol_is_recorded(tiny: PreparedDataset) -> None:
    res = evaluate_model(TableModel(TABLE), tiny)
    p = res.protocol
    assert p["split"] == "test"
    assert p["n_cases"] == 5
    assert p["n_items"] == 6
    assert p["unscorable_targets"] == 1
    assert p["tie_mode"] == "pessimistic"
    assert p["catalogue"] == "full"
    assert p["exclude_seen"] is False
    assert p["dataset"]["split"] == {"kind": "given"}
    assert p["dataset"]["filters"] == {"min_item_support": 1}
    assert res.timing["total_s"] >= res.timing["score_s"] >= 0
    json.dumps(res.to_dict())  # JSON-able


def test_exclude_seen(tiny: PreparedDataset) -> None:
    model = TableModel(TABLE)
    res = evaluate_model(model, tiny, exclude_seen=True)
    assert res.ranks.tolist() == RANKS_EXCLUDING_SEEN
    assert res.protocol["exclude_seen"] is True
    assert model.table[1, 1].item() == pytest.approx(0.9)  # the model's tensor is untouched


def test_predictions_file_format_and_consistency(tiny: PreparedDataset, tmp_path: Path) -> None:
    out = tmp_path / "pred" / "predictions.tsv"
    evaluate_model(TableModel(TABLE), tiny, predictions_out=out)
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    lists = [ln.split("\t")[0].split() for ln in lines]
    ranks = [ln.split("\t")[1] for ln in lines]
    assert ranks == ["4", "1", "inf", "6", "1"]
    # case 0: 101 (0.9) first, then the 0.5 tie: 102, 104 by index and the target 103 last
    assert lists[0] == ["101", "102", "104", "103", "105", "106"]
    # case 3: everything tied; the target 106 sits at its pessimistic rank 6
    assert lists[3] == ["101", "102", "103", "104", "105", "106"]
    assert lists[4][0] == "105"


def test_max_prefix_len_and_left_padding(tiny: PreparedDataset) -> None:
    model = TableModel(TABLE)
    evaluate_model(model, tiny, max_prefix_len=1, batch_size=5)
    assert model.seen[0].tolist() == [[1], [1], [1], [3], [5]]
    model = TableModel(TABLE)
    evaluate_model(model, tiny, batch_size=5)
    assert model.seen[0].tolist() == [[0, 1], [2, 1], [0, 1], [0, 3], [4, 5]]


def test_bad_models_fail_loudly(tiny: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_items"):
        evaluate_model(TableModel(TABLE[:, :5]), tiny)
    bad = TABLE.clone()
    bad[1, 2] = float("nan")
    out = tmp_path / "p.tsv"
    with pytest.raises(ValueError, match="NaN"):
        evaluate_model(TableModel(bad), tiny, predictions_out=out)
    assert not out.exists() and not list(tmp_path.glob("p.tsv*"))  # no half-written file


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes(tiny: PreparedDataset, dtype: torch.dtype) -> None:
    res = evaluate_model(TableModel(TABLE.to(dtype)), tiny)
    assert res.ranks.tolist() == RANKS


def test_lists_with_target_places_target_at_its_rank() -> None:
    top = np.arange(1, 22).reshape(1, 21).repeat(3, axis=0)
    # target 5 tied with items 6..9 (rank 9): it moves behind them
    lists = lists_with_target(top, np.array([5, 30, 20]), np.array([9.0, 2.0, 40.0]))
    assert lists.shape == (3, 20)
    assert lists[0].tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 5, *range(10, 21)]
    assert lists[1].tolist() == [1, 30, *range(2, 20)]
    # rank beyond 20: the target (tied at the boundary) leaves the list
    assert lists[2].tolist() == [*range(1, 20), 21]


# --- a larger random example: chunking, the scorer --------------------------------------------
N_ITEMS = 40


@pytest.fixture()
def random_case(tmp_path: Path) -> tuple[PreparedDataset, TableModel, list[tuple[list[int], int]]]:
    rng = np.random.default_rng(7)
    table = torch.from_numpy(rng.integers(0, 4, size=(N_ITEMS + 1, N_ITEMS + 1))).float()
    table[:, 0] = NEG
    cases: list[tuple[list[int], int]] = []
    for _ in range(120):
        prefix = rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 6))).tolist()
        target = int(rng.integers(0, N_ITEMS + 1)) if rng.random() < 0.9 else 0
        cases.append((prefix, target))
    ids = [str(1000 + 7 * i) for i in range(N_ITEMS)]
    train = [rng.integers(1, N_ITEMS + 1, size=4).tolist() for _ in range(50)]
    ds = write_dataset(tmp_path / "rand", ids, train, cases)
    return ds, TableModel(table), cases


def test_chunk_size_does_not_change_results(
    random_case: tuple[PreparedDataset, TableModel, list[tuple[list[int], int]]],
    tmp_path: Path,
) -> None:
    ds, model, _ = random_case
    results = []
    for bs in (1, 7, 512):
        out = tmp_path / f"p{bs}.tsv"
        res = evaluate_model(model, ds, batch_size=bs, predictions_out=out)
        results.append((res.metrics, res.ranks.tolist(), out.read_text()))
    assert results[0] == results[1] == results[2]


def test_ranks_equal_brute_force(
    random_case: tuple[PreparedDataset, TableModel, list[tuple[list[int], int]]],
) -> None:
    ds, model, cases = random_case
    res = evaluate_model(model, ds, batch_size=16)
    for (prefix, target), rank in zip(cases, res.ranks.tolist(), strict=True):
        row = model.table[prefix[-1]].tolist()
        if target == 0:
            assert rank == math.inf
        else:
            expected = 1 + sum(
                1 for j in range(1, N_ITEMS + 1) if j != target and row[j] >= row[target]
            )
            assert rank == expected


def test_independent_scorer_agrees(
    random_case: tuple[PreparedDataset, TableModel, list[tuple[list[int], int]]],
    tmp_path: Path,
) -> None:
    require(SCORER.is_file(), f"independent scorer not found at {SCORER}")
    ds, model, cases = random_case
    ids = ds.item_ids()
    test_tsv = tmp_path / "test.tsv"
    rows = ["prefix\ttarget"]
    for prefix, target in cases:
        rows.append(" ".join(ids[i] for i in prefix) + "\t" + (ids[target] if target else "9"))
    test_tsv.write_text("\n".join(rows) + "\n")
    pred = tmp_path / "pred.tsv"
    res = evaluate_model(model, ds, batch_size=32, predictions_out=pred)
    # with the rank column (pessimistic full-catalogue ranks) ...
    proc = subprocess.run(
        [sys.executable, str(SCORER), "--test", str(test_tsv), "--pred", str(pred)],
        check=True,
        capture_output=True,
        text=True,
    )
    theirs = json.loads(proc.stdout)
    assert theirs["unscorable_targets"] == sum(1 for _, t in cases if t == 0)
    for k in (1, 5, 10, 20):
        for ours, name in (("hr", "HR"), ("mrr", "MRR"), ("ndcg", "NDCG")):
            assert abs(res.metrics[f"test/{ours}@{k}"] - theirs[f"{name}@{k}"]) < 1e-4
    # ... and from the lists alone: the target sits at its pessimistic rank whenever <= 20
    lists_only = tmp_path / "lists_only.tsv"
    lists_only.write_text("".join(ln.split("\t")[0] + "\n" for ln in pred.read_text().splitlines()))
    proc = subprocess.run(
        [sys.executable, str(SCORER), "--test", str(test_tsv), "--pred", str(lists_only)],
        check=True,
        capture_output=True,
        text=True,
    )
    from_lists = json.loads(proc.stdout)
    for k in (1, 5, 10, 20):
        assert abs(res.metrics[f"test/hr@{k}"] - from_lists[f"HR@{k}"]) < 1e-12
        assert abs(res.metrics[f"test/mrr@{k}"] - from_lists[f"MRR@{k}"]) < 1e-12

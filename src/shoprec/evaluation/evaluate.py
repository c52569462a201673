"""Honest next-item evaluation: every case ranked against the full catalogue, pessimistic ties.

No sampled metrics (Krichene & Rendle, KDD 2020): for every test case the model scores all
``n_items`` items and the target's rank is ``1 + #(other items with score >= target's)``
(:func:`shoprec.evaluation.metrics.pessimistic_ranks`). Cases are processed in chunks of
``batch_size`` so memory stays bounded by ``batch_size x n_items`` scores, never
``n_cases x n_items``. The default of 128 keeps a chunk of a 43k-item catalogue (22 MB of
float32) under glibc's 32 MB mmap threshold: larger chunks are mapped fresh and page-faulted
on every call (allocating 512-row chunks measured ~5x slower per case on a 2-core VM). A
target unseen in train (``target_idx == 0``) cannot be scored and counts as a miss. The
protocol (split, counts, tie mode, exclusion of already-seen items, the dataset's split and
filter report) is stored with the numbers.

A model that scores by a dot product (GRU4Rec, SASRec: ``session_vectors`` and
``score_columns``) is scored in blocks of ``item_block`` catalogue columns: the same float32
product, block by block, so each block's output stays in the CPU cache while its top-k is
taken (measured 1.3-1.5x faster on the 43k-item Diginetica product here); the blocks are kept
(``batch_size x n_items`` floats, as the one-piece product) and the target's rank is counted over
them against the target's own score read from them. Ranks and lists are those of
``model.score`` (tested): only the memory traffic changes.

The optional predictions file is what ``shared/tools/score_predictions.py`` reads: one line per
case in case order, the top-20 original item ids separated by spaces, a TAB, and the target's
pessimistic rank (``inf`` when unscorable). In the list, ties are broken by item index, except
that the target is placed *last* among the items tied with it; so whenever ``rank <= 20`` the
target sits at exactly position ``rank``, and otherwise it is not in the list. The list and the
rank column therefore tell the same story to any scorer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoprec import schema
from shoprec.data.dataset import PreparedDataset
from shoprec.evaluation.metrics import (
    CUTOFFS,
    popularity_percentiles,
    rank_metrics,
)
from shoprec.models.base import SCORE_BLOCK, NextItemModel, is_dot_product

__all__ = ["LIST_LENGTH", "EvaluationResult", "evaluate_model", "lists_with_target"]

LIST_LENGTH = 20  # length of the recommendation lists (coverage@20, popularity@20, predictions)

# manifest entries copied into the protocol (besides every "*split*" / "*filter*" entry)
_MANIFEST_KEYS = (
    "name",
    "config_path",
    "sources",  # paths and sha256 of the source files: the dataset's identity
    "synthetic_timestamps",
    "unscorable_targets",
    "prefix_items_removed",
    "created_at",
)


@dataclass
class EvaluationResult:
    """Metrics (``{split}/hr@20`` ...), the protocol they were measured under, timings, ranks."""

    metrics: dict[str, float]
    protocol: dict[str, Any]
    timing: dict[str, float]
    ranks: np.ndarray = field(repr=False)  # pessimistic rank per case, inf = unscorable

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-case ranks)."""
        return {"metrics": self.metrics, "protocol": self.protocol, "timing": self.timing}


def lists_with_target(
    top: np.ndarray, targets: np.ndarray, ranks: np.ndarray, length: int = LIST_LENGTH
) -> np.ndarray:
    """Top-``length`` lists consistent with pessimistic ranks.

    ``top`` holds each row's best ``length + 1`` item indices (score descending, ties by index),
    ``ranks`` the targets' pessimistic ranks. The target is removed from its row and, when its
    rank ``r <= length``, re-inserted at position ``r`` (after all ``r - 1`` other items scoring
    at least as high); otherwise the list holds only other items.

    >>> top = np.array([[7, 3, 5, 9], [7, 3, 5, 9], [7, 3, 5, 9]])
    >>> lists_with_target(top, np.array([3, 9, 4]), np.array([3.0, 5.0, np.inf]), length=3)
    array([[7, 5, 3],
           [7, 3, 5],
           [7, 3, 5]])
    """
    n_rows, width = top.shape
    m = min(length, width)
    is_t = top == targets[:, None]
    order = np.argsort(is_t, axis=1, kind="stable")  # the target (if present) moves last
    others = np.take_along_axis(top, order, axis=1)
    finite = np.isfinite(ranks)
    r0 = np.where(finite & (ranks <= m), np.where(finite, ranks, 1.0) - 1.0, m).astype(np.int64)
    out = np.empty((n_rows, m), dtype=top.dtype)
    for j in range(m):
        prev = others[:, j - 1] if j > 0 else others[:, 0]
        out[:, j] = np.where(j < r0, others[:, j], np.where(j == r0, targets, prev))
    return out


def _pad_chunk(
    flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, max_len: int | None
) -> torch.Tensor:
    """Left-pad the prefixes ``flat[offsets[i]:offsets[i] + lengths[i]]`` (as ``left_pad``).

    >>> _pad_chunk(np.array([1, 2, 3, 4]), np.array([0, 3]), np.array([3, 1]), None).tolist()
    [[1, 2, 3], [0, 0, 4]]
    >>> _pad_chunk(np.array([1, 2, 3, 4]), np.array([0, 3]), np.array([3, 1]), 2).tolist()
    [[2, 3], [0, 4]]
    """
    keep = lengths if max_len is None else np.minimum(lengths, max_len)
    starts = offsets + lengths - keep
    width = max(int(keep.max(initial=0)), 1)
    out = np.zeros((lengths.size, width), dtype=np.int64)
    total = int(keep.sum())
    if total:
        owner = np.repeat(np.arange(lengths.size), keep)
        within = np.arange(total) - np.repeat(np.cumsum(keep) - keep, keep)
        out[owner, width - keep[owner] + within] = flat[starts[owner] + within]
    return torch.from_numpy(out)


def _format_rank(rank: float) -> str:
    return "inf" if not math.isfinite(rank) else str(int(rank))


def _dataset_info(dataset: PreparedDataset) -> dict[str, Any]:
    """The manifest's identity, split and filter reports (whatever of them it has)."""
    info: dict[str, Any] = {"root": str(dataset.root)}
    try:
        manifest = dataset.manifest
    except (OSError, ValueError):
        return info
    for key, value in manifest.items():
        lowered = key.lower()
        if key in _MANIFEST_KEYS or "split" in lowered or "filter" in lowered:
            info[key] = value
    config = manifest.get("config")
    if isinstance(config, dict):
        for key in ("name", "split", "filters"):
            if key in config:
                info[f"config.{key}"] = config[key]
    return json.loads(json.dumps(info, default=str))


ITEM_BLOCK = SCORE_BLOCK  # catalogue columns per scoring block
GROUP = 64  # columns per group whose maximum screens the top-k candidates (divides blocks)


def _scratch(
    scratch: dict[str, torch.Tensor], name: str, size: int, device: torch.device
) -> torch.Tensor:
    """A reusable float32 scratch tensor of at least ``size`` elements on ``device``."""
    have = scratch.get(name)
    if have is None or have.device != device or have.numel() < size:
        have = scratch[name] = torch.empty(size, dtype=torch.float32, device=device)
    return have


def _top_of_triplets(
    rows: torch.Tensor, cols: torch.Tensor, scores: torch.Tensor, n_rows: int, k: int
) -> torch.Tensor:
    """Per row, the ``k`` best of its ``(row, column, score)`` candidates: score descending,
    equal scores by column ascending (as :func:`top_k_items`). Every row needs ``>= k``.

    >>> r = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> c = torch.tensor([4, 7, 9, 2, 3, 5])
    >>> s = torch.tensor([3.0, 3.0, 1.0, 0.0, 2.0, 2.0])
    >>> _top_of_triplets(r, c, s, 2, 2).tolist()
    [[4, 7], [3, 5]]
    """
    order = torch.sort(cols, stable=True).indices  # column ascending ...
    order = order[torch.sort(scores[order], descending=True, stable=True).indices]  # ... score
    order = order[torch.sort(rows[order], stable=True).indices]  # ... and grouped by row
    r = rows[order]
    counts = torch.bincount(r, minlength=n_rows)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(r.numel(), device=r.device) - start[r]
    keep = pos < k
    top = torch.zeros((n_rows, k), dtype=torch.long, device=rows.device)
    top[r[keep], pos[keep]] = cols[order][keep]
    return top


def _dot_blocks(
    model: Any, batch: torch.Tensor, n_items: int, block: int, scratch: dict[str, torch.Tensor]
) -> list[tuple[int, torch.Tensor]]:
    """The scores of columns ``1..n_items`` as ``(first column, (B, width))`` blocks, each
    computed by the model's own product (``score_columns``) into one contiguous stretch of
    reusable scratch memory."""
    vectors = model.session_vectors(batch)
    rows = vectors.shape[0]
    store = _scratch(scratch, "store", rows * n_items, vectors.device)
    blocks: list[tuple[int, torch.Tensor]] = []
    offset = 0
    for lo in range(1, n_items + 1, block):
        hi = min(lo + block, n_items + 1)
        out = store[offset : offset + rows * (hi - lo)].view(rows, hi - lo)
        offset += rows * (hi - lo)
        model.score_columns(vectors, lo, hi, out=out)
        blocks.append((lo, out))
    return blocks


def _exclude_seen(blocks: list[tuple[int, torch.Tensor]], batch: torch.Tensor) -> None:
    """Scores of the items in each row's prefix set to ``-inf``, in place."""
    for lo, out in blocks:
        cols = batch.to(out.device) - lo
        r, c = torch.nonzero((cols >= 0) & (cols < out.shape[1]) & (batch > 0), as_tuple=True)
        out[r, cols[r, c]] = -math.inf


def _top_and_ranks(
    blocks: list[tuple[int, torch.Tensor]],
    targets: torch.Tensor,
    n_items: int,
    flag: torch.Tensor,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top (B, 21) item indices, pessimistic ranks (B,))`` from the score ``blocks`` of one
    chunk: ``(first column, (B, width))`` pairs that cover columns ``1..n_items`` in order.

    The top 21 without a sort of the catalogue: the maximum of every group of ``GROUP``
    columns is kept, and per row ``theta`` = the 21st largest group maximum. 21 distinct items
    score at least ``theta``, so the top 21 (and every item tied with the 21st) lie in the
    groups whose maximum reaches ``theta``: only those are read again, and their items at or
    above ``theta`` are ordered by score, then column (:func:`_top_of_triplets`). The rank
    counts, per row, the items scoring at least the target's score, read from the same blocks:
    so the lists and the ranks come from exactly the same numbers. ``flag``: float32 scratch
    of at least ``B x`` the widest block.
    """
    rows = blocks[0][1].shape[0]
    device = blocks[0][1].device
    width = min(LIST_LENGTH + 1, n_items)
    tgt = targets.to(device=device, dtype=torch.long)
    dtype = blocks[0][1].dtype  # targets and candidates stay in the scores' own precision
    target_scores = torch.full((rows,), math.nan, dtype=dtype, device=device)
    group_max: list[torch.Tensor] = []
    group_block: list[int] = []  # per group: its block's position in ``blocks``
    group_start: list[int] = []  # per group: its first column within the block
    for j, (lo, out) in enumerate(blocks):
        w = out.shape[1]
        full = w // GROUP * GROUP
        if full:
            group_max.append(out[:, :full].reshape(rows, -1, GROUP).amax(dim=2))
        if full < w:
            group_max.append(out[:, full:].amax(dim=1, keepdim=True))
        starts = list(range(0, w, GROUP))
        group_block += [j] * len(starts)
        group_start += starts
        here = torch.nonzero((tgt >= lo) & (tgt < lo + w)).reshape(-1)
        if here.numel():
            target_scores[here] = out[here, tgt[here] - lo]
    gmax = torch.cat(group_max, dim=1)  # (B, n_groups)
    if bool(torch.isnan(gmax).any()):
        raise ValueError(f"{name} returned NaN scores")
    if gmax.shape[1] >= width:
        theta = torch.topk(gmax, width, dim=1, sorted=False).values.amin(dim=1)
    else:  # fewer groups than list places: every item is a candidate
        theta = torch.full((rows,), -math.inf, dtype=gmax.dtype, device=device)
    sel_rows, sel_groups = torch.nonzero(gmax >= theta.unsqueeze(1), as_tuple=True)
    g_block = torch.tensor(group_block, device=device)[sel_groups]
    g_start = torch.tensor(group_start, device=device)[sel_groups]
    span = torch.arange(GROUP, device=device)
    cand_rows: list[torch.Tensor] = []
    cand_cols: list[torch.Tensor] = []
    cand_scores: list[torch.Tensor] = []
    for j, (lo, out) in enumerate(blocks):
        mine = torch.nonzero(g_block == j).reshape(-1)
        if not mine.numel():
            continue
        r = sel_rows[mine]
        local = g_start[mine].unsqueeze(1) + span  # (G, GROUP)
        valid = local < out.shape[1]  # a block's last group may be short
        vals = out[r.unsqueeze(1), local.clamp(max=out.shape[1] - 1)]
        kr, kc = torch.nonzero(valid & (vals >= theta[r].unsqueeze(1)), as_tuple=True)
        cand_rows.append(r[kr])
        cand_cols.append(lo + local[kr, kc])
        cand_scores.append(vals[kr, kc])
    top = _top_of_triplets(
        torch.cat(cand_rows), torch.cat(cand_cols), torch.cat(cand_scores), rows, width
    )
    scorable = tgt > 0
    if bool(torch.isnan(target_scores[scorable]).any()):
        raise ValueError("a target's score is NaN")
    counts = torch.zeros(rows, dtype=torch.float32, device=device)  # exact below 2**24
    column = target_scores.unsqueeze(1)
    for _, out in blocks:
        hits = flag[: out.numel()].view(out.shape)
        torch.ge(out, column, out=hits)  # counting through floats: see pessimistic_ranks
        counts += hits.sum(dim=1)
    ranks = counts.to(torch.float64).masked_fill_(~scorable, math.inf)
    return top, ranks


def evaluate_model(
    model: NextItemModel,
    dataset: PreparedDataset,
    split: str = "test",
    batch_size: int = 128,
    exclude_seen: bool = False,
    predictions_out: Path | None = None,
    max_prefix_len: int | None = None,
    cutoffs: Sequence[int] = CUTOFFS,
    item_block: int | None = ITEM_BLOCK,
) -> EvaluationResult:
    """Rank every case of ``split`` against the full catalogue and compute the metrics.

    ``exclude_seen`` sets the scores of items already in the prefix to ``-inf`` (a target that
    repeats a prefix item then ranks last); it is recorded in the protocol. ``max_prefix_len``
    keeps only the last items of each prefix (as ``models.base.left_pad``). Returns
    ``{split}/hr@K``, ``mrr@K``, ``ndcg@K`` for every cutoff, ``{split}/coverage@20`` and
    ``{split}/popularity@20`` (mean train popularity percentile of the recommended top-20
    items; 1.0 = the most popular item). ``item_block``: catalogue columns per block (rounded
    up to a multiple of ``GROUP``); dot-product models are scored block by block, unless it is
    ``None`` or 0 (then ``model.score`` in one piece, read in blocks of ``ITEM_BLOCK``). The
    results are the same either way.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if max_prefix_len is not None and max_prefix_len < 1:
        raise ValueError("max_prefix_len must be >= 1 (or None for whole prefixes)")
    n_items = dataset.n_items
    if int(model.n_items) != n_items:
        raise ValueError(f"model has n_items={model.n_items}, dataset has {n_items}")
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    cases = dataset.cases(split)
    prefix_col = cases.get_column(schema.PREFIX_IDX)
    lengths = prefix_col.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = prefix_col.explode().drop_nulls().to_numpy().astype(np.int64)
    if flat.size != int(lengths.sum()):
        raise ValueError(f"{split} cases: prefix_idx lists hold nulls")
    offsets = np.cumsum(lengths) - lengths
    targets = cases.get_column(schema.TARGET_IDX).to_numpy().astype(np.int64)
    n_cases = len(targets)
    if n_cases and (targets.min() < 0 or targets.max() > n_items or flat.min(initial=1) < 0):
        raise ValueError(f"{split} cases hold item indices outside 0..{n_items}")
    counts = np.zeros(n_items + 1, dtype=np.int64)
    items = dataset.items
    counts[items.get_column(schema.ITEM_IDX).to_numpy()] = items.get_column(
        schema.ITEM_COUNT
    ).to_numpy()
    # percentile * n_items is an integer: summing those keeps popularity@20 exact and
    # independent of the chunking
    pct_units = np.rint(popularity_percentiles(counts) * n_items).astype(np.int64)
    item_ids = dataset.item_ids() if predictions_out is not None else None

    ranks = np.empty(n_cases, dtype=np.float64)
    recommended = np.zeros(n_items + 1, dtype=bool)
    pop_units = 0
    pop_n = 0
    pred_tmp: Path | None = None
    pred_file = None
    if predictions_out is not None:  # streamed to a temporary file, renamed when complete
        pred_tmp = Path(predictions_out).with_name(Path(predictions_out).name + ".tmp")
        pred_tmp.parent.mkdir(parents=True, exist_ok=True)
        pred_file = open(pred_tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    score_s = 0.0
    blocked = bool(item_block) and is_dot_product(model)
    block = max(GROUP, -(-int(item_block or ITEM_BLOCK) // GROUP) * GROUP)  # a multiple of GROUP
    scratch: dict[str, torch.Tensor] = {}  # the blocked path's reusable tensors

    def _collect(top: torch.Tensor, chunk_ranks: np.ndarray, lo: int, hi: int) -> None:
        nonlocal pop_units, pop_n
        ranks[lo:hi] = chunk_ranks
        top_np = top.cpu().numpy()
        shown = top_np[:, :LIST_LENGTH]  # the target-agnostic lists a user would see
        recommended[shown.reshape(-1)] = True
        pop_units += int(pct_units[shown].sum())
        pop_n += shown.size
        if pred_file is not None and item_ids is not None:
            lists = lists_with_target(top_np, targets[lo:hi], chunk_ranks)
            id_rows = item_ids[lists]
            pred_file.write(
                "".join(
                    " ".join(row) + "\t" + _format_rank(r) + "\n"
                    for row, r in zip(id_rows.tolist(), chunk_ranks.tolist(), strict=True)
                )
            )

    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, n_cases, batch_size):
                hi = min(lo + batch_size, n_cases)
                batch = _pad_chunk(flat, offsets[lo:hi], lengths[lo:hi], max_prefix_len)
                tgt = torch.from_numpy(targets[lo:hi])
                t0 = time.perf_counter()
                if blocked:
                    blocks = _dot_blocks(model, batch, n_items, block, scratch)
                    score_s += time.perf_counter() - t0
                else:
                    scores = model.score(batch)
                    score_s += time.perf_counter() - t0
                    if scores.shape != (hi - lo, n_items + 1) or not scores.is_floating_point():
                        raise ValueError(
                            f"{model.name}.score returned {tuple(scores.shape)} "
                            f"{scores.dtype}, expected float ({hi - lo}, {n_items + 1})"
                        )
                    scores = scores.detach()
                    if exclude_seen:  # never write into a tensor the model may keep
                        scores = scores.clone()
                    blocks = [(c, scores[:, c : c + block]) for c in range(1, n_items + 1, block)]
                if exclude_seen:
                    _exclude_seen(blocks, batch)
                device = blocks[0][1].device
                flag = _scratch(scratch, "flag", (hi - lo) * min(block, n_items), device)
                top, chunk_ranks = _top_and_ranks(blocks, tgt, n_items, flag, model.name)
                del blocks
                _collect(top, chunk_ranks.cpu().numpy(), lo, hi)
    except BaseException:
        if pred_file is not None:
            pred_file.close()
            pred_file = None
        if pred_tmp is not None:
            pred_tmp.unlink(missing_ok=True)
        raise
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
        if pred_file is not None:
            pred_file.close()
    if predictions_out is not None and pred_tmp is not None:
        pred_tmp.replace(predictions_out)
    total_s = time.perf_counter() - t_start
    cpu_s = time.process_time() - cpu_start

    metrics = rank_metrics(ranks, cutoffs, prefix=f"{split}/")
    recommended[0] = False
    metrics[f"{split}/coverage@{LIST_LENGTH}"] = float(recommended.sum() / n_items)
    metrics[f"{split}/popularity@{LIST_LENGTH}"] = pop_units / (pop_n * n_items) if pop_n else 0.0
    unscorable = int((targets == 0).sum())
    protocol: dict[str, Any] = {
        "split": split,
        "n_cases": n_cases,
        "n_items": n_items,
        "unscorable_targets": unscorable,
        "tie_mode": "pessimistic",
        "catalogue": "full",
        "exclude_seen": exclude_seen,
        "max_prefix_len": max_prefix_len,
        "cutoffs": list(cutoffs),
        "list_length": LIST_LENGTH,
        "popularity": "mean train-count percentile of the top-20 items",
        "model": model.name,
        "dataset": _dataset_info(dataset),
    }
    timing = {
        "total_s": total_s,
        "score_s": score_s,
        "cpu_s": cpu_s,  # process CPU time (all threads): steadier than wall on a shared machine
        "cases_per_s": n_cases / total_s if total_s > 0 else float("inf"),
        "item_block": float(block if blocked else 0),  # 0: model.score in one piece
    }
    return EvaluationResult(metrics=metrics, protocol=protocol, timing=timing, ranks=ranks)

"""Session-based kNN: SKNN and V-SKNN, vectorised over a batch of session prefixes.

References:
    Jannach & Ludewig, "When Recurrent Neural Networks meet the Neighborhood for Session-Based
    Recommendation", RecSys 2017 (SKNN).
    Ludewig & Jannach, "Evaluation of session-based recommendation algorithms", UMUAI 2018
    (SKNN, V-SKNN and the session-rec framework).
    Ludewig, Mauro, Latifi & Jannach, "Performance comparison of neural and non-neural
    approaches to session-based recommendation", RecSys 2019.

Both follow session-rec's ``ContextKNN`` (``knn/sknn.py``) and ``VMContextKNN``
(``knn/vsknn.py``) with their published defaults (k=100, sample_size=500, sampling 'recent';
V-SKNN: weighting 'div', weighting_score 'div', idf weighting off, remind on):

1. candidates: the train sessions sharing at least one item with the current prefix; when there
   are more than ``sample_size``, the most recent ``sample_size`` of them (recency = train
   session order, later = more recent);
2. similarity between the prefix's item *set* and a candidate's item set:
   SKNN: cosine ``|a & b| / sqrt(|a| |b|)`` (session-rec computes ``|a&b| / sqrt(|b|) * sqrt(|a|)``,
   an operator-precedence slip that is a per-prefix constant factor away from the cosine, so the
   neighbours and the item ranking are identical); V-SKNN: the sum over shared items of the
   prefix item's position weight (``div``: ``i / L`` for the item's last position ``i`` of
   ``L`` clicks, so the most recent item weighs 1), divided by the prefix's number of distinct
   items (session-rec's ``vec``);
3. the ``k`` most similar candidates are the neighbours (ties: the more recent session first;
   session-rec leaves them to set-iteration order);
4. item score = sum over neighbours containing the item of the neighbour's similarity; V-SKNN
   multiplies by ``weighting_score(step)`` where ``step`` is how far back (1 = the last click)
   the most recent prefix item shared with that neighbour is (``div``: ``1/step``), and
   optionally by ``1 + idf_weighting * idf(item)`` with ``idf = log(n_sessions / clicks)``.
   Items of the prefix itself keep their score (session-rec's SKNN never filters them; V-SKNN's
   ``remind=True`` default keeps them too). Items no neighbour holds score 0.

session-rec divides the final scores by their maximum (``normalize``); that does not change a
ranking and is left out.

Implementation: a CSR session -> distinct items matrix and an item -> sessions inverted index
(sessions ascending). Per item only its ``sample_size`` most recent sessions are ever expanded:
a session among the ``sample_size`` most recent of the union is among the ``sample_size`` most
recent of every item list that holds it, so the capped expansion yields exactly the same sample,
overlaps and similarities. Candidate pairs of a whole batch are grouped with one stable sort.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from shoprec.config import StrictModel

__all__ = ["SKNN", "VSKNN", "SKNNConfig", "SessionIndex", "VSKNNConfig"]

Decay = Literal["div", "same", "linear", "log", "quadratic"]


class SKNNConfig(StrictModel):
    """Session-kNN (session-rec ``ContextKNN``) knobs; defaults as published."""

    k: int = Field(default=100, ge=1)  # neighbours
    sample_size: int = Field(default=500, ge=0)  # most recent candidates; 0 = all of them
    similarity: Literal["cosine", "jaccard"] = "cosine"


class VSKNNConfig(StrictModel):
    """Vector multiplication session-kNN (session-rec ``VMContextKNN``) knobs."""

    k: int = Field(default=100, ge=1)
    sample_size: int = Field(default=500, ge=0)
    weighting: Decay = "div"  # position weight of the prefix's items in the similarity
    weighting_score: Decay = "div"  # neighbour's weight by how recent the shared item is
    idf_weighting: float = Field(default=0.0, ge=0.0)  # 0 = off (session-rec's default)
    remind: bool = True  # keep scoring items already in the prefix (session-rec's default)


def position_weight(kind: str, pos: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Weight of a prefix item at 1-based position ``pos`` of ``length`` clicks (session-rec).

    ``linear`` is ``1 - 0.1 * (L - i)`` clipped at 0, i.e. the last 10 clicks count
    (session-rec's version zeroes positions ``i > 10`` instead, which for sessions longer than
    10 drops the most recent clicks; read as a slip and not copied).

    >>> position_weight("div", np.array([1, 2, 4]), np.array([4, 4, 4])).tolist()
    [0.25, 0.5, 1.0]
    >>> position_weight("linear", np.array([1, 10]), np.array([10, 10])).round(2).tolist()
    [0.1, 1.0]
    """
    p = pos.astype(np.float64)
    n = length.astype(np.float64)
    if kind == "div":
        return p / n
    if kind == "same":
        return np.ones_like(p)
    if kind == "linear":
        return np.clip(1.0 - 0.1 * (n - p), 0.0, None)
    if kind == "log":
        return 1.0 / np.log10((n - p) + 1.7)
    if kind == "quadratic":
        return (p / n) ** 2
    raise ValueError(f"unknown weighting {kind!r}")


def step_weight(kind: str, step: np.ndarray) -> np.ndarray:
    """Neighbour weight when the most recent shared prefix item is ``step`` clicks back (1 = last).

    ``linear`` is session-rec's ``1 - 0.1 * step`` clipped at 0 (session-rec lets it turn
    negative for steps 11..100).

    >>> step_weight("div", np.array([1, 2, 4])).tolist()
    [1.0, 0.5, 0.25]
    """
    s = step.astype(np.float64)
    if kind == "div":
        return 1.0 / s
    if kind == "same":
        return np.ones_like(s)
    if kind == "linear":
        return np.clip(1.0 - 0.1 * s, 0.0, None)
    if kind == "log":
        return 1.0 / np.log10(s + 1.7)
    if kind == "quadratic":
        return 1.0 / (s * s)
    raise ValueError(f"unknown weighting_score {kind!r}")


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) for the concatenation of ``range(starts[i], starts[i] + counts[i])``.

    >>> o, ix = _ranges(np.array([5, 0]), np.array([2, 3]))
    >>> o.tolist(), ix.tolist()
    ([0, 0, 1, 1, 1], [5, 6, 0, 1, 2])
    """
    counts = counts.astype(np.int64, copy=False)
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    index = np.arange(total, dtype=np.int64) - offsets[owner] + starts.astype(np.int64)[owner]
    return owner, index


class SessionIndex:
    """Train sessions as a CSR session -> distinct items matrix plus the inverted index."""

    def __init__(
        self,
        session_indptr: np.ndarray,
        session_items: np.ndarray,
        item_counts: np.ndarray,
    ) -> None:
        self.session_indptr = np.asarray(session_indptr, dtype=np.int64)
        self.session_items = np.asarray(session_items, dtype=np.int64)
        self.item_counts = np.asarray(item_counts, dtype=np.int64)
        self.n_items = int(self.item_counts.size - 1)
        self.n_sessions = int(self.session_indptr.size - 1)
        if self.session_indptr[0] != 0 or self.session_indptr[-1] != self.session_items.size:
            raise ValueError("session_indptr does not match session_items")
        if self.session_items.size and (
            self.session_items.min() < 1 or self.session_items.max() > self.n_items
        ):
            raise ValueError(f"session items must lie in 1..{self.n_items}")
        self.session_len = np.diff(self.session_indptr)
        owner = np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.session_len)
        order = np.argsort(self.session_items, kind="stable")  # sessions stay ascending
        self.item_sessions = owner[order]
        per_item = np.bincount(self.session_items, minlength=self.n_items + 1)
        self.item_indptr = np.concatenate([[0], np.cumsum(per_item)]).astype(np.int64)

    @classmethod
    def from_sessions(cls, sessions: list[np.ndarray], n_items: int) -> SessionIndex:
        """Build from train sessions (arrays of item_idx in train order; 0s are dropped)."""
        if n_items < 1:
            raise ValueError("n_items must be >= 1")
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        flat = (
            np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
            if sessions
            else np.zeros(0, dtype=np.int64)
        )
        if flat.size and (flat.min() < 0 or flat.max() > n_items):
            raise ValueError(f"train sessions hold item indices outside 0..{n_items}")
        sid = np.repeat(np.arange(len(sessions), dtype=np.int64), lengths)
        keep = flat > 0
        flat, sid = flat[keep], sid[keep]
        counts = np.bincount(flat, minlength=n_items + 1)
        pairs = np.unique(sid * (n_items + 1) + flat)  # distinct (session, item), sorted
        p_sid, p_item = np.divmod(pairs, n_items + 1)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(p_sid, minlength=len(sessions)))])
        return cls(indptr, p_item, counts)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "session_indptr": torch.from_numpy(self.session_indptr.copy()),
            "session_items": torch.from_numpy(self.session_items.astype(np.int32)),
            "item_counts": torch.from_numpy(self.item_counts.copy()),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SessionIndex:
        return cls(
            tensors["session_indptr"].cpu().numpy(),
            tensors["session_items"].cpu().numpy(),
            tensors["item_counts"].cpu().numpy(),
        )


class _Queries:
    """Distinct items of each prefix row with their last 1-based position and the length."""

    def __init__(self, prefixes: np.ndarray, n_items: int) -> None:
        mask = prefixes > 0
        self.length = mask.sum(axis=1).astype(np.int64)  # clicks incl. repeats
        pos = np.cumsum(mask, axis=1)
        rows, cols = np.nonzero(mask)
        items = prefixes[rows, cols].astype(np.int64)
        if items.size and items.max() > n_items:
            raise ValueError(f"prefix item index above n_items={n_items}")
        p = pos[rows, cols].astype(np.int64)
        key = rows.astype(np.int64) * (n_items + 1) + items
        order = np.lexsort((p, key))
        key, p = key[order], p[order]
        last = np.ones(key.size, dtype=bool)
        if key.size:
            last[:-1] = key[1:] != key[:-1]
        self.key = key[last]  # sorted: row, then item
        self.row, self.item = np.divmod(self.key, n_items + 1)
        self.pos = p[last]
        self.n_distinct = np.bincount(self.row, minlength=prefixes.shape[0])


class _SessionKNNBase:
    """Shared neighbour search and scoring; subclasses define similarity and weights."""

    name: ClassVar[str]
    config: SKNNConfig | VSKNNConfig

    def __init__(self, index: SessionIndex) -> None:
        self.index = index
        self.n_items = index.n_items

    # -- subclass hooks ---------------------------------------------------------------------
    def _query_weights(self, q: _Queries) -> np.ndarray:
        return np.ones(q.key.size, dtype=np.float64)

    def _similarity(
        self, q: _Queries, row: np.ndarray, sess: np.ndarray, wsum: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError

    def _neighbour_weight(
        self, q: _Queries, row: np.ndarray, sim: np.ndarray, max_pos: np.ndarray
    ) -> np.ndarray:
        return sim

    def _item_factor(self, items: np.ndarray) -> np.ndarray | None:
        return None

    def _remind(self) -> bool:
        return True

    # -- the algorithm ----------------------------------------------------------------------
    def neighbours(
        self, prefixes: np.ndarray
    ) -> tuple[_Queries, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(queries, row, session, similarity, max shared position) of the kept neighbours.

        Rows are ascending; within a row neighbours are ordered by similarity (descending),
        then recency (descending).
        """
        idx = self.index
        cfg = self.config
        q = _Queries(prefixes, self.n_items)
        # prefix items in click order: the weights of shared items are then summed in an order
        # that does not depend on how items happen to be indexed
        by_pos = np.lexsort((q.pos, q.row))
        q_row, q_item, q_pos = q.row[by_pos], q.item[by_pos], q.pos[by_pos]
        w = self._query_weights(q)[by_pos]
        start = idx.item_indptr[q_item]
        end = idx.item_indptr[q_item + 1]
        if cfg.sample_size > 0:
            start = np.maximum(start, end - cfg.sample_size)
        owner, pos_in_index = _ranges(start, end - start)
        sess = idx.item_sessions[pos_in_index]
        n_s = max(idx.n_sessions, 1)
        pair = q_row[owner] * n_s + sess
        order = np.argsort(pair, kind="stable")
        pair = pair[order]
        owner = owner[order]
        empty = np.zeros(0, dtype=np.int64)
        if pair.size == 0:
            return q, empty, empty, np.zeros(0), empty
        first = np.ones(pair.size, dtype=bool)
        first[1:] = pair[1:] != pair[:-1]
        starts = np.flatnonzero(first)
        wsum = np.add.reduceat(w[owner], starts)
        max_pos = np.maximum.reduceat(q_pos[owner], starts)
        p_row, p_sess = np.divmod(pair[starts], n_s)
        # keep the sample_size most recent candidates of each row (sessions are ascending)
        if cfg.sample_size > 0:
            row_end = np.cumsum(np.bincount(p_row, minlength=prefixes.shape[0]))
            from_end = row_end[p_row] - 1 - np.arange(p_row.size)
            keep = from_end < cfg.sample_size
            p_row, p_sess, wsum, max_pos = p_row[keep], p_sess[keep], wsum[keep], max_pos[keep]
        sim = self._similarity(q, p_row, p_sess, wsum)
        # top-k by similarity; ties: more recent session first
        order = np.lexsort((-p_sess, -sim, p_row))
        p_row, p_sess, sim, max_pos = p_row[order], p_sess[order], sim[order], max_pos[order]
        row_start = np.cumsum(np.bincount(p_row, minlength=prefixes.shape[0])) - np.bincount(
            p_row, minlength=prefixes.shape[0]
        )
        rank = np.arange(p_row.size) - row_start[p_row]
        keep = (rank < cfg.k) & (sim > 0)
        return q, p_row[keep], p_sess[keep], sim[keep], max_pos[keep]

    def score_numpy(self, prefixes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sparse scores of a batch: (flat keys ``row * (n_items + 1) + item``, float64 sums)."""
        idx = self.index
        q, row, sess, sim, max_pos = self.neighbours(prefixes)
        weight = self._neighbour_weight(q, row, sim, max_pos)
        owner, where = _ranges(idx.session_indptr[sess], idx.session_len[sess])
        items = idx.session_items[where]
        vals = weight[owner]
        factor = self._item_factor(items)
        if factor is not None:
            vals = vals * factor
        keys = row[owner] * (self.n_items + 1) + items
        if not self._remind() and keys.size:
            at = np.searchsorted(q.key, keys)
            at = np.minimum(at, max(q.key.size - 1, 0))
            in_prefix = q.key[at] == keys if q.key.size else np.zeros(keys.size, dtype=bool)
            keys, vals = keys[~in_prefix], vals[~in_prefix]
        uniq, inverse = np.unique(keys, return_inverse=True)
        sums = np.bincount(inverse, weights=vals, minlength=uniq.size)  # in neighbour order
        return uniq, sums

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Full-catalogue scores ``(B, n_items + 1)`` for LEFT-padded prefixes; column 0 -inf."""
        if prefixes.dim() != 2:
            raise ValueError("prefixes must be a (B, T) LongTensor")
        arr = prefixes.detach().cpu().numpy().astype(np.int64, copy=False)
        keys, sums = self.score_numpy(arr)
        out = torch.zeros((arr.shape[0], self.n_items + 1), dtype=torch.float32)
        if keys.size:
            out.view(-1)[torch.from_numpy(keys)] = torch.from_numpy(sums).to(torch.float32)
        out[:, 0] = float("-inf")
        return out

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"n_items": self.n_items, **self.config.model_dump()}, self.index.tensors()


class SKNN(_SessionKNNBase):
    """Session-kNN with cosine (or Jaccard) similarity of item sets (session-rec ``ContextKNN``).

    >>> train = [np.array([1, 2]), np.array([2, 3]), np.array([3, 4])]
    >>> m = SKNN.fit(train, n_items=4)
    >>> m.score(torch.tensor([[0, 2]]))[0].tolist()  # neighbours {1,2}, {2,3}: cos 1/sqrt(2) each
    [-inf, 0.7071067690849304, 1.4142135381698608, 0.7071067690849304, 0.0]
    """

    name = "sknn"
    config: SKNNConfig

    def __init__(self, index: SessionIndex, config: SKNNConfig | None = None) -> None:
        super().__init__(index)
        self.config = config or SKNNConfig()

    @classmethod
    def fit(
        cls, sessions: list[np.ndarray], n_items: int, config: SKNNConfig | None = None
    ) -> SKNN:
        return cls(SessionIndex.from_sessions(sessions, n_items), config)

    def _similarity(
        self, q: _Queries, row: np.ndarray, sess: np.ndarray, wsum: np.ndarray
    ) -> np.ndarray:
        a = q.n_distinct[row].astype(np.float64)
        b = self.index.session_len[sess].astype(np.float64)
        if self.config.similarity == "cosine":
            return wsum / np.sqrt(a * b)
        return wsum / (a + b - wsum)

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SKNN:
        cfg = SKNNConfig.model_validate({k: v for k, v in config.items() if k != "n_items"})
        model = cls(SessionIndex.from_tensors(tensors), cfg)
        _check_n_items(config, model.n_items)
        return model


class VSKNN(_SessionKNNBase):
    """Vector-multiplication session-kNN (session-rec ``VMContextKNN``, Ludewig & Jannach 2018).

    >>> train = [np.array([1, 3]), np.array([2, 4])]
    >>> m = VSKNN.fit(train, n_items=4)
    >>> # prefix 1 -> 2: weights 1/2 (item 1), 1 (item 2); sims (0.5/2, 1/2) = (0.25, 0.5);
    >>> # the neighbour holding only item 1 shares a click 2 steps back: x 1/2
    >>> m.score(torch.tensor([[1, 2]]))[0].tolist()
    [-inf, 0.125, 0.5, 0.125, 0.5]
    """

    name = "vsknn"
    config: VSKNNConfig

    def __init__(self, index: SessionIndex, config: VSKNNConfig | None = None) -> None:
        super().__init__(index)
        self.config = config or VSKNNConfig()
        clicks = np.maximum(index.item_counts.astype(np.float64), 1.0)
        self.idf = np.log(max(index.n_sessions, 1) / clicks)  # session-rec: log(N / clicks)
        self.idf[0] = 0.0

    @classmethod
    def fit(
        cls, sessions: list[np.ndarray], n_items: int, config: VSKNNConfig | None = None
    ) -> VSKNN:
        return cls(SessionIndex.from_sessions(sessions, n_items), config)

    def _query_weights(self, q: _Queries) -> np.ndarray:
        return position_weight(self.config.weighting, q.pos, q.length[q.row])

    def _similarity(
        self, q: _Queries, row: np.ndarray, sess: np.ndarray, wsum: np.ndarray
    ) -> np.ndarray:
        return wsum / q.n_distinct[row].astype(np.float64)

    def _neighbour_weight(
        self, q: _Queries, row: np.ndarray, sim: np.ndarray, max_pos: np.ndarray
    ) -> np.ndarray:
        step = q.length[row] - max_pos + 1
        return sim * step_weight(self.config.weighting_score, step)

    def _item_factor(self, items: np.ndarray) -> np.ndarray | None:
        if self.config.idf_weighting == 0:
            return None
        return 1.0 + self.config.idf_weighting * self.idf[items]

    def _remind(self) -> bool:
        return self.config.remind

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> VSKNN:
        cfg = VSKNNConfig.model_validate({k: v for k, v in config.items() if k != "n_items"})
        model = cls(SessionIndex.from_tensors(tensors), cfg)
        _check_n_items(config, model.n_items)
        return model


def _check_n_items(config: dict[str, Any], n_items: int) -> None:
    if "n_items" in config and int(config["n_items"]) != n_items:
        raise ValueError(f"bundle n_items {config['n_items']} does not match tensors ({n_items})")

"""The recommender the storefront serves: a next-item bundle plus filters, fallbacks and reasons.

Offline evaluation scores index tensors; a storefront speaks original item ids, has shoppers
nobody has seen, carts, and wants to say *why* an item is shown. :class:`Recommender` is that
layer, over any :class:`~shoprec.models.base.NextItemModel` (it only calls ``score``):

* ids <-> ``item_idx`` through the bundle's item table; unknown ids are ignored (a new
  product is not an error, it is just something the model cannot use yet);
* a shopper with no known item gets the most popular items ("popular now"), and a model that
  ranks fewer than ``k`` items is topped up the same way, so a rail is never empty;
* every model recommendation says "because you viewed X", X being the session item most related
  to it by item co-occurrence (``bundle.aux["neighbour_idx"/"neighbour_weight"]``, built by
  :func:`build_item_neighbours`); without neighbours the reason is generic;
* cart add-ons come from cart/purchase co-occurrence (``aux["cart_neighbour_*"]``, built by
  :func:`build_cart_neighbours`), then from the model's next-item scores for the cart;
* :meth:`Recommender.next_items_batch` scores many sessions in one ``score`` call, which the
  service's micro-batcher uses under load.

:class:`ChurnScorer` is a thin adapter over ``shoprec.churn.score_customers`` that the service
uses only when a churn bundle is configured.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from shoprec import schema
from shoprec.errors import ShoprecError
from shoprec.export import Bundle
from shoprec.models.base import left_pad

__all__ = [
    "CART_REASON",
    "GENERIC_REASON",
    "POPULAR_REASON",
    "ChurnDriver",
    "ChurnRisk",
    "ChurnScorer",
    "ChurnUnavailable",
    "Recommendation",
    "Recommender",
    "build_cart_neighbours",
    "build_item_neighbours",
]

POPULAR_REASON = "popular now"
GENERIC_REASON = "picked for this session"
CART_REASON = "goes with your cart"

NEIGHBOUR_IDX = "neighbour_idx"
NEIGHBOUR_WEIGHT = "neighbour_weight"
CART_NEIGHBOUR_IDX = "cart_neighbour_idx"
CART_NEIGHBOUR_WEIGHT = "cart_neighbour_weight"


def viewed_reason(item_id: str) -> str:
    return f"because you viewed {item_id}"


def bought_with_reason(item_id: str) -> str:
    return f"often bought with {item_id}"


def goes_with_reason(item_id: str) -> str:
    return f"goes with {item_id}"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item. ``score`` orders items within one list only (model scores,
    co-occurrence weights and popularity counts are different scales); ``fallback`` marks an
    item that came from popularity rather than from the shopper's own items."""

    item_id: str
    score: float
    reason: str
    fallback: bool = False


# --- item neighbours (co-occurrence) ---
def _cooccurrence(
    sessions: Sequence[np.ndarray], n_items: int, top_n: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-normalised co-occurrence of items within ``window`` positions of each other.

    A pair counts once per session however often it repeats; the weight of (a, b) is
    ``sessions with both / sqrt(sessions with a * sessions with b)`` so that a reason points to
    the *related* item rather than to the most popular one (item-based CF, Sarwar et al. 2001).
    Everything is vectorised over one concatenated array: one pass per window offset.
    """
    idx_out = torch.zeros((n_items + 1, top_n), dtype=torch.long)
    w_out = torch.zeros((n_items + 1, top_n), dtype=torch.float32)
    lens = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    if lens.sum() == 0 or top_n <= 0:
        return idx_out, w_out
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    sid = np.repeat(np.arange(len(sessions), dtype=np.int64), lens)
    keep = (flat > 0) & (flat <= n_items)
    flat, sid = flat[keep], sid[keep]
    pairs = []
    for d in range(1, min(window, int(lens.max()) - 1) + 1):
        a, b = flat[:-d], flat[d:]
        same = (sid[:-d] == sid[d:]) & (a != b)
        s, a, b = sid[:-d][same], a[same], b[same]
        pairs.append(np.stack([s, a, b], axis=1))
        pairs.append(np.stack([s, b, a], axis=1))
    if not pairs:
        return idx_out, w_out
    triples = np.unique(np.concatenate(pairs), axis=0)  # (M, 3): one per (session, a, b)
    if len(triples) == 0:
        return idx_out, w_out
    ab = triples[:, 1] * (n_items + 1) + triples[:, 2]
    keys, co = np.unique(ab, return_counts=True)
    a, b = keys // (n_items + 1), keys % (n_items + 1)
    support = np.bincount(
        np.unique(np.stack([sid, flat], axis=1), axis=0)[:, 1], minlength=n_items + 1
    )
    weight = co / np.sqrt(support[a] * support[b])
    order = np.lexsort((b, -weight, a))  # per row a: heaviest first, ties by item index
    a, b, weight = a[order], b[order], weight[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    counts = np.diff(np.r_[starts, len(a)])
    rank = np.arange(len(a)) - np.repeat(starts, counts)
    top = rank < top_n
    rows, cols = torch.from_numpy(a[top]), torch.from_numpy(rank[top])
    idx_out[rows, cols] = torch.from_numpy(b[top])
    w_out[rows, cols] = torch.from_numpy(weight[top].astype(np.float32))
    return idx_out, w_out


def build_item_neighbours(
    sessions: list[np.ndarray], n_items: int, top_n: int = 50, window: int = 5
) -> dict[str, torch.Tensor]:
    """Top ``top_n`` co-viewed items per item, for "because you viewed X" and add-on fallbacks.

    ``sessions`` hold item indices (1..n_items, train sessions); the result goes into a bundle's
    ``aux``: ``neighbour_idx`` ``(n_items + 1, top_n)`` long (0 = no neighbour) and
    ``neighbour_weight`` ``(n_items + 1, top_n)`` float, heaviest first.

    >>> nb = build_item_neighbours([np.array([1, 2, 3]), np.array([1, 2])], n_items=3, top_n=2)
    >>> nb["neighbour_idx"].tolist()
    [[0, 0], [2, 3], [1, 3], [1, 2]]
    """
    idx, weight = _cooccurrence(sessions, n_items, top_n, window)
    return {NEIGHBOUR_IDX: idx, NEIGHBOUR_WEIGHT: weight}


def build_cart_neighbours(
    baskets: list[np.ndarray], n_items: int, top_n: int = 50, window: int = 20
) -> dict[str, torch.Tensor]:
    """Top ``top_n`` items carted or bought together, per item: the cart add-on source.

    ``baskets`` hold the item indices of a session's cart and purchase events; the keys are
    ``cart_neighbour_idx`` / ``cart_neighbour_weight`` with the shapes of
    :func:`build_item_neighbours` (a wider window: order within a basket carries little meaning).
    """
    idx, weight = _cooccurrence(baskets, n_items, top_n, window)
    return {CART_NEIGHBOUR_IDX: idx, CART_NEIGHBOUR_WEIGHT: weight}


# --- the recommender ---
@dataclass
class _Neighbours:
    idx: torch.Tensor  # (n_items + 1, top_n) long
    weight: torch.Tensor  # (n_items + 1, top_n) float

    @classmethod
    def from_aux(
        cls, aux: dict[str, torch.Tensor], idx_key: str, w_key: str, n_items: int
    ) -> _Neighbours | None:
        idx, weight = aux.get(idx_key), aux.get(w_key)
        if idx is None or weight is None:
            return None
        if idx.dim() != 2 or idx.shape != weight.shape or idx.shape[0] != n_items + 1:
            return None  # a bundle from another item index: better no reasons than wrong ones
        return cls(idx.long(), weight.float())

    def relation(self, anchors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weight between each anchor and each target, in either neighbour direction.

        ``anchors`` (A,), ``targets`` (R,) -> (A, R); 0 where neither lists the other.
        """
        fwd = self.idx[anchors].unsqueeze(2) == targets.view(1, 1, -1)  # (A, top_n, R)
        w_fwd = (fwd * self.weight[anchors].unsqueeze(2)).amax(dim=1)  # (A, R)
        back = self.idx[targets].unsqueeze(2) == anchors.view(1, 1, -1)  # (R, top_n, A)
        w_back = (back * self.weight[targets].unsqueeze(2)).amax(dim=1)  # (R, A)
        return torch.maximum(w_fwd, w_back.T)


@dataclass
class _Ranked:
    """Per-session working state while a list is assembled."""

    exclude: set[int]
    k: int
    out: list[Recommendation] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)

    def full(self) -> bool:
        return len(self.out) >= self.k

    def add(self, idx: int, rec: Recommendation) -> None:
        if idx in self.taken or idx in self.exclude or self.full():
            return
        self.taken.add(idx)
        self.out.append(rec)


class Recommender:
    """Next items and cart add-ons in original item ids, over a loaded bundle."""

    def __init__(self, bundle: Bundle, *, max_session_len: int = 50) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.max_session_len = max_session_len
        items = bundle.items.sort(schema.ITEM_IDX)
        self.n_items = int(self.model.n_items)
        self.item_ids: list[str] = [""] * (self.n_items + 1)
        counts = np.zeros(self.n_items + 1, dtype=np.float64)
        has_count = schema.ITEM_COUNT in items.columns
        for row in items.iter_rows(named=True):
            i = int(row[schema.ITEM_IDX])
            if 1 <= i <= self.n_items:
                self.item_ids[i] = str(row[schema.ITEM_ID])
                counts[i] = float(row[schema.ITEM_COUNT] or 0) if has_count else 0.0
        self.index: dict[str, int] = {iid: i for i, iid in enumerate(self.item_ids) if i > 0}
        # Most popular first; ties by item index so the fallback is deterministic.
        order = np.lexsort((np.arange(self.n_items + 1), -counts))
        self._popular: list[int] = [int(i) for i in order if i > 0 and self.item_ids[i]]
        self._counts = counts
        self.neighbours = _Neighbours.from_aux(
            bundle.aux, NEIGHBOUR_IDX, NEIGHBOUR_WEIGHT, self.n_items
        )
        self.cart_neighbours = _Neighbours.from_aux(
            bundle.aux, CART_NEIGHBOUR_IDX, CART_NEIGHBOUR_WEIGHT, self.n_items
        )

    # --- ids ---
    def to_idx(self, item_ids: Sequence[str]) -> list[int]:
        """Known items as indices, in order; unknown ids are dropped."""
        return [i for i in (self.index.get(x, 0) for x in item_ids) if i]

    def unknown(self, item_ids: Sequence[str]) -> list[str]:
        """The ids the model does not know, in order of first appearance."""
        return list(dict.fromkeys(x for x in item_ids if x not in self.index))

    # --- popularity ---
    def _fill_popular(self, ranked: _Ranked) -> None:
        for i in self._popular:
            if ranked.full():
                return
            ranked.add(
                i, Recommendation(self.item_ids[i], float(self._counts[i]), POPULAR_REASON, True)
            )

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[Recommendation]:
        """The ``k`` most popular items (train support), skipping ``exclude``."""
        ranked = _Ranked(exclude=set(self.to_idx(list(exclude))), k=k)
        self._fill_popular(ranked)
        return ranked.out

    # --- next items ---
    def next_items(
        self, session_items: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Recommendation]:
        """The ``k`` best next items for a session (oldest item first), never one in ``exclude``."""
        return self.next_items_batch([session_items], k, [exclude])[0]

    def next_items_batch(
        self,
        sessions: Sequence[Sequence[str]],
        k: int | Sequence[int],
        excludes: Sequence[Collection[str]] | None = None,
    ) -> list[list[Recommendation]]:
        """:meth:`next_items` for many sessions with one ``model.score`` call.

        Padding does not change a prefix's scores (the NextItemModel contract), so batching is
        exact: each list equals the one its session would get alone.
        """
        ks = [k] * len(sessions) if isinstance(k, int) else list(k)
        excl = list(excludes) if excludes is not None else [()] * len(sessions)
        known = [self.to_idx(list(s)) for s in sessions]
        ranked = [
            _Ranked(exclude=set(self.to_idx(list(e))), k=max(0, kk))
            for e, kk in zip(excl, ks, strict=True)
        ]
        self._rank_with_model(known, ranked, viewed_reason, GENERIC_REASON)
        for rk in ranked:
            self._fill_popular(rk)
        return [rk.out for rk in ranked]

    def _rank_with_model(
        self,
        known: list[list[int]],
        ranked: list[_Ranked],
        because: Callable[[str], str],
        generic: str,
    ) -> None:
        """Add the model's best remaining items to each list (one ``score`` call for all)."""
        known = [s[-self.max_session_len :] for s in known]
        rows = [r for r, s in enumerate(known) if s and not ranked[r].full()]
        if not rows:
            return
        scores = self._score([known[r] for r in rows])  # (b, n_items + 1)
        for b, r in enumerate(rows):
            blocked = ranked[r].exclude | ranked[r].taken
            if blocked:
                scores[b, list(blocked)] = -math.inf
        need = [ranked[r].k - len(ranked[r].out) for r in rows]
        top_s, top_i = scores.topk(min(max(need), self.n_items), dim=1)  # (b, k_top)
        for b, r in enumerate(rows):
            s_row, i_row = top_s[b, : need[b]], top_i[b, : need[b]]
            finite = torch.isfinite(s_row)
            idx = i_row[finite]
            reasons = self._reasons(known[r], idx, because, generic)
            for i, sc, why in zip(idx.tolist(), s_row[finite].tolist(), reasons, strict=True):
                ranked[r].add(i, Recommendation(self.item_ids[i], float(sc), why))

    def _score(self, sessions: list[list[int]]) -> torch.Tensor:
        prefixes = left_pad(sessions, self.max_session_len)  # (B, T), zeros first
        # no_grad rather than inference_mode: the result is edited in place below.
        with torch.no_grad():
            scores = self.model.score(prefixes).float().clone()  # (B, n_items + 1)
        scores[torch.isnan(scores)] = -math.inf
        scores[:, 0] = -math.inf
        return scores

    def _reasons(
        self,
        session: list[int],
        recs: torch.Tensor,
        because: Callable[[str], str],
        generic: str,
        neighbours: _Neighbours | None = None,
    ) -> list[str]:
        """For each recommended index, the reason naming its most related session item.

        Ties go to the most recent session item (a shopper remembers the last thing they saw).
        """
        nb = neighbours or self.neighbours
        if nb is None or not session or recs.numel() == 0:
            return [generic] * int(recs.numel())
        anchors = torch.tensor(
            list(dict.fromkeys(reversed(session))), dtype=torch.long
        )  # newest first
        rel = nb.relation(anchors, recs)  # (A, R)
        best_w, best_a = rel.max(dim=0)  # first max = most recent anchor
        return [
            because(self.item_ids[int(anchors[a])]) if w > 0 else generic
            for w, a in zip(best_w.tolist(), best_a.tolist(), strict=True)
        ]

    # --- cart add-ons ---
    def cart_addons(
        self, cart_items: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Recommendation]:
        """Items that complement the cart; never an item in the cart or in ``exclude``.

        Sources in order: cart/purchase co-occurrence ("often bought with X"), the model's
        next-item scores for the cart as a session, popularity.
        """
        cart = list(dict.fromkeys(self.to_idx(list(cart_items))))
        ranked = _Ranked(exclude=set(cart) | set(self.to_idx(list(exclude))), k=max(0, k))
        if cart and self.cart_neighbours is not None and not ranked.full():
            nb = self.cart_neighbours
            anchors = torch.tensor(cart, dtype=torch.long)
            total = torch.zeros(self.n_items + 1)  # (n_items + 1,)
            total.index_add_(0, nb.idx[anchors].flatten(), nb.weight[anchors].flatten())
            total[0] = 0.0
            total[list(ranked.exclude)] = 0.0
            n_pos = int((total > 0).sum())
            if n_pos:
                top_w, top_i = total.topk(min(n_pos, ranked.k))
                reasons = self._reasons(cart, top_i, bought_with_reason, CART_REASON, nb)
                for i, w, why in zip(top_i.tolist(), top_w.tolist(), reasons, strict=True):
                    ranked.add(i, Recommendation(self.item_ids[i], float(w), why))
        # The cart as a session: what the model expects next, explained by co-views.
        self._rank_with_model([cart], [ranked], goes_with_reason, CART_REASON)
        self._fill_popular(ranked)
        return ranked.out


# --- churn ---
class ChurnUnavailable(ShoprecError):
    """No churn model can be used (none configured, or the churn package is not installed)."""


@dataclass(frozen=True, slots=True)
class ChurnDriver:
    """A feature that moves this customer's churn risk; ``contribution`` is in log-odds,
    positive pushes towards churn."""

    feature: str
    contribution: float | None


@dataclass(frozen=True, slots=True)
class ChurnRisk:
    user_id: str
    probability: float
    segment: str
    drivers: list[ChurnDriver]


class ChurnScorer:
    """Thin adapter over ``shoprec.churn.score_customers(bundle, events, at)``.

    The churn package is imported lazily and optionally, so a service without a churn model
    (or a build without the package) still starts. The bundle is loaded once here when the
    package offers ``ChurnBundle.load``, not on every request.
    """

    def __init__(self, bundle_dir: str | Path) -> None:
        self.bundle_dir = Path(bundle_dir)
        if not self.bundle_dir.is_dir():
            raise ChurnUnavailable(f"churn bundle {self.bundle_dir} is not a folder")
        try:
            module = importlib.import_module("shoprec.churn")
            self._score = module.score_customers
        except (ImportError, AttributeError) as exc:
            raise ChurnUnavailable(f"the churn package is not available: {exc}") from exc
        loader = getattr(getattr(module, "ChurnBundle", None), "load", None)
        self._bundle: Any = loader(self.bundle_dir) if loader is not None else self.bundle_dir

    def score(self, events: pl.DataFrame, at: datetime) -> list[ChurnRisk]:
        """Churn risk as of ``at`` of every user with an event before ``at``."""
        frame: pl.DataFrame = self._score(self._bundle, events, at)
        n_drivers = sum(1 for c in frame.columns if c.startswith("driver_"))
        out = []
        for row in frame.iter_rows(named=True):
            drivers = [
                ChurnDriver(str(row[f"driver_{k}"]), _finite(row.get(f"contribution_{k}")))
                for k in range(1, n_drivers + 1)
                if row.get(f"driver_{k}") is not None
            ]
            out.append(
                ChurnRisk(
                    user_id=str(row[schema.USER_ID]),
                    probability=float(row["probability"]),
                    segment=str(row.get("segment") or ""),
                    drivers=drivers,
                )
            )
        return out


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None

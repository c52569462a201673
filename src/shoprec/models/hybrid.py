"""Weighted hybrid of neural next-item models and a session-kNN model.

Neural and neighbourhood models make different mistakes on session data (Ludewig, Mauro,
Latifi & Jannach, "Performance comparison of neural and non-neural approaches to session-based
recommendation", RecSys 2019; Jannach & Ludewig, "When Recurrent Neural Networks meet the
Neighborhood for Session-Based Recommendation", RecSys 2017, where a weighted GRU4Rec + kNN
hybrid beat both parts). This model mixes them as probability distributions over the
catalogue:

    p(i) = w * mean_m softmax(s_m / tau)(i) + (1 - w) * knn(i) / sum_j knn(j)

and, when the reminder share ``r`` is above 0, ``(1 - r) * p(i) + r * rem(i) / sum_j rem(j)``
with ``rem`` the recency-weighted clicks of the session on its own items
(:func:`reminder_votes`).

``s_m`` are the scores of the neural members (one model, or an ensemble of independently
trained ones, e.g. the same architecture with other seeds: their probabilities are averaged),
``knn`` the kNN model's non-negative neighbour votes. A prefix with no neighbour keeps the
neural distribution alone (its ranking is the neural ranking). Scores are ``log p`` computed
with ``logaddexp``, so no probability underflows to a tie. ``w`` and ``tau`` are chosen on a
validation window (``shoprec hybrid tune``), never on test; so is ``r``.

kNN votes are sparse (a few hundred of 43k items per prefix on Diginetica), and an item
without a vote has ``log p = log w + log p_neural``: the mixture is one shift of the neural
log-probabilities plus a ``logaddexp`` at the voted items only (:class:`KnnVotes`), which is
the same number the dense formula gives, without a transcendental pass over the catalogue.

The bundle holds all members: a single neural member's config under ``neural`` and its tensors
prefixed ``neural.``; an ensemble's configs as a list under ``neural`` and member ``m``'s
tensors prefixed ``neural{m}.``; the kNN member under ``knn`` / ``knn.``. Loading rebuilds each
through the model registry, so nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from shoprec.config import StrictModel
from shoprec.models.base import SCORE_BLOCK, NextItemModel, is_dot_product

__all__ = [
    "Hybrid",
    "HybridConfig",
    "KnnVotes",
    "ensemble_log_probs",
    "full_scores",
    "knn_votes",
    "member_votes",
    "mix_log_probs",
    "mix_parts",
    "neural_log_probs",
    "remind",
    "reminder_votes",
]

ReminderDecay = Literal["last", "div"]


class HybridConfig(StrictModel):
    """Mixing knobs: ``weight`` = the neural share ``w``; ``temperature`` = ``tau``;
    ``reminder`` = the share ``r`` of the session's own items (0 = off) and
    ``reminder_decay`` how they weigh by recency (:func:`reminder_votes`)."""

    weight: float = Field(default=0.7, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0)
    reminder: float = Field(default=0.0, ge=0.0, lt=1.0)
    reminder_decay: ReminderDecay = "div"


def mix_log_probs(
    neural_scores: torch.Tensor, knn_scores: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """``log(w * softmax(neural / tau) + (1 - w) * knn / sum(knn))`` per row; column 0 -inf.

    Both inputs are ``(B, n_items + 1)`` with column 0 the padding. kNN scores must be >= 0
    (column 0 is ignored); a row whose kNN scores are all zero gets the neural part alone.

    >>> n = torch.tensor([[float("-inf"), 0.0, 0.0]])
    >>> k = torch.tensor([[float("-inf"), 3.0, 1.0]])
    >>> mix_log_probs(n, k, 0.5, 1.0).exp()[0, 1:].tolist()  # 0.5*0.5 + 0.5*0.75, 0.25 + 0.125
    [0.625, 0.375]
    """
    if neural_scores.shape != knn_scores.shape or neural_scores.dim() != 2:
        raise ValueError("expected two (B, n_items + 1) score tensors of the same shape")
    return mix_parts(neural_log_probs(neural_scores, temperature), knn_votes(knn_scores), weight)


FULL_SCORE_BLOCK = SCORE_BLOCK  # catalogue columns per block of a member's product


def full_scores(model: NextItemModel, prefixes: torch.Tensor) -> torch.Tensor:
    """``model.score(prefixes)``, a new ``(B, N+1)`` tensor; a dot-product model's
    (:func:`shoprec.models.base.is_dot_product`) is computed in column blocks of
    ``FULL_SCORE_BLOCK``, each the same float32 product into a contiguous block that stays in
    the CPU cache, then copied into place: the same numbers as ``score``, faster for a large
    catalogue (``tests/models/test_hybrid.py`` checks they are equal)."""
    if not is_dot_product(model):
        return model.score(prefixes)
    dot: Any = model
    vectors = dot.session_vectors(prefixes)
    width = int(model.n_items) + 1
    out = torch.empty((vectors.shape[0], width), dtype=vectors.dtype, device=vectors.device)
    for lo in range(0, width, FULL_SCORE_BLOCK):
        hi = min(lo + FULL_SCORE_BLOCK, width)
        out[:, lo:hi] = dot.score_columns(vectors, lo, hi)
    return out


def neural_log_probs(
    neural_scores: torch.Tensor, temperature: float, own: bool = False
) -> torch.Tensor:
    """``log softmax(neural / tau)`` over the items (column 0, the padding, excluded).

    ``own``: the caller hands the scores over (a float32 tensor of its own), so the division
    happens in place, one ``batch x n_items`` allocation fewer; the result is the same."""
    if temperature <= 0.0:
        raise ValueError("need temperature > 0")
    if own and neural_scores.dtype == torch.float32:
        s_n = neural_scores.div_(temperature)
    else:
        s_n = neural_scores.float() / temperature  # a new tensor: the input is never modified
    s_n[:, 0] = float("-inf")
    return torch.log_softmax(s_n, dim=1)


def ensemble_log_probs(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_m p_m)`` of the members' log-probabilities (the first one alone as is).

    >>> a = torch.tensor([[float("-inf"), math.log(0.2), math.log(0.8)]])
    >>> b = torch.tensor([[float("-inf"), math.log(0.6), math.log(0.4)]])
    >>> [round(v, 6) for v in ensemble_log_probs([a, b]).exp()[0].tolist()]
    [0.0, 0.4, 0.6]
    """
    if not parts:
        raise ValueError("need at least one member")
    if len(parts) == 1:
        return parts[0]
    out = parts[0]
    for part in parts[1:]:
        out = torch.logaddexp(out, part)
    out = out - math.log(len(parts))
    out[:, 0] = float("-inf")
    return out


@dataclass(frozen=True)
class KnnVotes:
    """The non-zero kNN votes of a batch: ``log_share = log(knn / sum(knn))`` at
    ``(rows, cols)``; ``has (B, 1)`` marks the rows with any vote."""

    rows: torch.Tensor
    cols: torch.Tensor
    log_share: torch.Tensor
    has: torch.Tensor


def _votes(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int) -> KnnVotes:
    """:class:`KnnVotes` from the kNN scores ``vals`` (float32) at ``(rows, cols)``; entries
    that are zero are dropped, negative ones refused."""
    if bool((vals < 0).any()):
        raise ValueError("kNN scores must be non-negative")
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    total = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows, vals.double())
    total32 = total.float().unsqueeze(1)  # (B, 1)
    share = torch.log(vals) - torch.log(total32[rows, 0])
    return KnnVotes(rows=rows, cols=cols, log_share=share, has=total32 > 0)


def knn_votes(knn_scores: torch.Tensor) -> KnnVotes:
    """The :class:`KnnVotes` of dense kNN scores ``(B, n_items + 1)`` (column 0 ignored)."""
    body = knn_scores[:, 1:]
    rows, cols = torch.nonzero(body != 0, as_tuple=True)
    return _votes(rows, cols + 1, body[rows, cols].float(), knn_scores.shape[0])


def member_votes(knn: NextItemModel, prefixes: torch.Tensor) -> KnnVotes:
    """The :class:`KnnVotes` of a kNN member for ``prefixes``: straight from its sparse scores
    when it has them (``score_numpy``: flat keys ``row * (n_items + 1) + item`` and sums, as
    the session-kNN models), else from its dense :meth:`score`."""
    sparse = getattr(knn, "score_numpy", None)
    if sparse is None:
        return knn_votes(knn.score(prefixes))
    arr = prefixes.detach().cpu().numpy().astype(np.int64, copy=False)
    keys, sums = sparse(arr)
    rows, cols = np.divmod(np.asarray(keys, dtype=np.int64), int(knn.n_items) + 1)
    vals = torch.from_numpy(np.asarray(sums).astype(np.float32))  # the dense score()'s values
    return _votes(torch.from_numpy(rows), torch.from_numpy(cols), vals, arr.shape[0])


def reminder_votes(prefixes: torch.Tensor, decay: ReminderDecay = "div") -> KnnVotes:
    """The session's own items as :class:`KnnVotes`: the "reminder" part of the mixture.

    A click ``step`` clicks back (1 = the last one) weighs ``1 / step`` (``div``, the decay
    session-rec's V-SKNN gives its prefix items) or, with ``last``, 1 for the last click and
    0 for the others; an item clicked several times sums its clicks' weights. Shoppers often
    go back to what they just viewed (about a fifth to a quarter of the next clicks in the
    Diginetica and YooChoose benchmark splits repeat an item of the session), the behaviour
    RepeatNet (Ren et al., AAAI 2019) models as its repeat mode and session-rec adds to its
    models as reminders (Latifi, Mauro & Jannach, Information Sciences 2021). Padding (0) is
    skipped wherever it sits.

    >>> v = reminder_votes(torch.tensor([[0, 5, 7, 5]]))  # 5: 1/3 + 1, 7: 1/2
    >>> sorted(zip(v.cols.tolist(), [round(x, 4) for x in v.log_share.exp().tolist()]))
    [(5, 0.7273), (7, 0.2727)]
    """
    if prefixes.dim() != 2:
        raise ValueError("expected a (B, L) tensor of prefixes")
    real = prefixes > 0
    # clicks from the row's end: 1 for its last real click, 2 for the one before, ...
    step = real.flip(1).long().cumsum(1).flip(1)
    rows, cols = torch.nonzero(real, as_tuple=True)
    items = prefixes[rows, cols].long()
    steps = step[rows, cols].to(torch.float32)
    if decay == "div":
        weight = 1.0 / steps
    elif decay == "last":
        weight = (steps == 1).to(torch.float32)
    else:
        raise ValueError(f"unknown reminder decay {decay!r}")
    width = int(items.max()) + 1 if items.numel() else 1
    keys, inverse = torch.unique(rows * width + items, return_inverse=True)
    sums = torch.zeros(keys.shape[0], dtype=torch.float32).index_add_(0, inverse, weight)
    return _votes(keys // width, keys % width, sums, prefixes.shape[0])


def mix_parts(
    log_p: torch.Tensor, votes: KnnVotes, weight: float, own: bool = False
) -> torch.Tensor:
    """The mixture from :func:`neural_log_probs` (or :func:`ensemble_log_probs`) and
    :func:`knn_votes` (so a grid over ``w`` reuses both); rows without kNN votes keep the
    neural part alone. ``log_p`` is not modified, unless ``own`` hands it over (then the
    mixture is written into it: the same numbers, one allocation fewer)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError("need 0 <= weight <= 1")
    if weight >= 1.0:
        out = log_p if own else log_p.clone()
    elif weight <= 0.0:  # the kNN votes; no neighbour at all: the neural order
        out = torch.where(votes.has, torch.full_like(log_p, float("-inf")), log_p)
        out[votes.rows, votes.cols] = votes.log_share
    else:
        log_w = torch.tensor(math.log(weight), dtype=log_p.dtype, device=log_p.device)
        shift = torch.where(votes.has, log_w, torch.zeros_like(log_w))  # (B, 1)
        voted = torch.logaddexp(
            log_p[votes.rows, votes.cols] + log_w, votes.log_share + math.log(1.0 - weight)
        )
        out = log_p.add_(shift) if own else log_p + shift
        out[votes.rows, votes.cols] = voted
    out[:, 0] = float("-inf")
    return out


def remind(
    log_p: torch.Tensor, prefixes: torch.Tensor, share: float, decay: ReminderDecay = "div"
) -> torch.Tensor:
    """``log((1 - r) p + r reminder)`` for the reminder share ``r = share`` (in place: ``log_p``
    is handed over); ``r = 0`` returns ``log_p`` as it is."""
    if share <= 0.0:
        return log_p
    return mix_parts(log_p, reminder_votes(prefixes, decay), 1.0 - share, own=True)


class Hybrid:
    """``p = w * mean_m softmax(neural_m / tau) + (1 - w) * knn / sum(knn)``; see the module
    docstring. ``neural`` is one model or a sequence of them (an ensemble)."""

    name = "hybrid"

    def __init__(
        self,
        neural: NextItemModel | Sequence[NextItemModel],
        knn: NextItemModel,
        config: HybridConfig | None = None,
    ) -> None:
        members = list(neural) if isinstance(neural, Sequence) else [neural]
        if not members:
            raise ValueError("a hybrid needs at least one neural member")
        for member in members:
            if int(member.n_items) != int(knn.n_items):
                raise ValueError(
                    f"hybrid members disagree on the catalogue: {member.name} has "
                    f"{member.n_items} items, {knn.name} has {knn.n_items}"
                )
        self.neurals = members
        self.knn = knn
        self.config = config or HybridConfig()
        self.n_items = int(knn.n_items)

    @property
    def neural(self) -> NextItemModel:
        """The first neural member."""
        return self.neurals[0]

    def eval(self) -> Hybrid:
        for member in (*self.neurals, self.knn):
            if hasattr(member, "eval"):
                member.eval()
        return self

    def neural_log_probs(self, prefixes: torch.Tensor) -> torch.Tensor:
        """``log mean_m softmax(neural_m / tau)`` of ``prefixes``."""
        with torch.inference_mode():
            parts = [
                neural_log_probs(full_scores(m, prefixes), self.config.temperature, own=True)
                for m in self.neurals
            ]
        return ensemble_log_probs(parts)

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        log_p = self.neural_log_probs(prefixes)
        with torch.inference_mode():
            votes = member_votes(self.knn, prefixes)
            out = mix_parts(log_p, votes, self.config.weight, own=True)
            return remind(out, prefixes, self.config.reminder, self.config.reminder_decay)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        config: dict[str, Any] = self.config.model_dump()
        tensors: dict[str, torch.Tensor] = {}
        several = len(self.neurals) > 1
        entries: list[dict[str, Any]] = []
        for m, member in enumerate(self.neurals):
            cfg, ts = member.to_bundle()
            entries.append({"name": member.name, "config": cfg})
            prefix = f"neural{m}." if several else "neural."
            tensors.update({f"{prefix}{k}": v for k, v in ts.items()})
        config["neural"] = entries if several else entries[0]
        cfg, ts = self.knn.to_bundle()
        config["knn"] = {"name": self.knn.name, "config": cfg}
        tensors.update({f"knn.{k}": v for k, v in ts.items()})
        return config, tensors

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Hybrid:
        neural = config.get("neural")
        if isinstance(neural, list) and neural:
            roles = [(f"neural{m}.", entry) for m, entry in enumerate(neural)]
        else:
            roles = [("neural.", neural)]
        neurals = [cls._member("neural", entry, prefix, tensors) for prefix, entry in roles]
        knn = cls._member("knn", config.get("knn"), "knn.", tensors)
        knobs = {k: v for k, v in config.items() if k not in ("neural", "knn")}
        return cls(neurals, knn, HybridConfig.model_validate(knobs)).eval()

    @classmethod
    def _member(
        cls, role: str, entry: Any, prefix: str, tensors: dict[str, torch.Tensor]
    ) -> NextItemModel:
        from shoprec.models import registry

        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise ValueError(f"hybrid bundle config lacks its {role!r} member")
        if entry["name"] == cls.name:
            raise ValueError("a hybrid cannot contain a hybrid")
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model: NextItemModel = registry.model_class(str(entry["name"])).from_bundle(
            entry["config"], own
        )
        return model

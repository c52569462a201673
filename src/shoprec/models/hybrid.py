"""Weighted hybrid of a neural next-item model and a session-kNN model.

Neural and neighbourhood models make different mistakes on session data (Ludewig, Mauro,
Latifi & Jannach, "Performance comparison of neural and non-neural approaches to session-based
recommendation", RecSys 2019; Jannach & Ludewig, "When Recurrent Neural Networks meet the
Neighborhood for Session-Based Recommendation", RecSys 2017, where a weighted GRU4Rec + kNN
hybrid beat both parts). This model mixes the two as probability distributions over the
catalogue:

    p(i) = w * softmax(s_neural / tau)(i) + (1 - w) * knn(i) / sum_j knn(j)

``knn`` are the kNN model's non-negative neighbour votes. A prefix with no neighbour keeps the
neural distribution alone (its ranking is the neural ranking). Scores are ``log p`` computed
with ``logaddexp``, so no probability underflows to a tie. ``w`` and ``tau`` are chosen on a
validation window (``shoprec hybrid tune``), never on test.

The bundle holds both members: their configs under ``neural`` / ``knn`` and their tensors
prefixed ``neural.`` / ``knn.``; loading rebuilds each through the model registry, so nothing
is unpickled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from shoprec.config import StrictModel
from shoprec.models.base import NextItemModel

__all__ = [
    "Hybrid",
    "HybridConfig",
    "knn_log_probs",
    "mix_log_probs",
    "mix_parts",
    "neural_log_probs",
]


class HybridConfig(StrictModel):
    """Mixing knobs: ``weight`` = the neural share ``w``; ``temperature`` = ``tau``."""

    weight: float = Field(default=0.7, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0)


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
    log_k, has = knn_log_probs(knn_scores)
    return mix_parts(neural_log_probs(neural_scores, temperature), log_k, has, weight)


def neural_log_probs(neural_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(neural / tau)`` over the items (column 0, the padding, excluded)."""
    if temperature <= 0.0:
        raise ValueError("need temperature > 0")
    s_n = neural_scores.float().clone()
    s_n[:, 0] = float("-inf")
    return torch.log_softmax(s_n / temperature, dim=1)


def knn_log_probs(knn_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log(knn / sum(knn)), has (B, 1))``: ``has`` marks the rows with any vote."""
    knn = knn_scores.float().clone()
    knn[:, 0] = 0.0
    if bool((knn < 0).any()):
        raise ValueError("kNN scores must be non-negative")
    total = knn.sum(dim=1, keepdim=True)
    has = total > 0
    log_k = torch.log(knn) - torch.log(torch.where(has, total, torch.ones_like(total)))
    return log_k, has


def mix_parts(
    log_p: torch.Tensor, log_k: torch.Tensor, has: torch.Tensor, weight: float
) -> torch.Tensor:
    """The mixture from :func:`neural_log_probs` and :func:`knn_log_probs` (so a grid over
    ``w`` reuses both); rows without kNN votes keep the neural part alone."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError("need 0 <= weight <= 1")
    if weight >= 1.0:
        out = log_p.clone()
    elif weight <= 0.0:
        out = torch.where(has, log_k, log_p)  # no neighbour at all: the neural order
    else:
        mixed = torch.logaddexp(log_p + math.log(weight), log_k + math.log(1.0 - weight))
        out = torch.where(has, mixed, log_p)
    out[:, 0] = float("-inf")
    return out


class Hybrid:
    """``p = w * softmax(neural / tau) + (1 - w) * knn / sum(knn)``; see the module docstring."""

    name = "hybrid"

    def __init__(
        self, neural: NextItemModel, knn: NextItemModel, config: HybridConfig | None = None
    ) -> None:
        if int(neural.n_items) != int(knn.n_items):
            raise ValueError(
                f"hybrid members disagree on the catalogue: {neural.name} has {neural.n_items} "
                f"items, {knn.name} has {knn.n_items}"
            )
        self.neural = neural
        self.knn = knn
        self.config = config or HybridConfig()
        self.n_items = int(neural.n_items)

    def eval(self) -> Hybrid:
        for member in (self.neural, self.knn):
            if hasattr(member, "eval"):
                member.eval()
        return self

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            s_n = self.neural.score(prefixes)
            s_k = self.knn.score(prefixes)
        return mix_log_probs(s_n, s_k, self.config.weight, self.config.temperature)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        config: dict[str, Any] = self.config.model_dump()
        tensors: dict[str, torch.Tensor] = {}
        for role, member in (("neural", self.neural), ("knn", self.knn)):
            cfg, ts = member.to_bundle()
            config[role] = {"name": member.name, "config": cfg}
            tensors.update({f"{role}.{k}": v for k, v in ts.items()})
        return config, tensors

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Hybrid:
        from shoprec.models import registry

        members: dict[str, NextItemModel] = {}
        for role in ("neural", "knn"):
            entry = config.get(role)
            if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
                raise ValueError(f"hybrid bundle config lacks its {role!r} member")
            if entry["name"] == cls.name:
                raise ValueError("a hybrid cannot contain a hybrid")
            prefix = f"{role}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            member_cls = registry.model_class(str(entry["name"]))
            members[role] = member_cls.from_bundle(entry["config"], own)
        knobs = {k: v for k, v in config.items() if k not in ("neural", "knn")}
        model = cls(members["neural"], members["knn"], HybridConfig.model_validate(knobs))
        return model.eval()

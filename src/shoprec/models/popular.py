"""Most-popular baseline: every session gets the items ranked by their train click count.

The weakest sensible reference (POP in Ludewig & Jannach, "Evaluation of session-based
recommendation algorithms", UMUAI 2018): it ignores the session entirely, so any model that
does not beat it has learned nothing about sessions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shoprec.config import StrictModel
from shoprec.models.base import PADDING_IDX

__all__ = ["PopularConfig", "PopularModel"]


class PopularConfig(StrictModel):
    """POP has no knobs; the (empty) section exists so configs validate like every model's."""


class PopularModel:
    """Scores = train click counts of each item (the same vector for every prefix).

    >>> m = PopularModel.fit([np.array([1, 2]), np.array([2, 3, 2])], n_items=4)
    >>> m.score(torch.tensor([[0, 1], [3, 2]]))[0].tolist()
    [-inf, 1.0, 3.0, 1.0, 0.0]
    """

    name = "pop"

    def __init__(self, counts: torch.Tensor, config: PopularConfig | None = None) -> None:
        if counts.dim() != 1 or counts.numel() < 1:
            raise ValueError("counts must be a 1-d tensor of length n_items + 1")
        self.config = config or PopularConfig()
        self.counts = counts.to(torch.int64)
        self.n_items = int(counts.numel() - 1)
        row = self.counts.to(torch.float32)
        row[PADDING_IDX] = float("-inf")
        self._row = row

    @classmethod
    def fit(
        cls, sessions: list[np.ndarray], n_items: int, config: PopularConfig | None = None
    ) -> PopularModel:
        """Count every click of every train session (items 1..n_items; 0 is ignored)."""
        if n_items < 1:
            raise ValueError("n_items must be >= 1")
        flat = np.concatenate(sessions) if sessions else np.zeros(0, dtype=np.int64)
        flat = flat.astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() > n_items):
            raise ValueError(f"train sessions hold item indices outside 0..{n_items}")
        counts = np.bincount(flat, minlength=n_items + 1)
        counts[PADDING_IDX] = 0
        return cls(torch.from_numpy(counts), config)

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        """``(B, n_items + 1)`` scores: an expanded read-only view (clone before modifying)."""
        return self._row.unsqueeze(0).expand(prefixes.shape[0], -1)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"n_items": self.n_items, **self.config.model_dump()}, {"counts": self.counts}

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PopularModel:
        cfg = {k: v for k, v in config.items() if k != "n_items"}
        model = cls(tensors["counts"], PopularConfig.model_validate(cfg))
        if "n_items" in config and int(config["n_items"]) != model.n_items:
            raise ValueError("bundle n_items does not match the counts tensor")
        return model

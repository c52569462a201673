"""The one contract every next-item model meets, neural or not.

Evaluation and serving only ever call :meth:`NextItemModel.score`; bundles only ever call
:meth:`NextItemModel.to_bundle` / ``from_bundle``. A model therefore never needs Lightning,
pickles or training code to be evaluated or served.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import torch
from pydantic import BaseModel
from torch import nn

from shoprec.schema import PADDING_IDX

__all__ = [
    "PADDING_IDX",
    "SCORE_BLOCK",
    "NeuralBundleMixin",
    "NextItemModel",
    "is_dot_product",
    "left_pad",
]

# Catalogue columns per block when a dot-product model is scored block by block: a block's
# float32 output (8 MB for 512 rows) stays in the CPU cache, and the product runs 1.3-1.5x
# faster than one (B x 43k) product here (experiments/2026-12-04-evaluate-blocked.md).
SCORE_BLOCK = 4096


def is_dot_product(model: object) -> bool:
    """Whether ``model`` scores as ``score_columns(session_vectors(prefixes), lo, hi)``
    (GRU4Rec, SASRec): its catalogue can then be scored block by block with ``score``'s own
    float32 product."""
    return callable(getattr(model, "session_vectors", None)) and callable(
        getattr(model, "score_columns", None)
    )


@runtime_checkable
class NextItemModel(Protocol):
    """Scores the whole catalogue for a batch of session prefixes.

    Item indices run 1..n_items; 0 is padding. ``score`` takes a LongTensor ``(B, T)`` of
    LEFT-padded prefixes (zeros first, the most recent item last) and returns a float tensor
    ``(B, n_items + 1)`` of scores, higher is better; column 0 (padding) must be ``-inf``.
    Padding must not change the scores of a prefix.
    """

    name: str
    n_items: int

    def score(self, prefixes: torch.Tensor) -> torch.Tensor: ...

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able config, tensors) that ``from_bundle`` rebuilds the model from."""
        ...

    @classmethod
    def from_bundle(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> NextItemModel: ...


def left_pad(sessions: list[list[int]] | list[Any], max_len: int | None = None) -> torch.Tensor:
    """Left-pad (and left-truncate to the last ``max_len`` items) a list of item sequences.

    >>> left_pad([[1, 2, 3], [4]]).tolist()
    [[1, 2, 3], [0, 0, 4]]
    >>> left_pad([[1, 2, 3]], max_len=2).tolist()
    [[2, 3]]
    """
    seqs = [list(s)[-max_len:] if max_len else list(s) for s in sessions]
    width = max((len(s) for s in seqs), default=0)
    width = max(width, 1)
    out = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out


class NeuralBundleMixin(nn.Module):
    """``to_bundle`` / ``from_bundle`` of a torch model built from one pydantic config: the
    config as JSON plus the state dict as weights-only tensors (no pickled classes)."""

    config_class: ClassVar[type[BaseModel]]
    config: BaseModel

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return self.config.model_dump(), tensors

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Self:
        model = cls(cls.config_class.model_validate(config))
        model.load_state_dict(tensors)
        model.eval()
        return model

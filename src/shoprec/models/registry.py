"""Name -> model class, for every registered next-item model.

Classes are imported lazily so that loading a kNN bundle never imports the neural models and
vice versa. Every entry meets :class:`shoprec.models.base.NextItemModel`.
"""

from __future__ import annotations

import importlib
from typing import Any

from shoprec.errors import ShoprecError

# name -> (module, model class, config class, training regime)
# regime "session_parallel": GRU4Rec's own mini-batches; "sequence": SASRec's padded sequences;
# "counts": non-neural models fitted in one pass over the train sessions; "hybrid": a mix of two
# trained members.
_REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "gru4rec": ("shoprec.models.gru4rec", "GRU4Rec", "GRU4RecConfig", "session_parallel"),
    "sasrec": ("shoprec.models.sasrec", "SASRec", "SASRecConfig", "sequence"),
    "pop": ("shoprec.models.popular", "PopularModel", "PopularConfig", "counts"),
    "sknn": ("shoprec.models.sknn", "SKNN", "SKNNConfig", "counts"),
    "vsknn": ("shoprec.models.sknn", "VSKNN", "VSKNNConfig", "counts"),
    # built from a trained neural bundle + a kNN model (``shoprec hybrid``), not by ``train``
    "hybrid": ("shoprec.models.hybrid", "Hybrid", "HybridConfig", "hybrid"),
}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[str, str, str, str]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ShoprecError(
            f"unknown model {name!r}; registered models: {', '.join(model_names())}"
        ) from None


def model_class(name: str) -> Any:
    module, cls, _, _ = _entry(name)
    return getattr(importlib.import_module(module), cls)


def config_class(name: str) -> Any:
    module, _, cfg, _ = _entry(name)
    return getattr(importlib.import_module(module), cfg)


def regime(name: str) -> str:
    return _entry(name)[3]

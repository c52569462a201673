"""A tiny NextItemModel for tests: item-to-item transition counts, registered as a bundle model.

It meets the NextItemModel contract and nothing more, so the recommender and the service are
tested against the protocol rather than against one real model. Registration writes into the
model registry's table because the registry has no public hook yet (see the serving report).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from shoprec import schema
from shoprec.export import save_bundle
from shoprec.inference import build_cart_neighbours, build_item_neighbours
from shoprec.models import registry

NAME = "test-transitions"


class TransitionModel:
    """score(prefix)[j] = times item j followed the prefix's last item in training; else -inf.

    Returning -inf for never-seen transitions makes the model rank few items, which is what
    exercises the recommender's popularity top-up.
    """

    name = NAME

    def __init__(self, transitions: torch.Tensor) -> None:
        self.transitions = transitions.float()  # (n_items + 1, n_items + 1)
        self.n_items = int(transitions.shape[0] - 1)

    @classmethod
    def fit(cls, sessions: list[np.ndarray], n_items: int) -> TransitionModel:
        t = torch.zeros((n_items + 1, n_items + 1))
        for s in sessions:
            for a, b in itertools.pairwise(s):
                t[int(a), int(b)] += 1
        return cls(t)

    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        last = prefixes[:, -1]  # (B,): left padding puts the newest item last
        rows = self.transitions[last].clone()  # (B, n_items + 1)
        rows[rows <= 0] = -torch.inf
        rows[:, 0] = -torch.inf
        return rows

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"n_items": self.n_items}, {"transitions": self.transitions}

    @classmethod
    def from_bundle(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> TransitionModel:
        return cls(tensors["transitions"])


REGISTRY_ENTRY = ("tests.serving.fakes", "TransitionModel", "TransitionModel", "counts")


def register(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Make ``load_bundle`` able to rebuild a TransitionModel.

    With ``monkeypatch`` the entry lasts for one test only, so that tests iterating over every
    registered model never meet this fake; without it (the server subprocess) it is permanent.
    The registry has no public registration hook yet, hence the private table.
    """
    if monkeypatch is not None:
        monkeypatch.setitem(registry._REGISTRY, NAME, REGISTRY_ENTRY)
    else:
        registry._REGISTRY.setdefault(NAME, REGISTRY_ENTRY)


# The catalogue every serving test uses: ids, train counts, sessions and baskets (1-based idx).
ITEM_IDS = ["a", "b", "c", "d", "e", "f", "g"]
SESSIONS = [[1, 2, 3], [1, 2, 4], [2, 3], [5, 6], [1, 2], [6, 7]]
BASKETS = [[1, 4], [1, 4], [2, 7], [3, 4]]


def items_table(item_ids: list[str], counts: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            schema.ITEM_IDX: list(range(1, len(item_ids) + 1)),
            schema.ITEM_ID: item_ids,
            schema.ITEM_COUNT: counts,
        },
        schema=schema.ITEMS_SCHEMA,
    )


def make_bundle(path: Path, *, aux: bool = True, cart: bool = True) -> Path:
    """Write the test bundle: a TransitionModel over SESSIONS, with neighbours in ``aux``."""
    n = len(ITEM_IDS)
    sessions = [np.array(s) for s in SESSIONS]
    counts = np.bincount(np.concatenate(sessions), minlength=n + 1)[1:].tolist()
    extra: dict[str, torch.Tensor] = {}
    if aux:
        extra.update(build_item_neighbours(sessions, n, top_n=4))
    if cart:
        extra.update(build_cart_neighbours([np.array(b) for b in BASKETS], n, top_n=4))
    return save_bundle(
        path, TransitionModel.fit(sessions, n), items_table(ITEM_IDS, counts), aux=extra
    )

"""Most-popular baseline: counts by hand, the NextItemModel contract, bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from shoprec import schema
from shoprec.config import ConfigError, validate_config
from shoprec.models.base import NextItemModel, left_pad
from shoprec.models.popular import PopularConfig, PopularModel

SESSIONS = [np.array([1, 2, 2]), np.array([3, 2]), np.array([4]), np.array([2, 1])]


def test_counts_every_click() -> None:
    m = PopularModel.fit(SESSIONS, n_items=5)
    assert m.counts.tolist() == [0, 2, 4, 1, 1, 0]
    s = m.score(left_pad([[1], [3, 4, 5], []]))
    assert s.shape == (3, 6)
    assert s[:, 0].tolist() == [float("-inf")] * 3
    assert s[0, 1:].tolist() == [2.0, 4.0, 1.0, 1.0, 0.0]
    assert torch.equal(s[0], s[1]) and torch.equal(s[1], s[2])  # the prefix is ignored


def test_contract_and_padding() -> None:
    m = PopularModel.fit(SESSIONS, n_items=5)
    assert isinstance(m, NextItemModel)
    assert m.name == "pop" and m.n_items == 5
    a = m.score(torch.tensor([[1, 2]]))
    b = m.score(torch.tensor([[0, 0, 0, 1, 2]]))
    assert torch.equal(a, b)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        PopularModel.fit([np.array([1, 7])], n_items=5)
    with pytest.raises(ValueError):
        PopularModel.fit(SESSIONS, n_items=0)
    with pytest.raises(ConfigError):
        validate_config(PopularConfig, {"k": 3})


def test_bundle_round_trip(tmp_path: Path) -> None:
    from shoprec.export import load_bundle, save_bundle

    m = PopularModel.fit(SESSIONS, n_items=5)
    config, tensors = m.to_bundle()
    again = PopularModel.from_bundle(config, tensors)
    x = left_pad([[1, 2], [3]])
    assert torch.equal(m.score(x), again.score(x))
    items = pl.DataFrame(
        {
            schema.ITEM_IDX: [1, 2, 3, 4, 5],
            schema.ITEM_ID: ["a", "b", "c", "d", "e"],
            schema.ITEM_COUNT: [2, 4, 1, 1, 0],
        },
        schema=schema.ITEMS_SCHEMA,
    )
    loaded = load_bundle(save_bundle(tmp_path / "pop", m, items)).model
    assert isinstance(loaded, PopularModel)
    assert torch.equal(torch.topk(loaded.score(x), 3).indices, torch.topk(m.score(x), 3).indices)

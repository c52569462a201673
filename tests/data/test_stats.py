"""stats: the summary of a prepared dataset, rendered as text."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from shoprec.config import load_config
from shoprec.data.config import DataConfig
from shoprec.data.dataset import DatasetError
from shoprec.data.prepare import prepare
from shoprec.data.stats import print_stats, top_items

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_inputs"


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    cfg = load_config(DataConfig, BAD / "bad_events.yaml")
    out = tmp_path / "ds"
    prepare(cfg, out, input_path=str(BAD / "bad_events.csv"))
    return out


def _render(root: Path) -> str:
    console = Console(record=True, width=120, color_system=None)
    print_stats(root, console=console)
    return console.export_text()


def _row(text: str, label: str) -> list[str]:
    """The cells of the first table row that starts with ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_summary_numbers(prepared: Path) -> None:
    text = _render(prepared)
    assert _row(text, "rows read") == ["17"]
    assert _row(text, "rows accepted") == ["4"]
    assert _row(text, "rows quarantined") == ["12"]
    assert _row(text, "exact duplicates removed") == ["1"]
    assert _row(text, "accepted sessions") == ["3"]
    assert _row(text, "items in the index (train)") == ["2"]
    assert _row(text, "unknown event type") == ["1"]
    assert _row(text, "view") == ["3"] and _row(text, "purchase") == ["1"]
    assert _row(text, "train")[:2] == ["3", "4"]  # sessions, events
    assert "test" not in [line.split("│")[0].strip() for line in text.splitlines()]


def test_top_items(prepared: Path) -> None:
    top = top_items(prepared, 5)
    assert top.rows() == [(1, "i1", 2), (2, "i2", 2)]


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        print_stats(tmp_path)

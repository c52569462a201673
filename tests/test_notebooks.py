"""The notebooks run top to bottom on a demo-like output (a prepared dataset + tracked runs)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from shoprec.tracking import RunTracker, promote, register
from shoprec.training.config import ExperimentConfig
from shoprec.training.fit import fit
from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tracked_store(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("nbstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name, model in (("pop", {"name": "pop"}), ("vsknn", {"name": "vsknn", "k": 20})):
        config = ExperimentConfig.model_validate(
            {
                "name": f"nb_{name}",
                "data": {"path": str(tiny_dataset)},
                "output_dir": str(root / "runs"),
                "model": model,
            }
        )
        with RunTracker("nb", config.name, tracking_uri=uri, tags={"task": "next-item"}) as t:
            fit(config, tracker=t)
        promote("next-item", register(t.run_id, "next-item", tracking_uri=uri), tracking_uri=uri)
    return uri


def test_there_are_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01_explore_event_log.ipynb", "02_compare_runs.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(
    path: Path, tiny_dataset: Path, tracked_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPREC_DATA", str(tiny_dataset))
    monkeypatch.setenv("SHOPREC_TRACKING_URI", tracked_store)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute(env=dict(os.environ))
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors

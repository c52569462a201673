"""Tracking against a real ``mlflow server`` backed by PostgreSQL, started and stopped here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from shoprec.tracking import RunTracker, mlflow_key, promote, register
from shoprec.training.config import ExperimentConfig
from shoprec.training.fit import fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def mlflow_server(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    backend = postgres_url  # postgresql+psycopg2:// (SQLAlchemy 2.1 defaults to psycopg 3)
    cmd = [
        mlflow_bin, "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(tmp_path / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_runs_and_registry_on_a_postgres_backed_server(
    mlflow_server: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    config = ExperimentConfig.model_validate(
        {
            "name": "server_pop",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": "pop"},
        }
    )
    with RunTracker("server", "server_pop", tracking_uri=mlflow_server) as tracker:
        fit(config, tracker=tracker)
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["server"], output_format="list")
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    assert runs[0].data.params["model.name"] == "pop"
    assert mlflow_key("test/hr@20") in runs[0].data.metrics
    version = register(tracker.run_id, "next-item", tracking_uri=mlflow_server)
    assert promote("next-item", version, tracking_uri=mlflow_server).promoted
    path = mlflow.artifacts.download_artifacts(
        "models:/next-item@champion", dst_path=str(tmp_path / "dl")
    )
    assert (Path(path) / "bundle.json").is_file()

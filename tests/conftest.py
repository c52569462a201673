"""Shared fixtures: where the real logs are, and how tests that need them skip or fail.

Tests that need ``../shared/data`` (or PostgreSQL / Redis) skip with a reason on a machine
without them, but fail when ``CI=true``: CI must never silently skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHOPREC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` unless running in CI, where it fails instead."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public logs (``../shared/data``)."""
    require(SHARED_DATA.is_dir(), f"real logs not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared synthetic storefront (train/valid/test), built once per test session."""
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare
    from shoprec.data.synth import SynthConfig, write_synthetic

    root = tmp_path_factory.mktemp("tiny")
    events = write_synthetic(
        SynthConfig(users=200, days=30, seed=7, n_items=300, n_categories=8), root / "raw"
    )
    preset = REPO_ROOT / "configs" / "data" / "synthetic.yaml"
    cfg = load_config(DataConfig, preset, ["split.test_days=5", "split.valid_days=5"])
    prepare(cfg, output=root / "data", input_path=str(events), config_path=preset)
    return root / "data"


def _postgres_reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1 (dropped afterwards)."""
    import uuid

    require(_postgres_reachable(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg2

    name = f"shoprec_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """The machine is shared: tiny tensors are fastest (and steady) on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

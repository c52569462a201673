"""``shoprec package``: MLflow registry -> BentoML model store -> a Bento built offline.

Real MLflow (a tmp sqlite store) and real BentoML (``BENTOML_HOME`` in a tmp folder), no mocks.
The build runs with every proxy pointed at a closed port and pip told to use no index, so a
build that tried to resolve anything against a registry would fail here.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from shoprec import packaging
from shoprec.export import load_bundle
from shoprec.packaging import PackagingError, package, parse_models_uri, serve_command

OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
    "BENTOML_DO_NOT_TRACK": "True",
}


@dataclass(frozen=True)
class Champion:
    """A next-item model trained, tracked, registered and promoted in a tmp MLflow store."""

    tracking_uri: str
    run_id: str
    version: str
    bundle: Path


def train_champion(data: Path, root: Path) -> Champion:
    from shoprec.tracking import RunTracker, promote, register
    from shoprec.training.config import ExperimentConfig
    from shoprec.training.fit import fit

    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = ExperimentConfig.model_validate(
        {
            "name": "tiny_vsknn",
            "data": {"path": str(data)},
            "output_dir": str(root / "runs"),
            "model": {"name": "vsknn", "k": 20, "sample_size": 100},
        }
    )
    with RunTracker("tiny", config.name, tracking_uri=uri, tags={"task": "next-item"}) as tracker:
        result = fit(config, tracker=tracker)
    version = register(tracker.run_id, "next-item", tracking_uri=uri)
    assert promote("next-item", version, tracking_uri=uri).promoted
    return Champion(uri, tracker.run_id, version, result.bundle_dir)


@pytest.fixture(scope="module")
def champion(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return train_champion(tiny_dataset, tmp_path_factory.mktemp("registry"))


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BENTOML_HOME, and no way out to the network for anything packaging starts."""
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    return home


def test_package_from_the_registry_labels_the_model_and_builds_offline(
    champion: Champion, home: Path
) -> None:
    archive = home.parent / "out" / "storefront.bento"
    result = package(
        "models:/next-item@champion", None, tracking_uri=champion.tracking_uri, output=archive
    )
    assert result.bentoml_home == home.resolve()
    [stored] = result.models
    assert stored.kind == "next-item"
    assert stored.mlflow_run_id == champion.run_id
    assert stored.mlflow_model_version == champion.version
    assert stored.labels == {
        "model": "vsknn",
        "source": "models:/next-item@champion",
        "mlflow_run_id": champion.run_id,
        "mlflow_model_version": champion.version,
        "mlflow_registered_model": "next-item",
    }

    # the model store (under BENTOML_HOME, nowhere else) holds it, labelled, as a plain bundle
    model = packaging.get_model("next-item:latest", home=home)
    assert str(model.tag) == stored.tag
    assert model.info.labels == stored.labels
    assert model.info.metadata["model_name"] == "vsknn"
    assert (
        model.info.metadata["metrics"]
        == json.loads((champion.bundle / "bundle.json").read_text())["metrics"]
    )
    path = Path(model.path)
    assert path.is_relative_to(home)
    assert {"bundle.json", "weights.pt", "items.parquet", "aux.pt"} <= {
        p.name for p in path.iterdir()
    }
    assert load_bundle(path).model.n_items == load_bundle(champion.bundle).model.n_items

    # the Bento: built offline, records the model and its provenance, carries page and wheel
    assert result.bento_tag is not None and result.bento_tag.startswith("shoprec-storefront:")
    name, version = result.bento_tag.split(":")
    bento = home / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [stored.tag]
    assert info["labels"]["next-item.mlflow_run_id"] == champion.run_id
    assert info["labels"]["next-item.mlflow_model_version"] == champion.version
    assert info["labels"]["project"] == "shoprec"
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert {"/events", "/recently_viewed", "/next_items", "/cart_addons", "/churn_risk"} <= routes
    src = bento / "src" / "serving"
    for name in ("service.py", "pages.py", "config.yaml", "static/index.html", "static/app.js"):
        assert (src / name).is_file(), name
    [wheel] = (bento / "env" / "python" / "wheels").glob("shoprec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "shoprec/packaging.py" in zf.namelist()
    assert any("no churn model" in note for note in result.notes)

    # the exported archive carries the Bento and its model: it runs where this store is not
    assert result.exported == archive.resolve()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("src/serving/static/index.html") for n in names)
    model_version = stored.tag.split(":")[1]
    assert any(n.endswith(f"models/next-item/{model_version}/weights.pt") for n in names), names


def test_package_a_bundle_folder_without_building(champion: Champion, home: Path) -> None:
    first = package(str(champion.bundle), None, build=False)
    second = package(str(champion.bundle), None, build=False)
    assert first.bento_tag is None
    assert not list((home / "bentos").glob("*/*/bento.yaml"))
    [a], [b] = first.models, second.models
    assert a.labels == {"model": "vsknn", "source": str(champion.bundle.resolve())}
    assert a.mlflow_run_id is None and a.mlflow_model_version is None
    assert a.tag != b.tag
    assert str(packaging.get_model("next-item:latest", home=home).tag) == b.tag


def test_package_refuses_what_it_cannot_serve(
    champion: Champion, home: Path, tmp_path: Path
) -> None:
    uri = champion.tracking_uri
    with pytest.raises(PackagingError, match="nothing to package"):
        package(None, None)
    with pytest.raises(PackagingError, match="expected models:/NAME@ALIAS"):
        package("models:/next-item", None, tracking_uri=uri, build=False)
    with pytest.raises(PackagingError, match="not found in the registry"):
        package("models:/next-item@nobody", None, tracking_uri=uri, build=False)
    with pytest.raises(PackagingError, match="not a bundle folder"):
        package(str(tmp_path / "missing"), None, build=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackagingError, match="not a loadable next-item bundle"):
        package(str(tmp_path / "empty"), None, build=False)
    with pytest.raises(PackagingError, match="not a loadable churn bundle"):
        package(None, str(champion.bundle), build=False)  # a next-item bundle is no churn model
    assert not (home / "models" / "next-item").exists()


def test_models_uri_parsing() -> None:
    assert parse_models_uri("models:/next-item@champion") == ("next-item", "champion", None)
    assert parse_models_uri("models:/churn/12") == ("churn", None, "12")
    for bad in ("models:/", "models:/x/y/z", "models:/x/latest", "models:/@a", "models:/x@"):
        with pytest.raises(PackagingError):
            parse_models_uri(bad)


def test_serve_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("SHOPREC_NEXT_ITEM_BUNDLE", "/stale/bundle")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.delenv("SHOPREC_STATE_DIR", raising=False)
    argv, _, env = serve_command("shoprec-storefront:latest", port=3123)
    assert argv[-6:] == [
        "serve",
        "shoprec-storefront:latest",
        "--host",
        "127.0.0.1",
        "--port",
        "3123",
    ]
    assert env["BENTOML_HOME"] == str((tmp_path / "bentoml").resolve())
    assert "SHOPREC_NEXT_ITEM_BUNDLE" not in env  # a Bento serves its packaged model
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["SHOPREC_STATE_DIR"] == str(Path.cwd() / ".shoprec-state")

    argv, cwd, env = serve_command(
        None, "127.0.0.1", 3000, bundle=tmp_path / "b", store="sqlite:///x.sqlite"
    )
    assert argv[-6:-4] == ["serve", "serving.service:Storefront"]
    assert (cwd / "serving" / "bentofile.yaml").is_file()
    assert env["SHOPREC_NEXT_ITEM_BUNDLE"] == str((tmp_path / "b").resolve())
    assert env["SHOPREC_STORE_URL"] == "sqlite:///x.sqlite"


def test_cli_verbs() -> None:
    parser = argparse.ArgumentParser(prog="shoprec")
    packaging.register_cli(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["package"])
    assert args.func is packaging._cmd_package
    assert (args.next_item, args.churn, args.no_build) == (
        "models:/next-item@champion",
        None,
        False,
    )
    args = parser.parse_args(
        ["package", "--churn", "models:/churn@champion", "--tracking-uri", "u", "--no-build"]
    )
    assert (args.churn, args.tracking_uri, args.no_build) == ("models:/churn@champion", "u", True)
    args = parser.parse_args(["serve", "shoprec-storefront:latest", "--port", "3001"])
    assert args.func is packaging._cmd_serve
    assert (args.bento, args.port, args.host) == ("shoprec-storefront:latest", 3001, "127.0.0.1")
    args = parser.parse_args(["serve", "--bundle", "b", "--store", "redis://127.0.0.1:6379/0"])
    assert (args.bento, args.bundle, args.store) == (None, "b", "redis://127.0.0.1:6379/0")

"""From the model registry to a running storefront: BentoML models, the Bento, ``bentoml serve``.

:func:`package` takes each model either from the MLflow registry (``models:/next-item@champion``,
``models:/churn/3``) or from a bundle folder, checks that it loads the way the service will load
it, and stores it in the BentoML model store as ``next-item`` / ``churn``: the framework-free
bundle files, the bundle's JSON description as metadata, and labels that say where it came from
(``mlflow_run_id``, ``mlflow_model_version``, ``model``). It then builds the storefront Bento
from ``serving/bentofile.yaml``, offline: the ``shoprec`` wheel is built locally
(``pip wheel --no-deps --no-build-isolation --no-index``) and package locking is off, so nothing
is resolved against a registry (STACK_NOTES). The Bento records the exact model tags and the
service inside it loads exactly those (outside a Bento, ``serve`` on the working tree falls
back to ``next-item:latest`` / ``churn:latest``).

:func:`serve` runs ``bentoml serve`` (a built Bento, or the working tree's
``serving.service:Storefront``) on 127.0.0.1, forwarding SIGINT / SIGTERM / SIGHUP to it.

The BentoML home is ``$BENTOML_HOME`` (default ``~/bentoml``), read at call time; nothing
here writes into the repository. ``bentoml`` is imported inside the functions, so the CLI
starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from shoprec.errors import ShoprecError

NEXT_ITEM = "next-item"
CHURN = "churn"
MODELS_SCHEME = "models:/"
SERVICE = "serving.service:Storefront"
BENTOFILE = Path("serving") / "bentofile.yaml"
PROJECT_ENV = "SHOPREC_PROJECT_DIR"
# Bundle paths the service reads; `serve` of a Bento ignores inherited values (--bundle wins).
_BUNDLE_ENV = ("SHOPREC_NEXT_ITEM_BUNDLE", "SHOPREC_CHURN_BUNDLE")
STATE_ENV = "SHOPREC_STATE_DIR"


class PackagingError(ShoprecError):
    """A model that cannot be packaged, or a Bento that cannot be built or served."""


@dataclass(frozen=True)
class PackagedModel:
    """One model stored in the BentoML model store."""

    kind: str  # "next-item" or "churn": the BentoML model name
    tag: str  # "next-item:6yd3..."
    source: str  # the registry URI or bundle folder it came from
    labels: dict[str, str]
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None


@dataclass(frozen=True)
class PackageResult:
    models: list[PackagedModel]
    bentoml_home: Path
    bento_tag: str | None = None  # None with build=False
    exported: Path | None = None  # the .bento archive written for output=
    notes: list[str] = field(default_factory=list)

    def model(self, kind: str) -> PackagedModel | None:
        return next((m for m in self.models if m.kind == kind), None)


# --- where things are ---------------------------------------------------------------------------
def bentoml_home() -> Path:
    """``$BENTOML_HOME``, else ``~/bentoml`` (BentoML's own default)."""
    return Path(os.path.expanduser(os.environ.get("BENTOML_HOME") or "~/bentoml")).resolve()


def find_project(start: Path | None = None) -> Path:
    """The checkout holding ``serving/bentofile.yaml``: ``$SHOPREC_PROJECT_DIR``, else ``start``
    (default: the working directory) or one of its parents, else the one this file lives in."""
    candidates: list[Path] = []
    if env := os.environ.get(PROJECT_ENV):
        candidates.append(Path(env))
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents, Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / BENTOFILE).is_file() and (root / "serving" / "service.py").is_file():
            return root
    raise PackagingError(
        f"no serving/bentofile.yaml found from {here} upwards: run this from the shoprec "
        f"checkout or set {PROJECT_ENV}"
    )


def _bentoml_cli() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bentoml"]


def _bentoml_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `bentoml serve` manages its own
    env.update(extra or {})
    return env


# --- sources -------------------------------------------------------------------------------------
def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of a registry URI.

    >>> parse_models_uri("models:/next-item@champion")
    ('next-item', 'champion', None)
    >>> parse_models_uri("models:/churn/3")
    ('churn', None, '3')
    """
    body = uri.removeprefix(MODELS_SCHEME)
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in name:
            return name, alias, None
    elif body.count("/") == 1:
        name, version = body.split("/")
        if name and version.isdigit():
            return name, None, version
    raise PackagingError(
        f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION (e.g. "
        f"models:/next-item@champion)"
    )


@dataclass(frozen=True)
class _Fetched:
    path: Path
    source: str
    run_id: str | None = None
    version: str | None = None
    registered_name: str | None = None


def _fetch(source: str, tmp: Path, tracking_uri: str | None) -> _Fetched:
    """A local bundle folder for ``source``; a registry URI is resolved to one model version
    first and that exact version is downloaded (the alias may move while we work)."""
    if not source.startswith(MODELS_SCHEME):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise PackagingError(f"{source}: not a bundle folder (and not a models:/ URI)")
        return _Fetched(path=path.resolve(), source=str(path.resolve()))
    name, alias, version = parse_models_uri(source)
    from shoprec import tracking

    try:
        mv = tracking.model_version(name, alias=alias, version=version, tracking_uri=tracking_uri)
    except tracking.TrackingError as exc:
        raise PackagingError(f"{source}: {exc}") from exc
    dst = tmp / f"{name}-v{mv.version}"
    dst.mkdir(parents=True)
    try:
        path = tracking.download_model(
            f"{MODELS_SCHEME}{name}/{mv.version}", dst, tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise PackagingError(f"{source}: cannot download version {mv.version}: {exc}") from exc
    return _Fetched(
        path=_bundle_root(Path(path)),
        source=source,
        run_id=mv.run_id,
        version=mv.version,
        registered_name=name,
    )


def _bundle_root(path: Path) -> Path:
    """The folder with the bundle files: ``path`` or its single sub-folder."""
    if any(path.glob("*.json")):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    return subdirs[0] if len(subdirs) == 1 else path


def _metadata(value: Any) -> Any:
    """JSON content as BentoML metadata, which refuses None: null values are dropped."""
    if isinstance(value, dict):
        return {str(k): _metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_metadata(v) for v in value if v is not None]
    return value


def _describe_next_item(path: Path) -> tuple[str, dict[str, Any]]:
    """Load the bundle as the service does; ``(model name, bundle.json)``."""
    from shoprec.export import BUNDLE_JSON, load_bundle

    try:
        bundle = load_bundle(path)
    except (ShoprecError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise PackagingError(f"{path}: not a loadable next-item bundle: {exc}") from exc
    kind = bundle.meta.get("kind", NEXT_ITEM)
    if kind != NEXT_ITEM:
        raise PackagingError(f"{path}: a {kind!r} bundle, not a next-item bundle")
    meta = json.loads((path / BUNDLE_JSON).read_text(encoding="utf-8"))
    return str(bundle.meta["model_name"]), meta


def _describe_churn(path: Path) -> tuple[str, dict[str, Any]]:
    """Load the bundle as the service does; ``(bundled model, config.json + selection)``."""
    from shoprec.inference import ChurnScorer

    try:
        ChurnScorer(path)
    except (ShoprecError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise PackagingError(f"{path}: not a loadable churn bundle: {exc}") from exc
    meta: dict[str, Any] = {}
    for name in ("config.json", "bundle.json"):
        if (path / name).is_file():
            meta = json.loads((path / name).read_text(encoding="utf-8"))
            break
    model = "churn_net"
    if (path / "metrics.json").is_file():
        selection = json.loads((path / "metrics.json").read_text(encoding="utf-8")).get("selection")
        if isinstance(selection, dict):
            meta = {**meta, "selection": selection}
            model = str(selection.get("bundled_model") or model)
    return model, meta


def store_model(
    kind: str,
    source: str,
    *,
    tracking_uri: str | None = None,
    home: Path | None = None,
) -> PackagedModel:
    """Store one bundle (registry URI or folder) as the BentoML model ``kind``."""
    if kind not in (NEXT_ITEM, CHURN):
        raise PackagingError(f"unknown model kind {kind!r} ({NEXT_ITEM}, {CHURN})")
    import bentoml
    from bentoml._internal.models import ModelStore

    home = home or bentoml_home()
    (home / "models").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoprec-package-") as tmp:
        fetched = _fetch(source, Path(tmp), tracking_uri)
        describe = _describe_next_item if kind == NEXT_ITEM else _describe_churn
        model_name, meta = describe(fetched.path)
        labels = {"model": model_name, "source": fetched.source}
        if fetched.run_id is not None:
            labels["mlflow_run_id"] = fetched.run_id
        if fetched.version is not None:
            labels["mlflow_model_version"] = fetched.version
            labels["mlflow_registered_model"] = str(fetched.registered_name)
        # The private kwarg pins the store to $BENTOML_HOME as of now: BentoML caches its home
        # at first use, so a later change of the variable (a test, a library caller) is ignored.
        store = ModelStore(str(home / "models"))
        with bentoml.models.create(
            kind, labels=labels, metadata=_metadata(meta), _model_store=store
        ) as model:
            target = Path(model.path)
            for item in fetched.path.iterdir():
                if item.is_dir():
                    shutil.copytree(item, target / item.name)
                else:
                    shutil.copy2(item, target / item.name)
        tag = str(model.tag)
    return PackagedModel(
        kind=kind,
        tag=tag,
        source=fetched.source,
        labels=labels,
        mlflow_run_id=fetched.run_id,
        mlflow_model_version=fetched.version,
    )


def get_model(tag: str, *, home: Path | None = None) -> Any:
    """A stored BentoML model (``next-item:latest``) in ``home`` (default ``$BENTOML_HOME``)."""
    from bentoml._internal.models import ModelStore

    return ModelStore(str((home or bentoml_home()) / "models")).get(tag)


# --- the Bento -----------------------------------------------------------------------------------
def _run(cmd: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise PackagingError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def build_wheel(project: Path, dist: Path) -> Path:
    """The ``shoprec`` wheel, built offline from a copy of the sources (the checkout stays
    untouched: setuptools would write ``build/`` into it)."""
    src = dist.parent / "wheel-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(project / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py"):
        if (project / name).is_file():
            shutil.copy2(project / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    try:
        _run([*pip, "--quiet", "--wheel-dir", str(dist), str(src)], "building the shoprec wheel")
    except PackagingError as exc:
        raise PackagingError(
            f"{exc}\n(the wheel is built offline with the environment's own setuptools: "
            f"pip install 'setuptools>=70.1')"
        ) from None
    wheels = sorted(dist.glob("shoprec-*.whl"))
    if not wheels:
        raise PackagingError(f"building the shoprec wheel left no wheel in {dist}")
    shutil.rmtree(src)
    return wheels[-1]


def build_bento(
    models: Sequence[PackagedModel] = (),
    *,
    home: Path | None = None,
    project: Path | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Build the storefront Bento from ``serving/bentofile.yaml`` offline; returns its tag.

    The build context is a staged copy (``serving/`` + the locally built wheel), so the
    checkout is never written to. ``models`` are recorded in the Bento (``bento.yaml``), and
    their provenance becomes Bento labels.
    """
    home = home or bentoml_home()
    project = project or find_project()
    with tempfile.TemporaryDirectory(prefix="shoprec-bento-") as tmp:
        stage = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(project / "serving", stage / "serving", ignore=ignore)
        config: dict[str, Any] = yaml.safe_load((project / BENTOFILE).read_text(encoding="utf-8"))
        wheel = build_wheel(project, stage / "dist")
        python = dict(config.get("python") or {})
        python["wheels"] = [f"./dist/{wheel.name}"]
        python["lock_packages"] = False  # no dependency resolution against a registry
        config["python"] = python
        config["models"] = [m.tag for m in models]
        all_labels = {str(k): str(v) for k, v in (config.get("labels") or {}).items()}
        for m in models:
            all_labels[f"{m.kind}.model"] = m.tag
            for key in ("mlflow_run_id", "mlflow_model_version"):
                if key in m.labels:
                    all_labels[f"{m.kind}.{key}"] = m.labels[key]
        all_labels.update(labels or {})
        config["labels"] = all_labels
        bentofile = stage / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        proc = _run(
            [*_bentoml_cli(), "build", "-f", str(bentofile), "--output", "tag", str(stage)],
            "bentoml build",
            cwd=stage,
            env=_bentoml_env(home),
        )
    for line in proc.stdout.splitlines():
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:").strip()
    raise PackagingError(f"bentoml build printed no tag:\n{proc.stdout[-2000:]}")


def export_bento(tag: str, output: Path, *, home: Path | None = None) -> Path:
    """Write the Bento (with its models) as one archive (``bentoml export``)."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [*_bentoml_cli(), "export", tag, str(output)],
        "bentoml export",
        env=_bentoml_env(home or bentoml_home()),
    )
    return output


def package(
    next_item: str | None,
    churn: str | None,
    *,
    tracking_uri: str | None = None,
    build: bool = True,
    output: Path | None = None,
) -> PackageResult:
    """Store the next-item (and optionally churn) model in the BentoML model store and build
    the storefront Bento from them.

    ``next_item`` / ``churn``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (MLflow
    registry at ``tracking_uri``) or a bundle folder; None leaves that model as it is in the
    store (a Bento needs a ``next-item`` model there). ``output`` also writes the Bento with its
    models as one ``.bento`` archive.
    """
    if next_item is None and churn is None:
        raise PackagingError("nothing to package: give a next-item and/or a churn model")
    home = bentoml_home()
    models: list[PackagedModel] = []
    if next_item is not None:
        models.append(store_model(NEXT_ITEM, next_item, tracking_uri=tracking_uri, home=home))
    if churn is not None:
        models.append(store_model(CHURN, churn, tracking_uri=tracking_uri, home=home))
    notes: list[str] = []
    if not build:
        return PackageResult(models=models, bentoml_home=home, notes=notes)
    from bentoml.exceptions import NotFound

    recorded = list(models)
    for kind in (NEXT_ITEM, CHURN):
        if any(m.kind == kind for m in models):
            continue
        try:
            existing = get_model(f"{kind}:latest", home=home)
        except NotFound:
            if kind == NEXT_ITEM:
                raise PackagingError(
                    f"no next-item model in {home / 'models'}: package one with --next-item"
                ) from None
            notes.append("no churn model: /churn_risk answers 409 (package one with --churn)")
            continue
        recorded.append(PackagedModel(kind=kind, tag=str(existing.tag), source="store", labels={}))
        notes.append(f"{kind}: using {existing.tag} already in the store")
    tag = build_bento(recorded, home=home)
    exported = export_bento(tag, output, home=home) if output is not None else None
    return PackageResult(
        models=models, bentoml_home=home, bento_tag=tag, exported=exported, notes=notes
    )


# --- serving -------------------------------------------------------------------------------------
def serve_command(
    bento_or_path: str | None,
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    bundle: Path | None = None,
    churn: Path | None = None,
    store: str | None = None,
    project: Path | None = None,
) -> tuple[list[str], Path, dict[str, str]]:
    """``(argv, cwd, env)`` of the ``bentoml serve`` process :func:`serve` starts.

    ``bento_or_path``: a Bento tag (``shoprec-storefront:latest``), a built Bento folder, or
    None for the working tree's ``serving.service:Storefront``. ``bundle`` / ``churn`` / ``store``
    become ``SHOPREC_NEXT_ITEM_BUNDLE`` / ``SHOPREC_CHURN_BUNDLE`` / ``SHOPREC_STORE_URL``;
    without them a Bento serves the model tags it was built with, the working tree
    ``next-item:latest`` / ``churn:latest`` from the model store (inherited bundle variables
    are dropped for a Bento). The sqlite event state goes to ``$SHOPREC_STATE_DIR``, default
    ``./.shoprec-state`` of the caller.
    """
    extra: dict[str, str] = {}
    if bundle is not None:
        extra["SHOPREC_NEXT_ITEM_BUNDLE"] = str(Path(bundle).resolve())
    if churn is not None:
        extra["SHOPREC_CHURN_BUNDLE"] = str(Path(churn).resolve())
    if store is not None:
        extra["SHOPREC_STORE_URL"] = store
    if bento_or_path is None:
        target, cwd = SERVICE, project or find_project()
    else:
        as_path = Path(bento_or_path).expanduser()
        target = str(as_path.resolve()) if as_path.is_dir() else bento_or_path
        cwd = Path.cwd()
    env = _bentoml_env(bentoml_home(), extra)
    if bento_or_path is not None:
        for key in _BUNDLE_ENV:  # a Bento serves its packaged models unless told otherwise here
            if key not in extra:
                env.pop(key, None)
    # Event state next to where it was started, wherever BentoML runs the service from.
    env.setdefault(STATE_ENV, str(Path.cwd() / ".shoprec-state"))
    argv = [*_bentoml_cli(), "serve", target, "--host", host, "--port", str(port)]
    return argv, cwd, env


def serve(
    bento_or_path: str | None,
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    bundle: Path | None = None,
    churn: Path | None = None,
    store: str | None = None,
    project: Path | None = None,
) -> int:
    """Run ``bentoml serve`` until it exits (or we get SIGINT / SIGTERM / SIGHUP, which are
    forwarded to it); returns its exit status. See :func:`serve_command` for the arguments."""
    argv, cwd, env = serve_command(
        bento_or_path, host, port, bundle=bundle, churn=churn, store=store, project=project
    )
    print(f"storefront on http://{host}:{port}  (demo page: http://{host}:{port}/demo/)")
    # A session of its own: a terminal's Ctrl-C reaches us once and is forwarded once.
    proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
    with _forward_signals(proc):
        try:
            return proc.wait()
        finally:
            _stop(proc)


@contextmanager
def _forward_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    def forward(signum: int, frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --- CLI -----------------------------------------------------------------------------------------
def _cmd_package(args: argparse.Namespace) -> int:
    result = package(
        args.next_item,
        args.churn,
        tracking_uri=args.tracking_uri,
        build=not args.no_build,
        output=Path(args.output) if args.output else None,
    )
    for m in result.models:
        provenance = ", ".join(f"{k}={v}" for k, v in m.labels.items())
        print(f"stored {m.tag} ({provenance})")
    for note in result.notes:
        print(f"note: {note}")
    print(f"BentoML home: {result.bentoml_home}")
    if result.bento_tag:
        print(f"built Bento {result.bento_tag}")
        if result.exported:
            print(f"exported to {result.exported}")
        print(f"serve it: shoprec serve {result.bento_tag}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return serve(
        args.bento,
        args.host,
        args.port,
        bundle=Path(args.bundle) if args.bundle else None,
        churn=Path(args.churn) if args.churn else None,
        store=args.store,
    )


def register_cli(subparsers: Any) -> None:
    """Add ``shoprec package`` and ``shoprec serve`` to the CLI's verbs."""
    p = subparsers.add_parser(
        "package", help="store models in BentoML and build the storefront Bento (offline)"
    )
    p.add_argument(
        "--next-item",
        default=f"{MODELS_SCHEME}{NEXT_ITEM}@champion",
        metavar="URI|DIR",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder "
        "(default: models:/next-item@champion)",
    )
    p.add_argument(
        "--churn",
        default=None,
        metavar="URI|DIR",
        help="the churn model, e.g. models:/churn@champion",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite)")
    p.add_argument("--no-build", action="store_true", help="store the models, build no Bento")
    p.add_argument("--output", default=None, help="also export the Bento to this .bento file")
    p.set_defaults(func=_cmd_package)

    p = subparsers.add_parser("serve", help="run the storefront service (bentoml serve)")
    p.add_argument(
        "bento",
        nargs="?",
        default=None,
        help="Bento tag or folder (default: the working tree's serving.service:Storefront)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--bundle", default=None, help="next-item bundle folder (else next-item:latest)")
    p.add_argument("--churn", default=None, help="churn bundle folder (else churn:latest)")
    p.add_argument("--store", default=None, help="event store URL (sqlite:///..., redis://...)")
    p.set_defaults(func=_cmd_serve)

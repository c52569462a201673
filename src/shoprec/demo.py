"""``make demo``: the main job, end to end, on the embedded default (the synthetic storefront).

Each step says what it does and skips work that is already done, so a second run is fast.
``--data``/``--preset`` run the same path on one's own export.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from shoprec.errors import ShoprecError

CONFIGS = Path("configs")
DEFAULT_PRESET = CONFIGS / "data" / "synthetic.yaml"


@dataclass
class DemoOptions:
    workdir: Path = Path("demo")
    data: Path | None = None  # one's own export; default: generate the synthetic storefront
    preset: Path | None = None
    users: int = 3000
    days: int = 60
    seed: int = 0
    force: bool = False


@dataclass
class DemoContext:
    options: DemoOptions
    console: Console
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_dir(self) -> Path:
        return self.options.workdir / "raw"

    @property
    def data_dir(self) -> Path:
        return self.options.workdir / "data"


def _step_synth(ctx: DemoContext) -> str:
    from shoprec.data.synth import SynthConfig, write_synthetic

    opts = ctx.options
    if opts.data is not None:
        ctx.outputs["events"] = opts.data
        return f"using your export {opts.data}"
    events = ctx.raw_dir / "events.csv"
    if events.is_file() and not opts.force:
        ctx.outputs["events"] = events
        return f"reusing {events}"
    cfg = SynthConfig(users=opts.users, days=opts.days, seed=opts.seed)
    ctx.outputs["events"] = write_synthetic(cfg, ctx.raw_dir)
    return f"generated {ctx.outputs['events']} ({opts.users} users, {opts.days} days)"


def _step_prepare(ctx: DemoContext) -> str:
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.dataset import MANIFEST
    from shoprec.data.prepare import prepare

    preset = ctx.options.preset or DEFAULT_PRESET
    manifest = ctx.data_dir / MANIFEST
    events = Path(ctx.outputs["events"])
    if (
        manifest.is_file()
        and not ctx.options.force
        and manifest.stat().st_mtime >= (events.stat().st_mtime if events.exists() else 0)
    ):
        return f"reusing {ctx.data_dir}"
    cfg = load_config(DataConfig, preset)
    m = prepare(cfg, output=ctx.data_dir, input_path=str(events), config_path=preset)
    return (
        f"{m['rows_read']:,} rows read, {m['rows_accepted']:,} accepted, "
        f"{m['rows_quarantined']:,} quarantined, {m['rows_duplicate']:,} duplicates"
    )


def _step_summary(ctx: DemoContext) -> str:
    from shoprec.data.stats import print_stats

    print_stats(ctx.data_dir)
    return "done"


DEMO_MODELS = ("vsknn", "gru4rec", "sasrec")


def _state(ctx: DemoContext) -> dict[str, Any]:
    path = ctx.options.workdir / "demo_state.json"
    if path.is_file() and not ctx.options.force:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    return {}


def _save_state(ctx: DemoContext, state: dict[str, Any]) -> None:
    path = ctx.options.workdir / "demo_state.json"
    path.write_text(json.dumps(state, indent=2), encoding="utf-8")


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def _step_train(ctx: DemoContext) -> str:
    from rich.table import Table

    from shoprec.tracking import RunTracker, register
    from shoprec.training.config import load_experiment
    from shoprec.training.fit import fit

    state = _state(ctx)
    runs: dict[str, Any] = state.setdefault("runs", {})
    uri = tracking_uri(ctx.options.workdir)
    table = Table(title="next-item models on the test week (full catalogue, pessimistic ties)")
    for col in ("model", "HR@20", "MRR@20", "NDCG@20", "train s", "registered"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name in DEMO_MODELS:
        done = runs.get(name)
        if done is None or not Path(done["bundle"]).is_dir():
            overrides = [
                f"data.path={ctx.data_dir}",
                f"data.input={ctx.outputs['events']}",
                f"output_dir={ctx.options.workdir / 'runs'}",
                "trainer.progress_bar=false",
            ]
            config = load_experiment(CONFIGS / "experiment" / f"synthetic_{name}.yaml", overrides)
            ctx.console.print(f"training {name} ...")
            with RunTracker(
                "shoprec-demo", config.name, tracking_uri=uri, tags={"task": "next-item"}
            ) as tracker:
                result = fit(config, tracker=tracker, run_dir=None)
            version = register(tracker.run_id, "next-item", tracking_uri=uri)
            done = {
                "run_id": tracker.run_id,
                "version": version,
                "bundle": str(result.bundle_dir),
                "metrics": result.metrics,
                "train_seconds": result.timings.get("train_seconds", 0.0),
            }
            runs[name] = done
            _save_state(ctx, state)
        m = done["metrics"]
        table.add_row(
            name,
            f"{m.get('test/hr@20', 0):.4f}",
            f"{m.get('test/mrr@20', 0):.4f}",
            f"{m.get('test/ndcg@20', 0):.4f}",
            f"{done['train_seconds']:.0f}",
            f"next-item v{done['version']}",
        )
    ctx.console.print(table)
    ctx.outputs["runs"] = runs
    return f"{len(runs)} models trained and tracked in {uri}"


def _step_promote(ctx: DemoContext) -> str:
    from shoprec.tracking import promote

    state = _state(ctx)
    runs = state.get("runs", {})
    uri = tracking_uri(ctx.options.workdir)
    ranked = sorted(runs.items(), key=lambda kv: kv[1]["metrics"].get("test/mrr@20", 0.0))
    messages = []
    for name, run in ranked:  # worst first: each better one takes the alias over
        decision = promote("next-item", str(run["version"]), tracking_uri=uri)
        messages.append(f"{name}: {decision.message}")
    for line in messages:
        ctx.console.print(f"  {line}")
    champion = ranked[-1][0] if ranked else None
    ctx.outputs["champion"] = champion
    state["champion"] = champion
    _save_state(ctx, state)
    return f"champion: {champion}"


def _step_churn(ctx: DemoContext) -> str:
    from shoprec.churn.run import fit_churn_run
    from shoprec.tracking import RunTracker, promote, register

    state = _state(ctx)
    churn = state.get("churn")
    uri = tracking_uri(ctx.options.workdir)
    if churn is None or not Path(churn["bundle"]).is_dir():
        workdir = ctx.options.workdir
        overrides = [
            f"data.path={workdir / 'churn_data'}",
            f"data.input={ctx.outputs['events']}",
            f"output_dir={workdir / 'runs'}",
        ]
        ctx.console.print("training the churn model and its baselines ...")
        with RunTracker(
            "shoprec-demo", "demo_churn", tracking_uri=uri, tags={"task": "churn"}
        ) as t:
            result = fit_churn_run(CONFIGS / "churn" / "demo.yaml", overrides, tracker=t)
        version = register(t.run_id, "churn", tracking_uri=uri)
        decision = promote("churn", version, tracking_uri=uri)
        churn = {
            "run_id": t.run_id,
            "version": version,
            "bundle": str(result.bundle_dir),
            "metrics": {k: float(v) for k, v in (result.flat_metrics or {}).items()},
            "promoted": decision.message,
        }
        state["churn"] = churn
        _save_state(ctx, state)
    m = {k: churn["metrics"].get(f"test/{k}", float("nan")) for k in ("roc_auc", "pr_auc", "ece")}
    ctx.console.print(
        f"  churn model: test ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, "
        f"ECE {m['ece']:.3f}"
    )
    ctx.console.print(f"  {churn['promoted']}")
    ctx.outputs["churn_bundle"] = churn["bundle"]
    return f"churn v{churn['version']} registered"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> Any:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_ready(url: str, proc: Any, seconds: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ShoprecError(f"the service exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ShoprecError(f"the service at {url} was not ready within {seconds:.0f} s")


def _replay_slice(ctx: DemoContext, n_sessions: int = 40) -> tuple[list[dict[str, Any]], str]:
    """The last sessions of signed-in shoppers in the export, as the storefront would send them."""
    import polars as pl

    from shoprec import schema

    events = pl.read_csv(ctx.outputs["events"], infer_schema_length=0)
    known = events.filter(pl.col(schema.USER_ID).is_not_null())
    last = known.select(schema.SESSION_ID).unique(maintain_order=True).tail(n_sessions)
    rows = known.join(last, on=schema.SESSION_ID).sort(schema.TIMESTAMP)
    payload = [
        {
            "event_id": r.get("event_id") or None,
            "user_id": r[schema.USER_ID],
            "session_id": r[schema.SESSION_ID],
            "item_id": r[schema.ITEM_ID],
            "event_type": r[schema.EVENT_TYPE],
            "timestamp": r[schema.TIMESTAMP],
        }
        for r in rows.iter_rows(named=True)
    ]
    return payload, str(rows.get_column(schema.USER_ID)[-1])


def _step_serve(ctx: DemoContext) -> str:
    import os
    import subprocess

    from rich.table import Table

    from shoprec.packaging import package, serve_command

    workdir = ctx.options.workdir.resolve()
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    uri = tracking_uri(ctx.options.workdir)
    ctx.console.print("packaging the champions into a Bento (offline) ...")
    result = package("models:/next-item@champion", "models:/churn@champion", tracking_uri=uri)
    port = _free_port()
    argv, cwd, env = serve_command(result.bento_tag, port=port)
    env["SHOPREC_STATE_DIR"] = str(workdir / "state")
    url = f"http://127.0.0.1:{port}"
    ctx.console.print(f"starting {result.bento_tag} on {url} ...")
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc)
        events, user = _replay_slice(ctx)
        for i in range(0, len(events), 100):
            _post(f"{url}/events", {"events": events[i : i + 100]})
        ctx.console.print(f"replayed {len(events)} shopper events into the service")
        session = next(e["session_id"] for e in reversed(events) if e["user_id"] == user)
        viewed = _post(f"{url}/recently_viewed", {"user_id": user, "limit": 8})
        strip = ", ".join(v["item_id"] for v in viewed["items"]) or "(none)"
        ctx.console.print(f"[bold]Recently viewed[/bold] for shopper {user}: {strip}")
        recs = _post(f"{url}/next_items", {"session_id": session, "user_id": user, "k": 5})
        table = Table(title=f"You may also like (session {session})")
        table.add_column("item")
        table.add_column("score", justify="right")
        table.add_column("why")
        for r in recs["items"]:
            table.add_row(r["item_id"], f"{r['score']:.3f}", r["reason"])
        ctx.console.print(table)
        new = _post(f"{url}/next_items", {"session_id": "brand-new-visitor", "k": 3})
        ctx.console.print(
            "[bold]A new visitor[/bold] gets: "
            + ", ".join(f"{r['item_id']} ({r['reason']})" for r in new["items"])
        )
        cart = [viewed["items"][0]["item_id"]] if viewed["items"] else []
        if cart:
            addons = _post(f"{url}/cart_addons", {"cart_items": cart, "k": 3})
            ctx.console.print(
                f"[bold]Goes well with[/bold] {cart[0]}: "
                + ", ".join(f"{r['item_id']} ({r['reason']})" for r in addons["items"])
            )
        # score as of the end of the replayed log (the synthetic store lives in 2024)
        risk = _post(f"{url}/churn_risk", {"user_id": user, "at": events[-1]["timestamp"]})
        drivers = ", ".join(f"{d['feature']} {d['contribution']:+.2f}" for d in risk["drivers"])
        ctx.console.print(
            f"[bold]Churn risk[/bold] of {user}: {risk['probability']:.2f} "
            f"({risk['segment']}); drivers: {drivers}"
        )
        ctx.console.print(
            f"The demo page is at {url}/demo/ while the service runs: "
            f"[bold].venv/bin/shoprec serve {result.bento_tag}[/bold] "
            f"(with BENTOML_HOME={workdir / 'bentoml'})"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return f"served, queried every endpoint and stopped {result.bento_tag}"


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("event log", _step_synth),
    ("prepare", _step_prepare),
    ("summary", _step_summary),
    ("train next-item models", _step_train),
    ("promote the champion", _step_promote),
    ("churn model", _step_churn),
    ("package, serve and query", _step_serve),
]


def _quiet_libraries() -> None:
    """The demo shows its own progress; library chatter (Lightning tips, db setup) hides it."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run every demo step in order, printing progress; returns what the steps produced."""
    con = console or Console()
    _quiet_libraries()
    ctx = DemoContext(options=options, console=con)
    options.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, 1):
        t0 = time.perf_counter()
        con.rule(f"[bold]{i}/{len(STEPS)} {title}")
        try:
            message = step(ctx)
        except ShoprecError:
            raise
        con.print(f"[green]ok[/green] {message} [dim]({time.perf_counter() - t0:.1f} s)[/dim]")
    con.rule(f"demo finished in {time.perf_counter() - started:.0f} s")
    con.print(
        f"Compare the runs in the MLflow UI: [bold].venv/bin/shoprec ui --tracking-uri "
        f"{tracking_uri(options.workdir)}[/bold]"
    )
    return ctx.outputs

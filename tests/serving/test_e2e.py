"""The whole path: train -> MLflow registry -> ``shoprec package`` -> ``bentoml serve`` -> HTTP.

A tiny next-item model is trained, tracked, registered and promoted in a tmp MLflow store, a
tiny churn model is trained to a bundle folder; both are packaged (BentoML home in a tmp
folder, the Bento built offline), the built Bento is served by the real ``bentoml serve`` on
127.0.0.1 through ``shoprec.packaging.serve``, every endpoint is queried over HTTP, and the
server is stopped with SIGTERM (forwarded by ``serve`` to ``bentoml serve``).
The slowest serving test after test_restart.py (~60-90 s here: two trainings, a Bento build
and one server start-up).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psutil
import pytest

from shoprec import schema
from shoprec.packaging import package
from tests.serving.test_restart import free_port, kill_tree, wait_ready
from tests.test_packaging import OFFLINE_ENV, train_champion

SERVE = (
    "import sys; from shoprec.packaging import serve; "
    "sys.exit(serve(sys.argv[1], port=int(sys.argv[2]), store=sys.argv[3]))"
)


def churn_bundle(root: Path) -> tuple[Path, pl.DataFrame, Any]:
    """A small churn bundle fitted on a synthetic storefront; (bundle, events, config start)."""
    from shoprec.churn.config import ChurnConfig
    from shoprec.churn.train import fit_churn
    from shoprec.data.synth import SynthConfig, generate

    start = SynthConfig().start

    def at(days: int) -> Any:
        return start + timedelta(days=days)

    config = ChurnConfig.model_validate(
        {
            "definition": "no_activity",
            "observation_days": 45,
            "horizon_days": 20,
            "train_cutoffs": [at(50), at(70)],
            "valid_cutoffs": [at(90)],
            "test_cutoffs": [at(110)],
            "net": {"hidden": [16], "max_epochs": 4, "patience": 2, "batch_size": 128},
            "gbt": {"max_iter": 20},
            "seed": 3,
        }
    )
    events = generate(SynthConfig(users=300, days=140, seed=0)).events
    result = fit_churn(config, events.lazy(), root / "churn-bundle")
    return result.bundle_dir, events, start


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    r = client.post(path, json=body)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    return r.json()


def wire_events(frame: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.sort(schema.TIMESTAMP).iter_rows(named=True):
        e = {k: row[k] for k in ("user_id", "session_id", "item_id", "event_type", "category")}
        e["timestamp"] = row[schema.TIMESTAMP].isoformat()
        if row.get(schema.PRICE) is not None:
            e["price"] = row[schema.PRICE]
        if row.get(schema.QUANTITY) is not None:
            e["quantity"] = row[schema.QUANTITY]
        out.append({k: v for k, v in e.items() if v is not None})
    return out


def test_packaged_bento_serves_every_endpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = train_champion(tiny_dataset, tmp_path / "registry")
    churn_dir, shop, start = churn_bundle(tmp_path)

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("SHOPREC_API_KEY", "SHOPREC_SERVING_SET", "SHOPREC_STORE_URL"):
        monkeypatch.delenv(key, raising=False)
    result = package(
        "models:/next-item@champion", str(churn_dir), tracking_uri=champion.tracking_uri
    )
    assert result.bento_tag is not None
    churn = result.model("churn")
    assert churn is not None and churn.labels["source"] == str(churn_dir.resolve())
    next_item = result.model("next-item")
    assert next_item is not None and next_item.mlflow_run_id == champion.run_id

    port = free_port()
    store = f"sqlite:///{tmp_path / 'events.sqlite'}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:  # `shoprec serve TAG --store URL`, i.e. packaging.serve
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, result.bento_tag, str(port), store],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(port, proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            check_endpoints(client, shop, start)
        # a clean stop: SIGTERM is forwarded to `bentoml serve`, which stops its workers
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers left running: {alive}"
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "cleanup finalized" in text, text[-3000:]  # the service's shutdown hook ran
    # the Bento loads the model version it was built with, not whatever is latest by then
    assert f"BentoML model {next_item.tag}" in text, text[-3000:]


def check_endpoints(client: httpx.Client, shop: pl.DataFrame, start: Any) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    docs = client.get("/docs.json").json()
    for route in ("/events", "/recently_viewed", "/next_items", "/cart_addons", "/churn_risk"):
        assert route in docs["paths"], route

    # the demo page and its catalogue come from the same server
    page = client.get("/demo/")
    assert page.status_code == 200 and "You may also like" in page.text
    assert client.get("/demo/static/app.js").status_code == 200
    catalog = client.get("/demo/catalog", params={"limit": 10}).json()
    assert catalog["model"] == "vsknn" and catalog["churn"] is True
    top = [row["item_id"] for row in catalog["items"]]
    assert len(top) == 10 and all("category" in row for row in catalog["items"])

    # a shopper views three popular items, then puts one in the cart
    session = "e2e-session"
    now = datetime.now(UTC)
    views = [
        {
            "session_id": session,
            "item_id": item,
            "event_type": "view",
            "event_id": f"v{i}",
            "timestamp": (now - timedelta(minutes=3 - i)).isoformat(),
        }
        for i, item in enumerate(top[:3])
    ]
    assert post(client, "/events", {"events": views}) == {"accepted": 3, "duplicates": 0}
    assert post(client, "/events", {"events": views[:1]}) == {"accepted": 0, "duplicates": 1}
    recent = post(client, "/recently_viewed", {"session_id": session})
    assert [i["item_id"] for i in recent["items"]] == top[:3][::-1]

    recs = post(client, "/next_items", {"session_id": session, "k": 5})
    assert len(recs["items"]) == 5 and not recs["fallback"]
    assert not {i["item_id"] for i in recs["items"]} & set(top[:3])  # viewed items left out
    assert all(i["reason"] for i in recs["items"])
    same = post(client, "/next_items", {"items": top[:3], "k": 5})
    assert [i["item_id"] for i in same["items"]] == [i["item_id"] for i in recs["items"]]
    new_visitor = post(client, "/next_items", {"session_id": "nobody-yet", "k": 3})
    assert new_visitor["fallback"] and [i["item_id"] for i in new_visitor["items"]] == top[:3]

    cart = {"session_id": session, "item_id": top[0], "event_type": "cart", "quantity": 1}
    assert post(client, "/events", {"events": [cart]})["accepted"] == 1
    addons = post(client, "/cart_addons", {"cart_items": [top[0]], "session_id": session, "k": 4})
    assert addons["items"] and top[0] not in {i["item_id"] for i in addons["items"]}

    # a customer's history, then their churn risk from the packaged churn model
    users = shop.drop_nulls(schema.USER_ID).group_by(schema.USER_ID).len().sort("len")
    user = str(users.filter(pl.col("len") >= 5).get_column(schema.USER_ID)[0])
    history = wire_events(shop.filter(pl.col(schema.USER_ID) == user))
    stored = post(client, "/events", {"events": history})
    assert stored["accepted"] + stored["duplicates"] == len(history) and stored["accepted"]
    at = (start + timedelta(days=120)).isoformat()
    risk = post(client, "/churn_risk", {"user_id": user, "at": at})
    assert risk["user_id"] == user and 0.0 <= risk["probability"] <= 1.0
    assert risk["segment"] and risk["drivers"]
    missing = client.post("/churn_risk", json={"user_id": "never-seen"})
    assert missing.status_code == 404 and "no events" in missing.json()["error"]

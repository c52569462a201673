"""A one-feature reference for the synthetic churn numbers: days since a customer's last event.

For each generator seed (world) of the churn benchmark's storefront (5,000 users, 270 days), at
the test cut-off T = 2024-08-01 and the horizon H of ``configs/churn/synth.yaml``, the cohort is
that config's (``shoprec.churn.labels.cohort``: an event in the 60 days before T); the score is
the time since the last event before T; it is scored against the generator's truth in both
readings of ``experiments/bench_churn.py``: the issue's definition (whole cohort, churned = not
alive at T + H) and the stricter forecast (customers alive at T, churned = lapses in
(T, T + H]).

    .venv/bin/python experiments/churn_recency_reference.py \
        experiments/2026-12-04-churn-recency.json
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from sklearn.metrics import roc_auc_score

from shoprec import schema
from shoprec.churn.config import ChurnConfig
from shoprec.churn.labels import cohort
from shoprec.config import load_config
from shoprec.data.synth import SynthConfig, generate

SYNTH_CHURN = Path(__file__).resolve().parents[1] / "configs" / "churn" / "synth.yaml"


def main() -> int:
    t = datetime(2024, 8, 1, tzinfo=UTC)
    cfg = load_config(ChurnConfig, SYNTH_CHURN)
    out = []
    for world in (0, 1, 2):
        shop = generate(SynthConfig(users=5000, days=270, seed=world))
        before = shop.events.filter(pl.col(schema.TIMESTAMP) < t)
        last = before.group_by(schema.USER_ID).agg(pl.col(schema.TIMESTAMP).max().alias("last"))
        members = (
            cohort(shop.events, t, cfg)
            .join(last, on=schema.USER_ID)
            .join(shop.customers.select(schema.USER_ID, "lapse_time"), on=schema.USER_ID)
        )
        silence = (t - members.get_column("last")).dt.total_seconds().to_numpy()
        lapse = members.get_column("lapse_time")
        gone = (lapse.is_not_null() & (lapse <= t + cfg.horizon)).to_numpy()
        alive = (lapse.is_null() | (lapse > t)).to_numpy()
        row = {
            "world": world,
            "cohort": int(members.height),
            "roc_auc_issue_definition": float(roc_auc_score(gone, silence)),
            "roc_auc_alive_at_T": float(roc_auc_score(gone[alive], silence[alive])),
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    if len(sys.argv) > 1:  # the JSON beside the report
        with open(sys.argv[1], "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

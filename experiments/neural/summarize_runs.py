"""Markdown rows from ``run_tracked.py`` JSON records (so report numbers are not retyped).

python experiments/neural/summarize_runs.py experiments/neural/2026-11-23-gru4rec-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print(
        "| run | epochs | epoch wall s (mean) | epoch CPU s (mean) | train wall s | train CPU s "
        "| test eval s | peak RSS MB | HR@10 | HR@20 | MRR@10 | MRR@20 | NDCG@20 | cov@20 "
        "| tracker s | load start |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        r = json.loads(Path(p).read_text())
        ep = r.get("epochs", [])
        if not ep:
            continue
        n = len(ep)
        wall = sum(e["epoch_wall_s"] for e in ep) / n
        cpu = sum(e["epoch_cpu_s"] for e in ep) / n
        m = r.get("metrics") or ep[-1].get("test", {})
        t = r.get("timings", {})
        nan = float("nan")
        print(
            f"| {Path(p).stem} | {n} | {wall:.0f} | {cpu:.0f} "
            f"| {ep[-1]['train_wall_so_far_s']:.0f} | {ep[-1]['train_cpu_so_far_s']:.0f} "
            f"| {t.get('eval_seconds', nan):.0f} | {r.get('peak_rss_mb', nan):.0f} "
            f"| {m.get('test/hr@10', nan):.4f} | {m.get('test/hr@20', nan):.4f} "
            f"| {m.get('test/mrr@10', nan):.4f} | {m.get('test/mrr@20', nan):.4f} "
            f"| {m.get('test/ndcg@20', nan):.4f} "
            f"| {m.get('test/coverage@20', nan):.4f} "
            f"| {r.get('tracker_seconds', nan):.1f} | {r['loadavg_start'][0]:.1f} |"
        )
        for e in ep:
            te = e.get("test")
            if te:
                print(
                    f"|  epoch {e['epoch'] + 1} | | {e['epoch_wall_s']:.0f} "
                    f"| {e['epoch_cpu_s']:.0f} "
                    f"| {e['train_wall_so_far_s']:.0f} | {e['train_cpu_so_far_s']:.0f} "
                    f"| {e['test_eval_wall_s']:.0f} | {e['peak_rss_mb']:.0f} "
                    f"| {te['test/hr@10']:.4f} | {te['test/hr@20']:.4f} | {te['test/mrr@10']:.4f} "
                    f"| {te['test/mrr@20']:.4f} | {te['test/ndcg@20']:.4f} "
                    f"| {te['test/coverage@20']:.4f} | | {e['loadavg'][0]:.1f} |"
                )


if __name__ == "__main__":
    main(sys.argv[1:])

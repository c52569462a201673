"""Score-level hybrid of a neural bundle and V-SKNN: which mixing weight and temperature?

    p(item) = w * softmax(s_neural / tau) + (1 - w) * knn / sum(knn)

(``knn`` = V-SKNN's neighbour votes, fitted here on the dataset's train sessions; a prefix
without neighbours keeps the neural order.) Ranks every case of ``--split`` against the full
catalogue with pessimistic ties (``shoprec.evaluation.metrics.pessimistic_ranks``) for every
(w, tau) of the grid, so the grid can be read on a validation window and the chosen point
applied once to test.

    .venv/bin/python experiments/neural/hybrid_grid.py --bundle runs/diginetica_gru4rec_valid/bundle \
        --data runs/data/diginetica_srgnn_valid --split valid --out experiments/neural/X.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from shoprec.data.dataset import PreparedDataset
from shoprec.evaluation.metrics import pessimistic_ranks
from shoprec.export import load_bundle
from shoprec.models.base import left_pad
from shoprec.models.sknn import VSKNN
from shoprec.schema import PREFIX_IDX, TARGET_IDX


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--w", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    ap.add_argument("--tau", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    ds = PreparedDataset.open(a.data)
    bundle = load_bundle(a.bundle)
    neural = bundle.model
    knn = VSKNN.fit(ds.train_sessions(), ds.n_items)
    cases = ds.cases(a.split)
    prefixes = cases.get_column(PREFIX_IDX).to_list()
    targets = cases.get_column(TARGET_IDX).to_numpy().astype(np.int64)
    grid = [(w, t) for w in a.w for t in a.tau if not (w == 1.0 and t != a.tau[0])]
    hits = {g: 0.0 for g in grid}
    rr = {g: 0.0 for g in grid}
    hits_knn = rr_knn = 0.0
    n = len(targets)
    with torch.inference_mode():
        for lo in range(0, n, a.batch):
            batch = left_pad(prefixes[lo : lo + a.batch])
            tgt = torch.from_numpy(targets[lo : lo + a.batch])
            s_n = neural.score(batch).float()
            s_k = knn.score(batch).float()
            s_k[:, 0] = 0.0
            tot = s_k.sum(1, keepdim=True)
            p_k = torch.where(tot > 0, s_k / tot.clamp(min=1e-30), torch.zeros_like(s_k))
            r = pessimistic_ranks(torch.where(torch.arange(s_k.shape[1]) == 0, -1.0, s_k), tgt)
            hits_knn += float((r <= 20).sum())
            rr_knn += float(torch.where(r <= 20, 1.0 / r, torch.zeros_like(r)).sum())
            for w, tau in grid:
                p = w * torch.softmax(s_n / tau, dim=1) + (1.0 - w) * p_k
                p[:, 0] = float("-inf")
                r = pessimistic_ranks(p, tgt)
                hits[(w, tau)] += float((r <= 20).sum())
                rr[(w, tau)] += float(torch.where(r <= 20, 1.0 / r, torch.zeros_like(r)).sum())
    rows = [
        {"w": w, "tau": t, "hr@20": hits[(w, t)] / n, "mrr@20": rr[(w, t)] / n} for w, t in grid
    ]
    rows.sort(key=lambda r: -r["mrr@20"])
    out = {
        "bundle": a.bundle,
        "data": a.data,
        "split": a.split,
        "n_cases": n,
        "vsknn_alone": {"hr@20": hits_knn / n, "mrr@20": rr_knn / n},
        "grid": rows,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time(),
    }
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["vsknn_alone"]))
    for r in rows:
        print(f"w={r['w']:.2f} tau={r['tau']:.2f} hr@20={r['hr@20']:.4f} mrr@20={r['mrr@20']:.4f}")


if __name__ == "__main__":
    main()

"""Where a hybrid evaluation's time goes, stage by stage.

An untrained GRU4Rec-512 of Diginetica's shape (the timing does not depend on the weights) and
the default V-SKNN fitted on the Diginetica train, mixed with w 0.6, tau 0.25. Over the first N
batches of the test cases, each stage of ``Hybrid.score`` + the evaluation's top-21 screen and
rank count is timed, and scaled to the 60,858 cases; the GRU4Rec-alone path (blocked product
+ screen) is timed on the same batches.

    .venv/bin/python experiments/neural/profile_hybrid_eval.py THREADS BATCH N_BATCHES
    (e.g. 2 512 30, from the repository root, after `shoprec data prepare` of diginetica_srgnn)
"""

import sys
import time

import numpy as np
import torch

from shoprec import schema
from shoprec.data.dataset import PreparedDataset
from shoprec.evaluation import evaluate as E
from shoprec.models.hybrid import (
    full_scores,
    member_votes,
    mix_parts,
    neural_log_probs,
)
from shoprec.models.registry import config_class, model_class
from shoprec.training.hybrid import fit_knn

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
bs = int(sys.argv[2]) if len(sys.argv) > 2 else 512
nb = int(sys.argv[3]) if len(sys.argv) > 3 else 20
ds = PreparedDataset.open("runs/data/diginetica_srgnn")
n = ds.n_items
torch.manual_seed(0)
cfg = config_class("gru4rec")(n_items=n, layers=[512])
g = model_class("gru4rec")(cfg).eval()
t = time.perf_counter()
knn = fit_knn(ds, "vsknn")
print("knn fit", time.perf_counter() - t)
cases = ds.cases("test")
pc = cases.get_column(schema.PREFIX_IDX)
lengths = pc.list.len().to_numpy().astype(np.int64)
flat = pc.explode().to_numpy().astype(np.int64)
offsets = np.cumsum(lengths) - lengths
tg = cases.get_column(schema.TARGET_IDX).to_numpy().astype(np.int64)
acc = {}


def tick(k, t0):
    acc[k] = acc.get(k, 0.0) + time.perf_counter() - t0


scratch = {}
with torch.inference_mode():
    for b in range(nb):
        lo, hi = b * bs, (b + 1) * bs
        batch = E._pad_chunk(flat, offsets[lo:hi], lengths[lo:hi], None)
        t0 = time.perf_counter()
        g.session_vectors(batch)
        tick("gru vectors", t0)
        t0 = time.perf_counter()
        s = full_scores(g, batch)
        tick("full_scores (vectors+product)", t0)
        t0 = time.perf_counter()
        lp = neural_log_probs(s, 0.25, own=True)
        tick("log_softmax", t0)
        t0 = time.perf_counter()
        votes = member_votes(knn, batch)
        tick("knn votes", t0)
        t0 = time.perf_counter()
        out = mix_parts(lp, votes, 0.6, own=True)
        tick("mix", t0)
        t0 = time.perf_counter()
        blocks = [(c, out[:, c : c + E.ITEM_BLOCK]) for c in range(1, n + 1, E.ITEM_BLOCK)]
        flag = E._scratch(scratch, "flag", (hi - lo) * E.ITEM_BLOCK, out.device)
        E._top_and_ranks(blocks, torch.from_numpy(tg[lo:hi]), n, flag, "h")
        tick("screen+ranks (views)", t0)
        t0 = time.perf_counter()
        blocks = E._dot_blocks(g, batch, n, E.ITEM_BLOCK, scratch)
        tick("dot blocks (vectors+product)", t0)
        t0 = time.perf_counter()
        E._top_and_ranks(blocks, torch.from_numpy(tg[lo:hi]), n, flag, "g")
        tick("screen+ranks (contiguous)", t0)
scale = len(tg) / (nb * bs)
for k, v in acc.items():
    print(f"{k:35s} {v:7.2f} s  -> whole test set {v * scale:6.1f} s")

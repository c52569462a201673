"""Where a SASRec training step goes (real loader, bf16 autocast, 1 thread), mean ms per batch.

    flock /tmp/shoprec-bench.lock taskset -c 1 .venv/bin/python \
        experiments/neural/sasrec_step_profile.py 200
"""

from __future__ import annotations

import sys
import time

import torch

from shoprec.data.dataset import PreparedDataset
from shoprec.models.sasrec import SASRecConfig
from shoprec.training.losses import full_softmax_cross_entropy
from shoprec.training.regimes import SequenceConfig, SequenceModule, sequence_loader

torch.set_num_threads(1)
ds = PreparedDataset.open("runs/data/diginetica_srgnn")
mc = SASRecConfig(n_items=ds.n_items)
rc = SequenceConfig()
module = SequenceModule(mc, rc)
opt = module.configure_optimizers()
loader = sequence_loader(ds.train_sessions(), ds.n_items, mc.max_len, rc)
it = iter(loader)
n_batches = int(sys.argv[1]) if len(sys.argv) > 1 else 200
acc = dict.fromkeys(("load", "encoder", "ce_forward", "backward", "adam", "zero_grad"), 0.0)
module.train()
for _ in range(n_batches):
    c0 = time.process_time()
    b = next(it)
    c1 = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask = b.targets != 0
        hidden = module.model.encode(b.inputs)[mask]
        targets = b.targets[mask]
        c2 = time.process_time()
        loss = full_softmax_cross_entropy(
            hidden, module.model.output_weight[1:], targets - 1, rc.ce_chunk, rc.ce_store_mb << 20
        )
    c3 = time.process_time()
    loss.backward()
    c4 = time.process_time()
    opt.step()
    c5 = time.process_time()
    opt.zero_grad()
    c6 = time.process_time()
    for key, dt in zip(acc, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4, c6 - c5), strict=True):
        acc[key] += dt
total = sum(acc.values())
print({k: f"{v / n_batches * 1000:.1f} ms" for k, v in acc.items()})
print(
    f"total {total / n_batches * 1000:.1f} ms/batch -> "
    f"{total / n_batches * len(loader):.0f} CPU-s/epoch ({len(loader)} batches)"
)

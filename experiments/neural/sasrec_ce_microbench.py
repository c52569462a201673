"""Chunked full-softmax CE on SASRec's Diginetica shapes: the current kernel against variants.

One batch's shapes (493 positions x 43,097 items x 64 dims, the epoch mean), bf16 matmuls,
1 thread; CPU ms, interleaved repetitions (median and min). Variants of the per-chunk work:
A = the current kernel (matmul, fp32 max / exp / sum, keep exp in bf16; backward rescales);
B/C/D/F = one fused ``log_softmax`` per chunk keeping exp (B), the logits (C: backward
softmax, D: backward exp) or the fp32 log-probabilities (F).

    flock /tmp/shoprec-bench.lock taskset -c 1 .venv/bin/python \
        experiments/neural/sasrec_ce_microbench.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from shoprec.training.losses import full_softmax_cross_entropy

torch.set_num_threads(1)
torch.manual_seed(0)
N, V, D, C = 493, 43097, 64, 1024
h = torch.randn(N, D).bfloat16()
w = (torch.randn(V, D) * 0.3).bfloat16()
lse = torch.randn(N)
SCALE = 1e-3
BF = torch.bfloat16


def variant_a() -> None:
    kept, maxes = [], []
    for s in range(0, V, C):
        logits = (h @ w[s : s + C].T).float()
        m = logits.amax(1)
        e = logits.sub_(m.unsqueeze(1)).exp_()
        e.sum(1)
        kept.append(e.to(BF))
        maxes.append(m)
    for k, m in zip(kept, maxes, strict=True):
        k.mul_(((m - lse).exp_() * SCALE).unsqueeze(1).to(BF))


def _fused(keep: str) -> None:
    kept, chunk_lse = [], []
    for s in range(0, V, C):
        logits = h @ w[s : s + C].T
        ls = torch.log_softmax(logits, 1, dtype=torch.float32)
        chunk_lse.append(logits[:, 0].float() - ls[:, 0])
        kept.append(ls.exp_().to(BF) if keep == "exp" else logits if keep == "logits" else ls)
    log_scale = torch.log(torch.tensor(SCALE))
    for k, c in zip(kept, chunk_lse, strict=True):
        if keep == "exp":
            k.mul_(((c - lse).exp_() * SCALE).unsqueeze(1).to(BF))
        elif keep == "logits":
            torch.softmax(k, 1).mul_(((c - lse).exp_() * SCALE).unsqueeze(1).to(BF))
        elif keep == "logits_exp":
            k.float().sub_((lse - log_scale).unsqueeze(1)).exp_().to(BF)
        else:
            k.add_((c - lse + log_scale).unsqueeze(1)).exp_().to(BF)


VARIANTS: dict[str, Callable[[], None]] = {
    "A current": variant_a,
    "B log_softmax, keep exp": lambda: _fused("exp"),
    "C log_softmax, keep logits, bwd softmax": lambda: _fused("logits"),
    "D log_softmax, keep logits, bwd exp": lambda: _fused("logits_exp"),
    "F log_softmax, keep fp32 log-probs": lambda: _fused("logprobs"),
}


def whole_loss(chunk: int, store: int) -> float:
    hh = h.float().requires_grad_()
    ww = w.float().requires_grad_()
    t = torch.randint(0, V, (N,))
    times = []
    for _ in range(6):
        c0 = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = full_softmax_cross_entropy(hh, ww, t, chunk, store)
        loss.backward()
        times.append(time.process_time() - c0)
        hh.grad = ww.grad = None
    return sorted(times[1:])[2] * 1000


results: dict[str, list[float]] = {k: [] for k in VARIANTS}
for f in VARIANTS.values():
    f()
for _ in range(6):
    for name, f in VARIANTS.items():
        c0 = time.process_time()
        f()
        results[name].append(time.process_time() - c0)
for name, times in results.items():
    times.sort()
    print(f"{name}: median {times[len(times) // 2] * 1000:.1f} ms, min {times[0] * 1000:.1f} ms")
for chunk, store in ((1024, 1 << 30), (4096, 1 << 30), (1024, 0)):
    print(
        f"full_softmax_cross_entropy chunk {chunk} store {store > 0}: "
        f"{whole_loss(chunk, store):.1f} ms fwd+bwd (median)"
    )

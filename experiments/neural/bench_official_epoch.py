"""One GRU4Rec epoch at the official Diginetica settings: the official PyTorch code vs ours.

The issue's target: our GRU4Rec faster per epoch than the official implementation at the same
settings on this machine. The official code (hidasib/GRU4Rec_PyTorch_Official,
``gru4rec_pytorch.py``; its licence keeps it out of this repository) is given by path:

    taskset -c 0 .venv/bin/python experiments/neural/bench_official_epoch.py --impl official \\
        --official /path/to/gru4rec_pytorch.py --out OUT-official.json
    taskset -c 1 .venv/bin/python experiments/neural/bench_official_epoch.py --impl ours \\
        --out OUT-ours.json

Both read the same training sessions (the SR-GNN split's ``train_sessions.txt``, one session
a line, in file order), run the paramfile ``diginetica_bprmax_shared_best.py`` (bpr-max,
512 units, batch 128, 2048 shared negatives, alpha 0.3, dropout 0.5 / 0.3, Adagrad lr 0.05
momentum 0.15, elu 1, bpreg 0.9) on one torch thread in float32, and time the epochs only
(data loading, sample cache and model set-up before the first epoch are not counted). The
official code times each epoch itself (its "Epoch1 --> loss ... (s)" line); ours is timed
around Lightning's ``fit`` with the model and loader built beforehand.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import DIR, load

PARAMS = {  # paramfiles/diginetica_bprmax_shared_best.py
    "loss": "bpr-max",
    "constrained_embedding": True,
    "embedding": 0,
    "elu_param": 1,
    "layers": [512],
    "batch_size": 128,
    "dropout_p_embed": 0.5,
    "dropout_p_hidden": 0.3,
    "learning_rate": 0.05,
    "momentum": 0.15,
    "n_sample": 2048,
    "sample_alpha": 0.3,
    "bpreg": 0.9,
    "logq": 0.0,
}


def official(path: Path, epochs: int, limit: int) -> dict[str, object]:
    import pandas as pd

    spec = importlib.util.spec_from_file_location("gru4rec_official", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # NumPy 2 (NEP 50): float32 array * numpy float64 scalar is float64, which the official
    # compatibility-mode init then fails to ``set_`` into a float32 weight; cast it back
    # (the same values as under NumPy 1, where the product stayed float32).
    init = mod.GRU4RecModel._init_numpy_weights
    mod.GRU4RecModel._init_numpy_weights = lambda self, shape: init(self, shape).astype("float32")
    sid, iid, tim = [], [], []
    with open(DIR + "train_sessions.txt") as f:
        for s, line in enumerate(f):
            if limit and s >= limit:
                break
            items = line.split()
            sid += [s] * len(items)
            iid += [int(x) for x in items]
            tim += [s * 1000 + j for j in range(len(items))]  # file order, then click order
    data = pd.DataFrame({"SessionId": sid, "ItemId": iid, "Time": tim})
    gru = mod.GRU4Rec(device=torch.device("cpu"), n_epochs=epochs, **PARAMS)
    out = io.StringIO()
    c0 = time.process_time()
    with contextlib.redirect_stdout(out):
        gru.fit(data)
    log = out.getvalue()
    print(log)
    seconds = [float(x) for x in re.findall(r"Epoch\d+ --> loss: \S+ \t\(([\d.]+)s\)", log)]
    losses = [float(x) for x in re.findall(r"Epoch\d+ --> loss: (\S+)", log)]
    return {
        "epoch_wall_s": seconds,
        "epoch_loss": losses,
        "process_cpu_s_fit": time.process_time() - c0,
        "log": log,
    }


def ours(epochs: int, limit: int) -> dict[str, object]:
    import lightning as L

    from shoprec.models.gru4rec import GRU4RecConfig
    from shoprec.training.regimes import (
        SessionParallelConfig,
        SessionParallelModule,
        session_parallel_loader,
    )

    sessions, n_items, _, _ = load()
    if limit:  # a smoke test (the item count stays the whole catalogue's)
        sessions = sessions[:limit]
    mc = GRU4RecConfig(n_items=n_items)  # the defaults are this paramfile (checked below)
    rc = SessionParallelConfig()
    assert mc.layers == PARAMS["layers"] and rc.batch_size == PARAMS["batch_size"]
    assert rc.n_sample == PARAMS["n_sample"] and rc.loss == PARAMS["loss"]
    L.seed_everything(42)
    module = SessionParallelModule(mc, rc)
    loader = session_parallel_loader(sessions, n_items, rc)
    times: list[float] = []
    cpus: list[float] = []

    class Timer(L.Callback):
        def on_train_epoch_start(self, *_: object) -> None:
            self.w, self.c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, *_: object) -> None:
            times.append(time.perf_counter() - self.w)
            cpus.append(time.process_time() - self.c)

    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=epochs,
        precision="32-true",
        num_sanity_val_steps=0,
        callbacks=[Timer()],
    )
    trainer.fit(module, train_dataloaders=loader)
    return {
        "epoch_wall_s": times,
        "epoch_cpu_s": cpus,
        "train_loss": float(trainer.callback_metrics["train/loss"]),
        "model": mc.model_dump(),
        "regime": rc.model_dump(),
    }


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=["official", "ours"], required=True)
    ap.add_argument("--official", type=Path, help="the official gru4rec_pytorch.py")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="first N sessions only (smoke test)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    np.random.seed(42)
    torch.manual_seed(42)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load1 = os.getloadavg()
    if a.impl == "official":
        if a.official is None:
            ap.error("--impl official needs --official PATH")
        result = official(a.official, a.epochs, a.limit)
    else:
        result = ours(a.epochs, a.limit)
    result.update(
        impl=a.impl,
        params=PARAMS,
        started=started,
        load_at_start=load1,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        machine=platform.processor() or platform.machine(),
        command=" ".join(sys.argv),
    )
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    cli()

"""SASRec (default settings) over the Diginetica train sessions: Lightning fit (timed) + test eval."""
import argparse, sys, time
import torch, lightning as L
sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import load
from shoprec.models.sasrec import SASRecConfig
from shoprec.training.regimes import (SequenceConfig, SequenceModule, sequence_loader,
    cases_loader, pessimistic_ranks)

ap = argparse.ArgumentParser()
ap.add_argument("--precision", default="32-true")
ap.add_argument("--limit", type=int, default=0)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--loss", default="ce")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--eval", action="store_true")
a = ap.parse_args()
torch.set_num_threads(a.threads)
sessions, n_items, prefixes, targets = load()
mc = SASRecConfig(n_items=n_items)
rc = SequenceConfig(loss=a.loss, learning_rate=a.lr)
print(mc, rc, sep="\n")
L.seed_everything(42)
module = SequenceModule(mc, rc)
loader = sequence_loader(sessions, n_items, mc.max_len, rc)
steps = len(loader)
print("batches/epoch", steps)
tr = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, max_epochs=a.epochs, precision=a.precision,
               limit_train_batches=a.limit if a.limit else 1.0, num_sanity_val_steps=0)
w0, c0 = time.time(), time.process_time()
tr.fit(module, train_dataloaders=loader)
wall, cpu = time.time() - w0, time.process_time() - c0
n = (a.limit or steps) * a.epochs
print(f"fit: {n} batches wall {wall:.1f}s cpu {cpu:.1f}s -> {cpu/n*1000:.1f} ms/batch cpu, {wall/n*1000:.1f} wall")
print(f"extrapolated s/epoch: cpu {cpu/n*steps:.0f}  wall {wall/n*steps:.0f}  (threads={a.threads})")
print("train/loss", float(tr.callback_metrics["train/loss"]))
if a.eval:
    t = time.time(); hits = rr = 0.0
    for b in cases_loader(prefixes, targets, 512, max_len=mc.max_len):
        r = pessimistic_ranks(module.model.score(b.prefixes), b.targets).double()
        hits += float((r <= 20).sum()); rr += float(torch.where(r <= 20, 1 / r, 0 * r).sum())
    print(f"TEST n={len(targets)} HR@20 {hits/len(targets):.4f} MRR@20 {rr/len(targets):.4f} ({time.time()-t:.0f}s)")

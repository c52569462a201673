"""GRU4Rec at the official Diginetica settings: Lightning fit (timed) + test HR@20/MRR@20."""
import argparse, sys, time, resource
import torch, lightning as L
sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import load
from shoprec.models.gru4rec import GRU4RecConfig
from shoprec.training.regimes import (SessionParallelConfig, SessionParallelModule,
    session_parallel_loader, cases_loader, pessimistic_ranks)

ap = argparse.ArgumentParser()
ap.add_argument("--precision", default="32-true")
ap.add_argument("--limit", type=int, default=0, help="train batches (0 = full epoch)")
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--eval", action="store_true")
a = ap.parse_args()
torch.set_num_threads(1)
sessions, n_items, prefixes, targets = load()
mc = GRU4RecConfig(n_items=n_items)
rc = SessionParallelConfig()
print(mc, rc, sep="\n")
L.seed_everything(42)
module = SessionParallelModule(mc, rc)
loader = session_parallel_loader(sessions, n_items, rc)
steps_per_epoch = sum(1 for _ in __import__("shoprec.data.session_parallel", fromlist=["x"]).iterate_session_parallel(loader.dataset.items, loader.dataset.offsets, rc.batch_size))
print("steps/epoch", steps_per_epoch, "pairs", loader.dataset.n_pairs)
tr = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, max_epochs=a.epochs, precision=a.precision,
               limit_train_batches=a.limit if a.limit else 1.0, num_sanity_val_steps=0)
w0, c0 = time.time(), time.process_time()
tr.fit(module, train_dataloaders=loader)
wall, cpu = time.time() - w0, time.process_time() - c0
n = (a.limit or steps_per_epoch) * a.epochs
print(f"fit: {n} steps wall {wall:.1f}s cpu {cpu:.1f}s -> {cpu/n*1000:.1f} ms/step cpu, {wall/n*1000:.1f} ms/step wall")
print(f"extrapolated s/epoch: cpu {cpu/n*steps_per_epoch:.0f}  wall {wall/n*steps_per_epoch:.0f}")
print("train/loss", float(tr.callback_metrics["train/loss"]))
if a.eval:
    t = time.time(); hits = rr = 0.0
    for b in cases_loader(prefixes, targets, 512):
        r = pessimistic_ranks(module.model.score(b.prefixes), b.targets).double()
        hits += float((r <= 20).sum()); rr += float(torch.where(r <= 20, 1 / r, 0 * r).sum())
    print(f"TEST n={len(targets)} HR@20 {hits/len(targets):.4f} MRR@20 {rr/len(targets):.4f} ({time.time()-t:.0f}s)")

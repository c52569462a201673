"""``shoprec train`` (the CLI's own path: load_experiment -> RunTracker -> fit) plus measurements.

Same calls as ``shoprec.cli._cmd_train`` with tracking on; adds one Lightning callback that,
after each training epoch, records the epoch's wall and process-CPU seconds and (with
``--test-each-epoch``) the test HR/MRR of the current weights, for "time to quality". That
per-epoch test evaluation is only reported, never used to choose anything, and its time is
kept out of the epoch times (it runs after shoprec's HistoryCallback has stopped the clock).
Results are rewritten to ``--out`` (JSON) after every epoch, so a crash loses nothing.

    taskset -c 0 .venv/bin/python experiments/neural/run_tracked.py \
        configs/experiment/diginetica_gru4rec.yaml --set trainer.precision=bf16-mixed \
        --set trainer.num_threads=1 --tracking-uri sqlite:///runs/mlflow-neural.db \
        --test-each-epoch --out experiments/neural/2026-11-23-gru4rec-bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

T_IMPORT = time.perf_counter()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class EpochProbe(L.Callback):
    def __init__(
        self,
        out: Path,
        record: dict[str, Any],
        test_each_epoch: bool,
        save_dir: Path | None = None,
    ) -> None:
        self.save_dir = save_dir
        self.out = out
        self.record = record
        self.test_each_epoch = test_each_epoch
        self._w0 = self._c0 = 0.0
        self.fit_w0 = self.fit_c0 = 0.0
        self.eval_wall = 0.0  # per-epoch test evaluations, excluded from training time
        self.eval_cpu = 0.0
        self.dataset: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_w0, self.fit_c0 = time.perf_counter(), time.process_time()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wall, cpu = time.perf_counter() - self._w0, time.process_time() - self._c0
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "epoch_wall_s": wall,
            "epoch_cpu_s": cpu,
            "train_loss": float(trainer.callback_metrics.get("train/loss_epoch", float("nan"))),
            "train_wall_so_far_s": time.perf_counter() - self.fit_w0 - self.eval_wall,
            "train_cpu_so_far_s": time.process_time() - self.fit_c0 - self.eval_cpu,
            "loadavg": os.getloadavg(),
        }
        if self.test_each_epoch and self.dataset is not None:
            from shoprec.evaluation.evaluate import evaluate_model

            w, c = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                res = evaluate_model(pl_module.model, self.dataset, split="test", batch_size=512)
            pl_module.train()
            row["test_eval_wall_s"] = time.perf_counter() - w
            row["test_eval_cpu_s"] = time.process_time() - c
            self.eval_wall += row["test_eval_wall_s"]
            self.eval_cpu += row["test_eval_cpu_s"]
            row["test"] = {k: float(v) for k, v in res.metrics.items()}
        if self.save_dir is not None:  # weights only, to build a bundle of any epoch later
            self.save_dir.mkdir(parents=True, exist_ok=True)
            path = self.save_dir / f"epoch{trainer.current_epoch + 1}.pt"
            torch.save({k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}, path)
            row["weights"] = str(path)
        row["peak_rss_mb"] = _rss_mb()
        self.record.setdefault("epochs", []).append(row)
        print("EPOCH", json.dumps(row), flush=True)
        self.out.write_text(json.dumps(self.record, indent=2, default=str), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tracking-uri", default="sqlite:///runs/mlflow-neural.db")
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--test-each-epoch", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save-each-epoch", default=None, help="folder for epochN.pt state dicts")
    a = ap.parse_args()

    from shoprec.tracking import RunTracker
    from shoprec.training.config import load_experiment
    from shoprec.training.fit import fit, open_dataset

    out = Path(a.out)
    record: dict[str, Any] = {
        "command": "python " + " ".join(os.sys.argv),  # type: ignore[attr-defined]
        "loadavg_start": os.getloadavg(),
        "torch_threads": None,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    config = load_experiment(a.config, a.set)
    save_dir = Path(a.save_each_epoch) if a.save_each_epoch else None
    probe = EpochProbe(out, record, a.test_each_epoch, save_dir)
    if a.test_each_epoch:
        probe.dataset = open_dataset(config)
    w0, c0 = time.perf_counter(), time.process_time()
    with RunTracker(
        a.experiment or config.name,
        config.name,
        tracking_uri=a.tracking_uri,
        tags={"task": config.task, "model": config.model_name},
    ) as tracker:
        result = fit(config, tracker=tracker, callbacks=[probe])
    record["torch_threads"] = torch.get_num_threads()
    record["run_id"] = tracker.run_id
    record["tracking_uri"] = tracker.tracking_uri
    record["total_wall_s"] = time.perf_counter() - w0
    record["total_cpu_s"] = time.process_time() - c0
    record["per_epoch_test_eval_wall_s"] = probe.eval_wall
    record["per_epoch_test_eval_cpu_s"] = probe.eval_cpu
    record["tracker_seconds"] = tracker.seconds
    record["timings"] = result.timings
    record["metrics"] = result.metrics
    record["peak_rss_mb"] = _rss_mb()
    record["loadavg_end"] = os.getloadavg()
    out.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "epochs"}, indent=1, default=str))


if __name__ == "__main__":
    main()

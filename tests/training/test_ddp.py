"""Data-parallel training (``trainer.strategy: ddp``): sharding, equivalence, rank-0-only output.

In-process (a few seconds, no extra processes):

* the sequence regime's global batches are partitioned exactly among the processes;
* the session-parallel stream is split by slot: every process walks a disjoint set of whole
  sessions, and together they walk every (input, target) pair of every session once;
* two simulated processes (per-process losses weighted and averaged as DDP does, dense item
  gradients made row-sparse again) take the same optimizer steps as one process with the
  doubled batch, to float rounding, over a whole epoch.

Real DDP (two CPU processes, gloo, Lightning's ``ddp`` launcher re-running a small script, one
launch for both models, ~30-60 s on 2 busy cores): ``fit`` with batch ``b`` per process on 2
processes gives the test metrics of one process with batch ``2b`` (same seed), takes the same
number of optimizer steps, and only rank 0 evaluates and writes the run folder.

Why the tolerance is 0.01 (absolute, HR@20 and MRR@20 on the 703 test cases of the tiny
dataset): dropout is off, so the two runs differ only in floating-point summation order (and
for SASRec in averaging two per-process mean losses instead of one mean over the batch's
positions). Measured: GRU4Rec identical to the last digit (seeds 1-5), SASRec within 0.003
(two cases of 703; seeds 1-6). One process's seed-to-seed spread is ~0.01 (GRU4Rec) to
~0.04 (SASRec), so 0.01 is below the noise of an independent run, and a DDP path that trained
on other batches (e.g. each process on all data) also fails the step-count check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import psutil
import pytest
import torch

from shoprec.data.dataset import PreparedDataset
from shoprec.data.sequences import LengthBucketSampler
from shoprec.data.session_parallel import SessionParallelBatch
from shoprec.models.gru4rec import GRU4RecConfig
from shoprec.training.config import ExperimentConfig
from shoprec.training.ddp import (
    ShardedBatchSampler,
    ShardedSessionParallel,
    ShardStep,
    row_sparse_grads_,
)
from shoprec.training.fit import fit
from shoprec.training.regimes import (
    SessionParallelConfig,
    SessionParallelModule,
    session_parallel_loader,
)

WORLD = 2
TOLERANCE = 0.01  # see the module docstring
METRICS = ("test/hr@20", "test/mrr@20")


# --- in-process: how the data is sharded -----------------------------------------------------
def test_sequence_batches_are_partitioned_among_processes() -> None:
    lengths = np.random.default_rng(0).integers(1, 30, size=203)

    def global_batches() -> LengthBucketSampler:
        return LengthBucketSampler(lengths, 16, bucket_batches=4, seed=3)

    one = global_batches()
    shards = [ShardedBatchSampler(global_batches(), r, WORLD) for r in range(WORLD)]
    for _epoch in range(2):  # every epoch reshuffles, identically on every process
        single = list(one)
        per_rank = [list(s) for s in shards]
        assert [len(p) for p in per_rank] == [len(single)] * WORLD == [len(s) for s in shards]
        for batch, a, b in zip(single, *per_rank, strict=True):
            assert not set(a) & set(b)
            assert sorted(a + b) == sorted(batch)
            assert abs(len(a) - len(b)) <= 1


def _walk(steps: list[SessionParallelBatch]) -> list[list[int]]:
    """Sessions as a consumer of the steps sees them: a row continues its slot's session unless
    ``reset``; rows follow ``keep`` when the mini-batch shrinks (as the GRU4Rec module does)."""
    open_: list[list[int]] = []
    done: list[list[int]] = []
    for step in steps:
        if step.keep is not None:
            done.extend(s for s, k in zip(open_, step.keep.tolist(), strict=True) if not k)
            open_ = [s for s, k in zip(open_, step.keep.tolist(), strict=True) if k]
        rows = list(
            zip(step.inputs.tolist(), step.targets.tolist(), step.reset.tolist(), strict=True)
        )
        if len(open_) != len(rows):  # first step of the stream
            assert not open_
            open_ = [[] for _ in rows]
        for i, (x, y, reset) in enumerate(rows):
            if reset:
                if open_[i]:
                    done.append(open_[i])
                open_[i] = [x]
            assert open_[i][-1] == x, "a row does not continue its slot's session"
            open_[i].append(y)
    return done + [s for s in open_ if s]


def test_session_parallel_processes_walk_disjoint_whole_sessions(tiny_dataset: Path) -> None:
    dataset = PreparedDataset.open(tiny_dataset)
    sessions, n_items = dataset.train_sessions(), dataset.n_items
    config = SessionParallelConfig(batch_size=16, n_sample=8)  # the global batch: 2 x 8

    def stream() -> Iterable[SessionParallelBatch]:
        loader = session_parallel_loader(sessions, n_items, config)
        return cast(Iterable[SessionParallelBatch], loader.dataset)

    global_steps = list(stream())
    shards = [list(ShardedSessionParallel(stream(), r, WORLD)) for r in range(WORLD)]
    assert [len(s) for s in shards] == [len(global_steps)] * WORLD  # DDP: same step count
    walked: list[list[int]] = []
    for shard in shards:
        walked.extend(_walk([s.batch for s in shard]))
    expected = sorted(s.tolist() for s in sessions if len(s) >= 2)
    assert sorted(walked) == expected  # each session whole, on exactly one process
    for step, (g, *parts) in enumerate(zip(global_steps, *shards, strict=True)):
        assert sum(p.weight for p in parts) == pytest.approx(WORLD)
        rows = sorted(x for p in parts for x in p.batch.targets.tolist())
        assert rows == sorted(g.targets.tolist()), step
        for p in parts:  # every row is scored against the columns it has in one process
            columns = torch.cat([p.batch.targets, p.batch.negatives])
            assert sorted(columns.tolist()) == sorted(torch.cat([g.targets, g.negatives]).tolist())


@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_two_simulated_processes_step_like_one_with_the_doubled_batch(
    tiny_dataset: Path, loss: Literal["bpr-max", "cross-entropy"]
) -> None:
    """One epoch of GRU4Rec: 2 x batch 16 with DDP's gradient averaging == 1 x batch 32."""
    dataset = PreparedDataset.open(tiny_dataset)
    sessions = dataset.train_sessions()
    model_cfg = GRU4RecConfig(
        n_items=dataset.n_items, layers=[16], dropout_p_embed=0.0, dropout_p_hidden=0.0
    )
    logq = 1.0 if loss == "cross-entropy" else 0.0
    one_cfg = SessionParallelConfig(batch_size=32, n_sample=16, loss=loss, logq=logq)
    one = SessionParallelModule(model_cfg, one_cfg)
    two = SessionParallelModule(model_cfg, one_cfg.model_copy(update={"batch_size": 16}))
    two.load_state_dict(one.state_dict())
    two.model.sparse_grad = False  # as under DDP: dense all-reduced gradients
    opt_one, opt_two = one.configure_optimizers(), two.configure_optimizers()
    n_items = dataset.n_items
    loader = session_parallel_loader(sessions, n_items, one_cfg)
    ranks = [
        ShardedSessionParallel(_stream(sessions, n_items, one_cfg), r, WORLD) for r in range(WORLD)
    ]
    hidden: list[Any] = [None] * WORLD
    steps = 0
    for batch, *parts in zip(loader, *ranks, strict=True):
        opt_one.zero_grad()
        one.loss(one.forward_step(batch), batch).backward()
        opt_one.step()
        opt_two.zero_grad()
        for r, part in enumerate(parts):
            two._hidden = hidden[r]
            _shard_loss(two, part).div(WORLD).backward()  # DDP averages the gradients
            hidden[r] = two._hidden
        m = two.model
        row_sparse_grads_([m.item_weight, m.item_bias, m.input_embedding])
        opt_two.step()
        steps += 1
    assert steps > 50
    for (name, a), b in zip(one.named_parameters(), two.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def _stream(
    sessions: list[np.ndarray], n_items: int, config: SessionParallelConfig
) -> Iterable[SessionParallelBatch]:
    """The global session-parallel steps that ``session_parallel_loader`` would yield."""
    return cast(
        Iterable[SessionParallelBatch], session_parallel_loader(sessions, n_items, config).dataset
    )


def _shard_loss(module: SessionParallelModule, step: ShardStep) -> torch.Tensor:
    """What the regime's training step returns for a process's share (see the DDP patch)."""
    if step.batch.inputs.shape[0] == 0:
        return torch.stack([p.sum() for p in module.parameters()]).sum() * 0.0
    return module.loss(module.forward_step(step.batch), step.batch) * step.weight


# --- real DDP: two processes --------------------------------------------------------------------
SCRIPT = '''
"""fit() for each config in SPECS under Lightning DDP; each rank records what it wrote."""
import json, os, sys
from pathlib import Path


def main() -> None:
    specs = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    root = str(out / "runs")
    written = []

    def audit(event, args):
        path = str(args[0]) if args else ""
        if not path.startswith(root):
            return
        if event in ("os.rename", "os.replace", "os.remove", "shutil.rmtree"):
            written.append(event + " " + path)
        elif event == "open":
            mode = args[1] if isinstance(args[1], str) else ""
            flags = args[2] if isinstance(args[2], int) else 0
            if set(mode) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                written.append("write " + path)

    sys.addaudithook(audit)
    from shoprec.training.config import ExperimentConfig
    from shoprec.training.fit import fit

    results = []
    for spec in specs:
        result = fit(ExperimentConfig.model_validate(spec))
        results.append({"name": spec["name"], "metrics": result.metrics,
                        "timings": sorted(result.timings)})
    rank = int(os.environ["LOCAL_RANK"])
    report = {"rank": rank, "pid": os.getpid(), "results": results, "written": written}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
'''

MODELS: dict[str, dict[str, Any]] = {
    "sasrec": {
        "model": {"name": "sasrec", "hidden": 16, "n_blocks": 1, "max_len": 20, "dropout": 0.0},
        "training": {"batch_size": 32, "learning_rate": 0.005},
    },
    "gru4rec": {
        "model": {
            "name": "gru4rec",
            "layers": [32],
            "dropout_p_embed": 0.0,
            "dropout_p_hidden": 0.0,
        },
        "training": {"batch_size": 16, "n_sample": 32, "learning_rate": 0.05},
    },
}


def _spec(name: str, data: Path, out: Path, devices: int) -> dict[str, Any]:
    """``name`` with the global batch split over ``devices`` processes (batch B/devices each)."""
    spec = json.loads(json.dumps(MODELS[name]))
    spec["training"]["batch_size"] //= devices
    trainer: dict[str, Any] = {"max_epochs": 2, "patience": 0, "progress_bar": False}
    trainer["num_threads"] = 1  # 2 processes on 2 cores
    if devices > 1:
        trainer.update(strategy="ddp", devices=devices, accelerator="cpu")
    return {
        "name": name,
        "seed": 5,
        "data": {"path": str(data)},
        "output_dir": str(out),
        "resume": False,
        "trainer": trainer,
        **spec,
    }


def _global_step(run_dir: Path) -> int:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return int(ckpt["global_step"])


@pytest.fixture(scope="module")
def ddp_runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One two-process DDP launch that fits both models; the per-rank reports."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "run_ddp.py").write_text(SCRIPT, encoding="utf-8")
    specs = [_spec(name, tiny_dataset, out / "runs", WORLD) for name in MODELS]
    (out / "specs.json").write_text(json.dumps(specs), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    with (out / "launch.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(out / "run_ddp.py"), str(out / "specs.json"), str(out)],
            cwd=out,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=300)
        finally:
            _stop(proc.pid)
    log_tail = (out / "launch.log").read_text(errors="replace")[-4000:]
    assert code == 0, f"DDP launch failed:\n{log_tail}"
    reports = {}
    for rank in range(WORLD):
        path = out / f"rank{rank}.json"
        assert path.is_file(), f"rank {rank} wrote no report:\n{log_tail}"
        reports[rank] = json.loads(path.read_text())
    for report in reports.values():  # rank 1 may still be exiting: wait, never leave it behind
        _stop(int(report["pid"]))
    return {"out": out, "reports": reports}


_LAUNCH_VARS = (
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "JSM_NAMESPACE_RANK",
    "PL_GLOBAL_SEED",
)


def _stop(pid: int, timeout: float = 30) -> None:
    """Wait for a process and its children to end; kill what is left after ``timeout``."""
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ddp_matches_one_process_with_the_global_batch(
    name: str, ddp_runs: dict[str, Any], tiny_dataset: Path, tmp_path: Path
) -> None:
    single = fit(ExperimentConfig.model_validate(_spec(name, tiny_dataset, tmp_path, 1)))
    rank0 = next(r for r in ddp_runs["reports"][0]["results"] if r["name"] == name)
    ddp_dir = ddp_runs["out"] / "runs" / name
    for key in METRICS:
        assert abs(rank0["metrics"][key] - single.metrics[key]) <= TOLERANCE, (
            key,
            rank0["metrics"][key],
            single.metrics[key],
        )
    # the same optimizer steps: batch b on each of 2 processes = one process with batch 2b
    assert _global_step(ddp_dir) == _global_step(single.run_dir)
    saved = json.loads((ddp_dir / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(rank0["metrics"])


def test_only_rank_zero_evaluates_and_writes(ddp_runs: dict[str, Any]) -> None:
    rank0, rank1 = ddp_runs["reports"][0], ddp_runs["reports"][1]
    runs = ddp_runs["out"] / "runs"
    for result in rank1["results"]:
        assert result["metrics"] == {}  # returned before evaluating
        assert "eval_seconds" not in result["timings"]
    for result in rank0["results"]:
        assert set(METRICS) <= set(result["metrics"])
        assert "eval_seconds" in result["timings"]
    assert rank1["written"] == []
    for name in MODELS:
        assert f"write {runs / name / 'metrics.json'}" in rank0["written"]
        assert f"write {runs / name / 'config.yaml'}" in rank0["written"]
        assert any(
            w.startswith(f"os.rename {runs / name / 'bundle.tmp'}") for w in rank0["written"]
        )
        assert (runs / name / "bundle").is_dir()

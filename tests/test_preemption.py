"""Preemption loses no finished step and runs none twice, within torchrun's grace period.

torchrun forwards SIGTERM to its workers and kills them 30 s later, so a stop is honoured at the next
micro-batch or validation batch: the ranks agree, drop the unfinished step (or abandon the validation
pass), and write the checkpoint of the last finished step with the loader position and RNG states of the
step that comes next. The same command then continues from it. Real torchrun (2 gloo processes), real
signals; the slow parts (a validation pass, a long step) are reads of real shards through webdataset pipes
that wait, as a network file system does, so they cost time but no CPU. The pipes count the reads, so the
tests know where the run is without timing it.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamflow.train.checkpoint import list_checkpoints, load_checkpoint
from lamflow.train.config import load_config
from lamflow.train.trainer import train
from contract_shards import write_toy_qvhighlights

SMALL = ["model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.generator_hidden=16",
         "model.encoder.generator_rank=2", "run.threads=1", "run.device=cpu", "run.progress=false", "run.log_every=1",
         "run.checkpoint_every=0", "optim.warmup_steps=1", "model.encoder.dropout=0.2",
         # One item per batch, no buffers: a batch reads its own one-video shard (at most a couple ahead).
         "data.loader.num_workers=0", "data.loader.batch_size=1", "data.eval_batch_size=1",
         "data.loader.shuffle_buffer=1", "data.loader.bucket_by_length=false"]
GRACE_SECONDS = 30  # torchrun's default --shutdown-timeout: SIGKILL after this


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training and validation shard sets of one-video shards (separate folders: a pipe can slow one down)."""
    root = tmp_path_factory.mktemp("preemption")
    train_set = write_toy_qvhighlights(root / "train", videos=64, val_videos=0, per_shard=1, duration=12.0)
    val_set = write_toy_qvhighlights(root / "val", videos=24, val_videos=24, per_shard=1, duration=12.0)
    return {"train": train_set.shards, "val": val_set.shards, "train_annotations": train_set.train_annotations,
            "val_annotations": val_set.val_annotations}


def overrides(data, out: Path, *extra: str) -> list[str]:
    return [f"data.train_shards={data['train']}", f"data.train_annotations={data['train_annotations']}",
            f"data.val_shards={data['val']}", f"data.val_annotations={data['val_annotations']}",
            *SMALL, f"run.out_dir={out}", *extra]


def counted_reads(folder: Path, count: Path, after: int, then: str) -> str:
    """A GOPEN_REWRITE rule (webdataset) reading ``folder``'s shards through a pipe that adds a line to the
    file ``count`` per read and, from the read after the first ``after`` on, runs the shell command ``then``
    before it reads (each batch reads its own shard, plus at most a couple ahead)."""
    shards = f"{folder}/shards/"
    return f"{shards}=pipe:(echo >> {count}) && (test $(wc -l < {count}) -le {after} || {then}) && cat {shards}"


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def torchrun(data, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lamflow.cli", "train", "qvhighlights_lam", *overrides(data, out, *extra)]
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen(command, stdout=log, stderr=log, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def train_records(out: Path, split: str = "train") -> list[dict]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(None, lines)) if r["split"] == split]


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def sigterm_and_wait(job: subprocess.Popen, out: Path) -> str:
    """SIGTERM to the torchrun process (it forwards it to the workers), as scancel or a preemption sends it;
    the job's log once it has exited."""
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=GRACE_SECONDS + 60)
    log = (out.parent / f"{out.name}.log").read_text()
    # The workers exited by themselves: torchrun did not have to kill them at the end of the grace period.
    assert "forcefully exiting via SIGKILL" not in log, log[-3000:]
    return log


def rerun(data, out: Path, *extra: str) -> str:
    job = torchrun(data, out, *extra)
    assert job.wait(timeout=240) == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    return (out.parent / f"{out.name}.log").read_text()


def test_sigterm_to_torchrun_during_validation_saves_the_step_and_the_rerun_validates_it(data, tmp_path):
    out = tmp_path / "run"
    # Validation reads 24 shards, 12 per rank, each after 3 s: a pass takes 36 s, longer than the grace period.
    job = torchrun(data, out, "optim.max_steps=4", "run.eval_every=2",
                   env={"GOPEN_REWRITE": counted_reads(data["val"], tmp_path / "reads", after=0, then="sleep 3")})
    wait_for(lambda: [r["step"] for r in train_records(out)] == [1, 2])  # step 2 is logged, then validated
    log = sigterm_and_wait(job, out)
    assert "stopped by SIGTERM at step 2: step-00000002.pt saved" in log
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]
    assert not (out / "predictions").exists() and train_records(out, "val") == []  # the pass was abandoned

    log = rerun(data, out, "optim.max_steps=4", "run.eval_every=2")
    assert f"resumed from {out / 'checkpoints' / 'step-00000002.pt'} at step 2" in log
    assert [r["step"] for r in train_records(out)] == [1, 2, 3, 4]  # no step lost, none run twice
    assert [r["step"] for r in train_records(out, "val")] == [2, 4]  # the abandoned validation ran first
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["val-step-00000002.jsonl", "val-step-00000004.jsonl"]


def test_sigterm_to_torchrun_in_the_middle_of_a_long_step_drops_it_and_the_rerun_runs_it_once(data, tmp_path):
    out, reads = tmp_path / "run", tmp_path / "reads"
    # 16 micro-batches per step on each rank: step 1 takes the first 32 reads (and a few ahead), step 2 the next
    # 32, and from the 41st on every read waits 5 s: step 2 is in its first half, with a minute left.
    steps = ["optim.max_steps=2", "optim.grad_accum=16", "data.val_shards=", "data.val_annotations="]
    job = torchrun(data, out, *steps, env={"GOPEN_REWRITE": counted_reads(data["train"], reads, after=40, then="sleep 5")})
    wait_for(lambda: count_lines(reads) > 40)
    log = sigterm_and_wait(job, out)
    assert "stopped by SIGTERM at step 1: step-00000001.pt saved" in log and [r["step"] for r in train_records(out)] == [1]
    (saved,) = list_checkpoints(out / "checkpoints")
    loader = load_checkpoint(saved)["loader"]
    # The loader resumes where the dropped step began, at its first micro-batch, not after what it had read.
    assert (loader["epoch"], loader["batches_done"]) == (0, 16)

    log = rerun(data, out, *steps)
    assert f"resumed from {saved} at step 1" in log and [r["step"] for r in train_records(out)] == [1, 2]


def test_a_step_dropped_half_way_is_run_again_exactly(data, tmp_path, monkeypatch):
    # One process, so the stop can come from the data: from the 12th read on, each sends SIGTERM to the trainer
    # (the pipe's parent): the first arrives in the first half of step 2 (8 micro-batches per step).
    steps = ["optim.max_steps=3", "optim.grad_accum=8", "data.val_shards=", "data.val_annotations="]
    train(load_config("qvhighlights_lam", overrides(data, tmp_path / "full", *steps)))
    uninterrupted = {r["step"]: r["loss"] for r in train_records(tmp_path / "full")}

    out = tmp_path / "stopped"
    monkeypatch.setenv("GOPEN_REWRITE", counted_reads(data["train"], tmp_path / "reads", after=11, then="kill -TERM $PPID"))
    assert train(load_config("qvhighlights_lam", overrides(data, out, *steps)))["stopped_by"] == "SIGTERM"
    (saved,) = list_checkpoints(out / "checkpoints")
    state = load_checkpoint(saved)
    assert (state["step"], state["loader"]["batches_done"]) == (1, 8) and [r["step"] for r in train_records(out)] == [1]
    monkeypatch.delenv("GOPEN_REWRITE")
    train(load_config("qvhighlights_lam", overrides(data, out, *steps)), require_checkpoint=True)
    assert {r["step"]: r["loss"] for r in train_records(out)} == uninterrupted  # exact: same batches, same dropout

"""Requeue-safe training: one command starts a run and continues it, on toy shards in the real format.

A run directory with checkpoints of the same config is continued (a changed config is refused, naming the
fields), a truncated newest checkpoint falls back to the previous one, refused or unreadable files get
lamflow's own message, and SIGTERM saves a checkpoint that the same command continues from."""
import collections
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lamflow.cli import main as lamflow_main
from lamflow.train.checkpoint import CheckpointError, ResumeError, list_checkpoints, load_checkpoint
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics
from lamflow.train.trainer import train
from contract_shards import write_toy_qvhighlights

CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "qvhighlights_lam.yaml"
SMALL = ["model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.generator_hidden=16",
         "model.encoder.generator_rank=2",
         "run.threads=1", "data.loader.num_workers=0", "data.loader.batch_size=2", "optim.warmup_steps=1", "run.log_every=1",
         "run.progress=false", "run.eval_every=0", "data.val_shards="]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_qvhighlights(tmp_path_factory.mktemp("toy"), videos=6, val_videos=0, duration=12.0)


def overrides(toy, out: Path, *extra: str) -> list[str]:
    return [f"data.train_shards={toy.shards}", f"data.train_annotations={toy.train_annotations}",
            *SMALL, f"run.out_dir={out}", *extra]


def logged_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


def test_the_same_command_starts_a_run_continues_it_and_may_extend_it(toy, tmp_path):
    out = tmp_path / "run"
    train(load_config(CONFIG, overrides(toy, out, "optim.max_steps=3", "run.checkpoint_every=2")))
    assert logged_steps(out) == [1, 2, 3]
    # Run again: nothing left to do, the same records come back, no second curve is appended.
    again = train(load_config(CONFIG, overrides(toy, out, "optim.max_steps=3", "run.checkpoint_every=2")))
    assert again["train"]["step"] == 3 and logged_steps(out) == [1, 2, 3]
    # optim.max_steps and the reporting fields may change on resume: the run goes on from step 3.
    train(load_config(CONFIG, overrides(toy, out, "optim.max_steps=5", "run.checkpoint_every=1", "run.keep_checkpoints=1")))
    assert logged_steps(out) == [1, 2, 3, 4, 5]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000005.pt"]


def test_a_run_that_died_before_its_first_checkpoint_starts_again_with_one_curve(toy, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 9.0}\n')
    train(load_config(CONFIG, overrides(toy, out, "optim.max_steps=2")))
    assert logged_steps(out) == [1, 2] and read_metrics(out / "metrics.jsonl")[0]["loss"] != 9.0


def test_a_changed_config_is_refused_naming_the_differing_fields(toy, tmp_path):
    out = tmp_path / "run"
    train(load_config(CONFIG, overrides(toy, out, "optim.max_steps=1")))
    changed = load_config(CONFIG, overrides(toy, out, "optim.max_steps=1", "model.encoder.dim=32", "optim.weight_decay=0.1"))
    with pytest.raises(ResumeError) as refused:
        train(changed)
    message = str(refused.value)
    assert "model.encoder.dim: 16 -> 32" in message and "optim.weight_decay: 0.05 -> 0.1" in message
    assert "step-00000001.pt" in message and "new run.out_dir" in message
    assert "optim.max_steps" in message  # what may change is listed


def test_resume_flag_requires_a_checkpoint(toy, tmp_path):
    config = load_config(CONFIG, overrides(toy, tmp_path / "empty", "optim.max_steps=1"))
    with pytest.raises(ResumeError, match="no checkpoint in .*empty/checkpoints"):
        train(config, require_checkpoint=True)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(toy, tmp_path, caplog):
    out = tmp_path / "run"
    args = overrides(toy, out, "optim.max_steps=4", "run.checkpoint_every=2")
    train(load_config(CONFIG, args))
    newest = out / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short, a disk that filled up

    with caplog.at_level(logging.WARNING, logger="lamflow.train.trainer"):
        train(load_config(CONFIG, args))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "step-00000004.pt is truncated or corrupt" in warning and "resuming from step-00000002.pt" in warning
    assert logged_steps(out) == [1, 2, 3, 4]  # steps 3 and 4 trained again, logged once
    assert (out / "checkpoints" / "step-00000004.pt.bad").exists()  # kept for inspection, out of the way
    assert load_checkpoint(newest)["step"] == 4


class Payload:
    """What a malicious or foreign checkpoint carries: an object whose unpickling runs a command."""

    def __reduce__(self):
        return (os.system, ("echo unpickled",))


@pytest.mark.parametrize("content, message", [
    ("payload", r"is refused: it asks to build Python objects \(posix.system\)"),
    ("truncated", "is truncated or corrupt"),
    ("empty", "is empty"),
    ("text", "is not a checkpoint written by lamflow"),
], ids=["payload", "truncated", "empty", "text"])
def test_unreadable_or_refused_checkpoints_get_lamflows_own_message(tmp_path, capsys, content, message):
    path = tmp_path / "step-00000001.pt"
    good = tmp_path / "good.pt"
    torch.save({"step": 1, "weights": torch.ones(3), "counts": collections.OrderedDict(a=1)}, good)
    if content == "payload":
        torch.save({"step": 1, "config": Payload()}, path)
    else:
        path.write_bytes({"truncated": good.read_bytes()[:300], "empty": b"", "text": b"step: 1\n"}[content])
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "weights_only" not in str(error.value)
    # The CLI prints it as one line, exit status 2, no traceback.
    assert lamflow_main(["predict", str(path), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamflow predict: error: checkpoint") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_saves_a_checkpoint_and_the_same_command_continues_the_run(toy, tmp_path, workers):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lamflow.cli", "train", str(CONFIG),
               *overrides(toy, out, "optim.max_steps=60", "run.checkpoint_every=0", f"data.loader.num_workers={workers}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group: the signal reaches every process of the job, loader workers included, as
    # scancel and a SLURM requeue deliver it.
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline and \
            len(metrics.read_text().splitlines() if metrics.exists() else []) < 5:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGTERM)  # what scancel, a requeue or preemption sends
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM at step" in stderr
    (saved,) = list_checkpoints(out / "checkpoints")  # checkpoint_every=0: the signal's checkpoint only
    stopped_at = load_checkpoint(saved)["step"]
    assert 5 <= stopped_at < 60 and logged_steps(out) == list(range(1, stopped_at + 1))

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"resumed from {saved} at step {stopped_at}" in second.stderr
    assert logged_steps(out) == list(range(1, 61))  # every step once: no finished step lost or repeated

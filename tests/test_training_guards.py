"""Nothing trains silently on garbage: skipped data is counted in metrics.jsonl, NaN gradients never reach the
weights, NaN/inf weights never reach a checkpoint, and a diverged run stops with advice that the same command
can follow (real trainer, one process, toy shards)."""
import io

import numpy as np
import pytest
from contract_shards import damage_members, write_toy_qvhighlights

from lamflow.errors import LamflowError
from lamflow.train.checkpoint import list_checkpoints
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics
from lamflow.train.schedule import WarmupCosine
from lamflow.train.trainer import train

TINY = ["model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.generator_rank=2",
        "data.loader.batch_size=2", "data.loader.num_workers=0", "run.threads=1", "run.progress=false",
        "run.log_every=1", "run.eval_every=0", "optim.warmup_steps=0"]


def config(toy, out, *overrides):
    return load_config("demo", [f"data.train_shards={toy.shards}", "data.val_shards=",
                                f"data.train_annotations={toy.train_annotations}", f"run.out_dir={out}", *TINY, *overrides])


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_skipped_samples_are_counted_in_metrics_jsonl(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=6, val_videos=0)
    # One video's features hold NaN, another has no video tokens at all (an audio-only input).
    damage_members(toy.shards / "shards" / "shard-000000.tar", {
        "vid000.video.npy": npy(np.full((20, 16), np.nan, np.float16)),
        "vid001.video.npy": npy(np.zeros((0, 16), np.float16)), "vid001.video_ts.npy": npy(np.zeros(0, np.float32)),
    })
    train(config(toy, tmp_path / "run", "optim.max_steps=3"))
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["skipped_corrupt"] >= 1 and last["skipped_empty"] >= 1
    assert np.isfinite(last["loss"]) and last["nonfinite_steps"] == 0


def test_nan_gradients_are_skipped_and_a_run_that_keeps_making_them_stops(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=4, val_videos=0)
    # A learning rate this large overflows the weights after the first update: every later gradient is NaN.
    with pytest.raises(LamflowError, match=r"NaN/inf in 3 steps in a row .*Lower optim.lr"):
        train(config(toy, tmp_path / "run", "optim.lr=1e30", "optim.max_steps=20", "run.max_nonfinite_steps=3",
                     "optim.grad_clip=0"))
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert logged[-1]["nonfinite_steps"] >= 2 and logged[0]["nonfinite_steps"] == 0


def test_an_update_that_overflows_the_weights_stops_the_run_before_a_checkpoint_holds_them(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=4, val_videos=0)
    # The gradients are finite; betas (0, 0.98) make AdamW's first update exactly lr per weight, and at the
    # largest float32 learning rate the weight decay added to it overflows.
    with pytest.raises(LamflowError, match=r"the update of step 1 .* made the weights NaN/inf: training diverged"):
        train(config(toy, tmp_path / "run", "optim.lr=3.4e38", "optim.betas=[0.0,0.98]", "optim.grad_clip=0",
                     "optim.max_steps=3", "run.checkpoint_every=1"))
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_a_diverged_run_continues_from_its_last_good_checkpoint_with_the_advised_change(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=4, val_videos=0)
    out = tmp_path / "run"
    run = ["run.checkpoint_every=1", "run.keep_checkpoints=3", "run.max_nonfinite_steps=2"]
    train(config(toy, out, "optim.max_steps=2", *run))
    # Continued with a learning rate so large that step 3's update makes the weights huge (finite, so they are
    # checkpointed) and every later gradient NaN: the checkpoints of steps 3 and 4 hold diverged weights.
    with pytest.raises(LamflowError) as error:
        train(config(toy, out, "optim.max_steps=8", *run, "optim.lr=1e30"))
    message = str(error.value)
    assert "NaN/inf in 2 steps in a row (up to step 5)" in message
    assert "Lower optim.lr, raise optim.warmup_steps or set run.amp=off, and run the same command" in message
    assert "it continues from step-00000002.pt" in message
    checkpoints = out / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000002.pt"]
    assert sorted(p.name for p in checkpoints.glob("*.diverged")) == ["step-00000003.pt.diverged", "step-00000004.pt.diverged"]

    # The advice followed: the same command with a lower learning rate, a longer warm-up and amp off continues.
    train(config(toy, out, "optim.max_steps=6", *run, "optim.lr=1e-4", "optim.warmup_steps=4", "run.amp=off"))
    logged = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in logged)
    schedule = WarmupCosine(4, 6, load_config("demo").optim.min_lr_ratio)
    assert [r["lr"] for r in logged[2:]] == pytest.approx([1e-4 * schedule(position) for position in range(2, 6)])

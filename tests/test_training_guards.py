"""Nothing trains silently on garbage: skipped data is counted in metrics.jsonl, NaN gradients never reach the
weights, and a run whose gradients stay NaN stops with an error (real trainer, one process, toy shards)."""
import io

import numpy as np
import pytest
from contract_shards import damage_members, write_toy_qvhighlights

from lamflow.errors import LamflowError
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics
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
    with pytest.raises(LamflowError, match=r"NaN/inf in 3 steps in a row .*lower optim.lr"):
        train(config(toy, tmp_path / "run", "optim.lr=1e30", "optim.max_steps=20", "run.max_nonfinite_steps=3",
                     "optim.grad_clip=0"))
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert logged[-1]["nonfinite_steps"] >= 2 and logged[0]["nonfinite_steps"] == 0

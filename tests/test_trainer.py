"""The trainer end to end: real extracted shards (ffmpeg media -> lamflow extract with the tiny CLIP),
real torchrun processes (gloo), the official evaluators; exact resume, atomic checkpoints, learning."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamflow.commands import predict as predict_command
from lamflow.pipelines.extract import run_extraction
from lamflow.pipelines.settings import ExtractSettings
from lamflow.train import checkpoint as checkpoint_module
from lamflow.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from lamflow.train.config import load_config
from lamflow.train.tasks.classification_eval import evaluate_files as evaluate_classification_files
from lamflow.train.tasks.qvhighlights_eval import BRIEF_KEYS, evaluate_files
from lamflow.train.run_log import read_metrics
from lamflow.train.schedule import WarmupCosine
from lamflow.train.trainer import train
from contract_shards import write_toy_qvhighlights
from media import make_media

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
DURATION = 6.0
# vid -> (split, [(qid, query, [start, end])]): 3 training videos (4 queries), 2 validation videos named
# like QVHighlights vids (dots are not allowed in shard keys: predictions must still name the original vid).
VIDEOS = {
    "cooking": ("train", [(1, "someone cooks", [0.0, 2.0]), (2, "a pan on the stove", [2.0, 6.0])]),
    "beach": ("train", [(3, "waves on a beach", [2.0, 4.0])]),
    "city": ("train", [(4, "cars in a city", [0.0, 4.0])]),
    "forest_0.0_6.0": ("val", [(5, "trees in a forest", [2.0, 6.0])]),
    "garden_30.0_36.0": ("val", [(6, "flowers in a garden", [0.0, 2.0])]),
}
SMALL_MODEL = ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.heads=2", "model.encoder.generator_hidden=32",
               "model.encoder.generator_rank=4"]
# Tiny models on a busy 2-core machine: one intra-op thread, no loader worker processes.
FRUGAL = ["run.threads=1", "data.loader.num_workers=0"]


def annotation(qid: int, query: str, vid: str, window: list[float]) -> dict:
    clips = list(range(int(window[0] // 2), int(window[1] // 2)))
    return {"qid": qid, "query": query, "duration": DURATION, "vid": vid, "relevant_windows": [window],
            "relevant_clip_ids": clips, "saliency_scores": [[2, 3, 4] for _ in clips]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Real shards: ffmpeg test videos -> run_extraction (tiny CLIP, queries encoded from the annotations)."""
    root = tmp_path_factory.mktemp("qv")
    videos = root / "videos"
    for index, vid in enumerate(VIDEOS):
        make_media(videos / f"{vid}.mp4", duration=DURATION, size="96x72", rate=10, tone_hz=300 + 150 * index)
    records = {split: [] for split in ("train", "val")}
    for vid, (split, queries) in VIDEOS.items():
        records[split] += [annotation(qid, query, vid, window) for qid, query, window in queries]
    train_path = write_jsonl(root / "train.jsonl", records["train"])
    val_path = write_jsonl(root / "val.jsonl", records["val"])
    queries = write_jsonl(root / "queries.jsonl", records["train"] + records["val"])
    settings = ExtractSettings(clip_model="lamflow-tiny", frame_batch=8)
    run_extraction([str(videos)], root / "shards", settings, workers=1, shard_samples=3, texts=queries, progress=False)
    return {"shards": root / "shards", "train": train_path, "val": val_path}


def qv_overrides(data: dict, out_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.train_shards={data['shards']}", f"data.val_shards={data['shards']}",
        f"data.train_annotations={data['train']}", f"data.val_annotations={data['val']}",
        "data.loader.batch_size=1", "data.eval_batch_size=2",
        *SMALL_MODEL, *FRUGAL, "optim.warmup_steps=1", "run.log_every=1", "run.progress=false", f"run.out_dir={out_dir}",
        *extra,
    ]


def run_predict_command(argv: list[str]) -> int:
    """`lamflow predict ARGV` through the command module's own parser."""
    parser = argparse.ArgumentParser(prog="lamflow")
    predict_command.register(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def train_losses(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if r["split"] == "train"}


def test_torchrun_two_processes_train_from_real_shards_and_write_official_predictions(extracted, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lamflow.cli", "train", str(CONFIGS / "qvhighlights_lam.yaml"),
        # grad_accum=2: the first micro-batch of each step runs under DDP no_sync.
        *qv_overrides(extracted, out, "optim.max_steps=4", "optim.grad_accum=2", "run.eval_every=4", "run.checkpoint_every=2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-4000:]

    metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in metrics if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics if r["split"] == "train")
    (val,) = [r for r in metrics if r["split"] == "val"]
    assert val["items"] == 2 and set(BRIEF_KEYS) <= set(val)
    # Both ranks' shares of the validation split are in the file, which the official evaluator accepts.
    predictions = out / "predictions" / "val-step-00000004.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["qid"], r["vid"]) for r in rows] == [(5, "forest_0.0_6.0"), (6, "garden_30.0_36.0")]
    for row in rows:
        scores = [w[2] for w in row["pred_relevant_windows"]]
        assert 1 <= len(scores) <= 10 and scores == sorted(scores, reverse=True)
        assert all(0 <= w[0] <= w[1] <= DURATION for w in row["pred_relevant_windows"])
        assert len(row["pred_saliency_scores"]) == DURATION / 2
    assert evaluate_files(extracted["val"], predictions)["brief"] == {k: val[k] for k in BRIEF_KEYS}
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002.pt", "step-00000004.pt"]
    assert len(load_checkpoint(out / "checkpoints" / "step-00000004.pt")["rng"]) == 2  # one RNG state per rank

    # `lamflow predict` rebuilds the model from the checkpoint and writes the same predictions.
    again = tmp_path / "again.jsonl"
    assert run_predict_command([str(out / "checkpoints" / "step-00000004.pt"), "--split", "val", "--out", str(again)]) == 0
    for first, second in zip(rows, [json.loads(line) for line in again.read_text().splitlines()]):
        assert first["qid"] == second["qid"]
        assert torch.allclose(torch.tensor(first["pred_saliency_scores"]), torch.tensor(second["pred_saliency_scores"]), atol=1e-4)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_a_checkpoint_reproduces_the_uninterrupted_losses(extracted, tmp_path, workers):
    # dropout on (RNG must be restored), checkpoint mid-epoch (4 batches per epoch), run across an epoch end;
    # with loader worker processes too (starting their iterators must not consume the training RNG).
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(load_config(CONFIGS / "qvhighlights_lam.yaml", qv_overrides(
        extracted, full, "optim.max_steps=7", "run.checkpoint_every=3", "run.keep_checkpoints=5", "run.eval_every=0",
        "data.val_shards=", "model.encoder.dropout=0.2", f"data.loader.num_workers={workers}")))
    uninterrupted = train_losses(full)
    assert sorted(uninterrupted) == list(range(1, 8))

    # A run that was killed after step 4: its newest checkpoint is step 3, its log runs one step further.
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "step-00000003.pt").write_bytes((full / "checkpoints" / "step-00000003.pt").read_bytes())
    log_lines = (full / "metrics.jsonl").read_text().splitlines()[:4]
    (resumed / "metrics.jsonl").write_text("\n".join(log_lines) + "\n")

    overrides = qv_overrides(extracted, resumed, "optim.max_steps=7", "run.checkpoint_every=3", "run.eval_every=0",
                             "data.val_shards=", "model.encoder.dropout=0.2", f"data.loader.num_workers={workers}")
    train(load_config(CONFIGS / "qvhighlights_lam.yaml", overrides), require_checkpoint=True)
    assert train_losses(resumed) == uninterrupted  # exact equality: same batches, same dropout masks


def test_checkpoint_write_is_atomic_and_keeps_the_last_n(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(folder, step, {"step": step, "weights": torch.full((4,), float(step))}, keep_last=2)
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000002.pt", "step-00000003.pt"]

    def crash_midway(state, handle):  # the process dies after writing part of the file
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, 4, {"step": 4}, keep_last=2)
    assert latest_checkpoint(folder).name == "step-00000003.pt"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002.pt", "step-00000003.pt"]
    assert load_checkpoint(latest_checkpoint(folder))["weights"].tolist() == [3.0] * 4


def test_loss_decreases_on_a_learnable_toy_signal(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=8, val_videos=2)
    config = load_config(CONFIGS / "qvhighlights_lam.yaml", [
        f"data.train_shards={toy.shards}", f"data.train_annotations={toy.train_annotations}", "data.val_shards=",
        "data.loader.batch_size=3", *SMALL_MODEL, *FRUGAL, "model.encoder.dropout=0.0", "optim.lr=3e-3", "optim.warmup_steps=2",
        "optim.max_steps=40", "run.log_every=1", "run.checkpoint_every=0", "run.progress=false", f"run.out_dir={tmp_path / 'run'}",
    ])
    train(config)
    losses = [train_losses(tmp_path / "run")[step] for step in range(1, 41)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_classification_trains_and_is_scored_with_top1_and_top5(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=6, val_videos=0)
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\n" + "".join(f"vid{i:03d},{['cat', 'dog', 'bird'][i % 3]}\n" for i in range(6)))
    config = load_config(CONFIGS / "classification.yaml", [
        f"data.train_shards={toy.shards}", f"data.val_shards={toy.shards}", f"data.labels={labels}",
        "data.loader.batch_size=2", *SMALL_MODEL, *FRUGAL, "optim.max_steps=3", "optim.warmup_steps=1",
        "run.log_every=1", "run.eval_every=3", "run.progress=false", f"run.out_dir={tmp_path / 'run'}",
    ])
    result = train(config)
    assert result["val"]["items"] == 6 and {"top1", "top5"} <= set(result["val"])
    assert result["val"]["top5"] == 100.0  # 3 classes: every label is in the top 5
    predictions = tmp_path / "run" / "predictions" / "val-step-00000003.jsonl"
    assert evaluate_classification_files(labels, predictions)["top1"] == result["val"]["top1"]
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["class_names"] == ["bird", "cat", "dog"]


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine_to_the_floor():
    schedule = WarmupCosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0 and schedule(9) == pytest.approx(0.55) and schedule(14) == pytest.approx(0.1)
    assert schedule(100) == pytest.approx(0.1)  # past max_steps (a resumed run extended by hand) stays at the floor

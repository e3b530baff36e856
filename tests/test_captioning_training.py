"""Training the generation tasks with the trainer: captioning validated with pycocoevalcap's metrics into
metrics.jsonl, audio description on frames imported from a MAD-style h5 file, `lamflow predict` caption
lines; and one shard set training moment retrieval, classification and captioning without being touched."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from contract_shards import write_toy_qvhighlights

from lamflow.commands import predict as predict_command
from lamflow.datasets.caption_text import encode_caption
from lamflow.errors import ConfigError
from lamflow.fileio import read_jsonl
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import import_h5
from lamflow.train.checkpoint import latest_checkpoint, load_checkpoint
from lamflow.train.config import load_config
from lamflow.train.tasks.audio_description_eval import TfidfSimilarity
from lamflow.train.tasks.audio_description_eval import evaluate_files as evaluate_ad_files
from lamflow.train.tasks.captioning_eval import BLEU_KEYS
from lamflow.train.predict import predict_checkpoint
from lamflow.train.run_log import read_metrics
from lamflow.train.trainer import train

SMALL_MODEL = ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.heads=2", "model.decoder_layers=1",
               "model.max_caption_tokens=12", "run.threads=1", "data.loader.num_workers=0", "optim.warmup_steps=1",
               "run.log_every=1", "run.progress=false"]
CAPTIONS = ["a red shape appears while a high tone beeps", "a blue shape appears while a low tone beeps",
            "a green shape appears", "a middle tone beeps"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def caption_files(root: Path, videos: int = 8, val_videos: int = 2) -> tuple[Path, Path]:
    records = [{"vid": f"vid{i:03d}", "caption": CAPTIONS[(i + k) % len(CAPTIONS)]} for i in range(videos) for k in (0, 1)]
    train_records = [r for r in records if int(r["vid"][3:]) < videos - val_videos]
    return (write_jsonl(root / "train_captions.jsonl", train_records),
            write_jsonl(root / "val_captions.jsonl", [r for r in records if r not in train_records]))


def run_predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lamflow")
    predict_command.register(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def test_captioning_trains_validates_with_the_caption_metrics_and_predicts_caption_lines(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=8, val_videos=2)
    train_captions, val_captions = caption_files(tmp_path)
    out = tmp_path / "run"
    result = train(load_config("captioning", [
        f"data.train_shards={toy.shards}", f"data.val_shards={toy.shards}", f"data.train_captions={train_captions}",
        f"data.val_captions={val_captions}", "data.train_caption_split=null", "data.val_caption_split=null",
        "data.loader.batch_size=4", "model.beam_size=2", "optim.max_steps=4", "run.eval_every=0",
        f"run.out_dir={out}", *SMALL_MODEL]))

    (val,) = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert val == result["val"] and val["items"] == 2  # one item (one caption) per validation video
    assert {*BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr"} <= set(val) and all(0 <= val[k] for k in BLEU_KEYS)
    rows = read_jsonl(out / "predictions" / "val-step-00000004.jsonl")
    assert [row["vid"] for row in rows] == ["vid006", "vid007"] and all(row["caption"].strip() for row in rows)

    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    seen = {token for line in read_jsonl(train_captions) for token in encode_caption(line["caption"])}
    assert state["vocabulary"] == sorted(seen)  # the decoder's words: those of the training captions
    again = tmp_path / "again.jsonl"
    assert run_predict_command([str(latest_checkpoint(out / "checkpoints")), "--split", "val", "--out", str(again)]) == 0
    assert read_jsonl(again) == rows


def test_audio_description_trains_on_imported_movie_frames_and_writes_ad_lines_that_eval_ad_scores(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "frames.h5", "w") as h5:
        for movie in ("tt001", "tt002"):
            h5[movie] = rng.standard_normal((60 * 5, 16)).astype(np.float32)  # 60 s at 5 fps
    import_h5(tmp_path / "frames.h5", tmp_path / "mad", ImportOptions(stream="video", fps=5.0))
    ads = [{"ad_id": f"{movie}-{i}", "movie_id": movie, "start": 5.0 + 9 * i, "end": 8.0 + 9 * i, "ad": CAPTIONS[i % 4]}
           for movie in ("tt001", "tt002") for i in range(5)]
    train_ads = write_jsonl(tmp_path / "train_ads.jsonl", [ad for ad in ads if ad["movie_id"] == "tt001"])
    val_ads = write_jsonl(tmp_path / "val_ads.jsonl", [ad for ad in ads if ad["movie_id"] == "tt002"])
    out = tmp_path / "run"
    train(load_config("audio_description", [
        f"data.train_shards={tmp_path / 'mad'}", f"data.train_captions={train_ads}", "data.val_shards=",
        "data.loader.batch_size=2", "optim.max_steps=3", f"run.out_dir={out}", *SMALL_MODEL]))

    predictions = predict_checkpoint(latest_checkpoint(out / "checkpoints"), "val", tmp_path / "pred.jsonl",
                                     [f"data.val_shards={tmp_path / 'mad'}", f"data.val_captions={val_ads}"])
    rows = read_jsonl(predictions)
    assert [row["ad_id"] for row in rows] == [f"tt002-{i}" for i in range(5)] and all(row["caption"] for row in rows)
    scores = evaluate_ad_files(val_ads, predictions, TfidfSimilarity(), ks=(1,), n=4)
    assert 0 <= scores["R@1/4"] <= 100 and scores["num_ads"] == 5 and not scores["similarity"]["official"]


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its content hash and modification time (ns)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_shard_set_trains_moment_retrieval_classification_and_captioning_untouched(tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "shards", videos=8, val_videos=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"vid{i:03d},{['cat', 'dog'][i % 2]}\n" for i in range(8)))
    train_captions, _ = caption_files(tmp_path)
    before = fingerprint(toy.shards)
    common = [f"data.train_shards={toy.shards}", "data.val_shards=", "data.loader.batch_size=2", "optim.max_steps=2",
              *SMALL_MODEL]
    runs = {
        "qvhighlights_lam": [f"data.train_annotations={toy.train_annotations}"],
        "classification": [f"data.labels={labels}"],
        "captioning": [f"data.train_captions={train_captions}", "data.train_caption_split=null"],
    }
    for config, task_fields in runs.items():
        train(load_config(config, [*common, *task_fields, f"run.out_dir={tmp_path / config}"]))
        assert latest_checkpoint(tmp_path / config / "checkpoints").name == "step-00000002.pt"
    assert fingerprint(toy.shards) == before  # same bytes, same mtimes: nothing rewrote a shard or an index


@pytest.mark.parametrize("config, overrides, message", [
    ("captioning", ["data.train_captions="], "data.train_captions is required for task captioning"),
    ("captioning", ["data.loader.streams=[text,video]"], "must not list 'text' for task captioning"),
    ("captioning", ["data.val_captions="], "data.val_captions is required when data.val_shards is set"),
    ("captioning", ["model.max_caption_tokens=2"], "model.max_caption_tokens must be an integer >= 3"),
    ("audio_description", ["data.ad_context_before=-1"], "data.ad_context_before must be a finite number of seconds >= 0"),
    ("captioning", ["data.ad_context_before=5"], r"data.ad_context_before applies to task audio_description only"),
])
def test_generation_configs_that_cannot_run_name_the_field(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides)


@pytest.mark.parametrize("name, task", [("captioning", "captioning"), ("demo_captioning", "captioning"),
                                        ("audio_description", "audio_description")])
def test_the_generation_configs_ship_and_load_by_name(name, task):
    config = load_config(name)
    assert config.data.task == task and config.data.train_captions and "text" not in config.data.loader.streams

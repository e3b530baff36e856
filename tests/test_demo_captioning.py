"""The demo corpus speaks: a caption model trained on its captions (real ffmpeg videos, real extraction with the
tiny CLIP, the trainer, `lamflow predict`'s path, pycocoevalcap) beats the most frequent training caption.

The corpus is the quick one with more, shorter and smaller videos (16 train + 8 val of 16 s at 128x96), so
that a few hundred steps of a tiny model generalise and 8 validation videos make CIDEr more than a coin flip;
everything is seeded, so the numbers are the same on every run.
"""
from __future__ import annotations

from dataclasses import replace

from lamflow.demo.baselines import most_frequent_caption
from lamflow.demo.corpus import build_corpus
from lamflow.demo.schedule import CorpusConfig
from lamflow.fileio import read_jsonl, write_jsonl_atomic
from lamflow.pipelines.extract import run_extraction
from lamflow.pipelines.settings import ExtractSettings
from lamflow.train.checkpoint import latest_checkpoint
from lamflow.train.config import load_config
from lamflow.train.tasks.captioning_eval import evaluate_files
from lamflow.train.predict import predict_checkpoint
from lamflow.train.trainer import train

CORPUS = replace(CorpusConfig.quick(seed=0), train_videos=16, val_videos=8, duration=16, duration_jitter=0,
                 width=128, height=96, fps=5)
TINY_CAPTIONER = ["model.encoder.dim=64", "model.encoder.depth=2", "model.decoder_layers=1", "optim.lr=2e-3",
                  "optim.max_steps=300", "run.checkpoint_every=0", "run.threads=1", "run.progress=false"]


def test_a_trained_caption_model_beats_the_most_frequent_caption_by_a_clear_margin_on_cider(tmp_path):
    corpus = build_corpus(CORPUS, tmp_path / "corpus", jobs=2)
    features = tmp_path / "features"
    run_extraction([str(corpus.videos_dir)], features, ExtractSettings(clip_model="lamflow-tiny", frame_batch=16),
                   workers=1, shard_samples=8, progress=False)
    train(load_config("demo_captioning", [
        f"data.train_shards={features}", f"data.val_shards={features}", f"data.train_captions={corpus.train_captions}",
        f"data.val_captions={corpus.val_captions}", f"run.out_dir={tmp_path / 'run'}", *TINY_CAPTIONER]))
    predictions = predict_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"), "val", tmp_path / "lam.jsonl",
                                     [f"data.val_shards={features}"])
    vids = [line["vid"] for line in read_jsonl(corpus.val_captions)]
    baseline = write_jsonl_atomic(tmp_path / "baseline.jsonl",
                                  most_frequent_caption(read_jsonl(corpus.train_captions), vids))

    lam, most_frequent = (evaluate_files(corpus.val_captions, path)["CIDEr"] for path in (predictions, baseline))
    # Seeds 0-3 of this setup give CIDEr 4.4-5.1 against the baseline's 2.2.
    assert lam >= 1.5 * most_frequent and lam >= most_frequent + 1.0, (lam, most_frequent)
    assert len({row["caption"] for row in read_jsonl(predictions)}) >= 3  # it describes each video, not the corpus

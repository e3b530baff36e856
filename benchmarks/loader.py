"""Loader throughput: StreamingLoader over shards vs one-npz-per-video files (the moment_detr layout).

Writes synthetic features twice, with the same numbers:
- lamflow shards in the shard contract (DIR/shards/*.tar + sizes.json + manifest.jsonl), text tokens inside;
- moment_detr-style files: video/{vid}.npz, audio/{vid}.npz ("features") and text/qid{qid}.npz
  ("last_hidden_state"), read by a map-style Dataset + torch DataLoader with shuffling.
Both sides produce the same collated batches (lamflow.datasets.collate + QVHighlights targets), so the
figures compare reading and decoding. Files are freshly written, so both read from the page cache.

Then the samples/s a training step consumes: the default QVHighlights model (the model section of
train/configs/qvhighlights_lam.yaml) trains fp32 on the CPU on batches of the same shards, with as many
torch threads as the trainer would take. Target: loader samples/s >= 5 x trainer samples/s.

    python benchmarks/loader.py [--videos 500] [--workers 2] [--batch-size 8] [--train-steps 3] [--json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _step_timing import DEFAULT_CONFIG, train_step_seconds
from torch.utils.data import DataLoader, Dataset

from lamflow.contract import Record, safe_key, sample_dims
from lamflow.datasets.collate import collate_streams
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.qvhighlights import QVHighlightsQuery, QVHighlightsTask
from lamflow.fileio import write_jsonl_atomic
from lamflow.pipelines.manifest import OutputDir
from lamflow.train.build import build_model
from lamflow.train.config import load_config

STREAMS = ("text", "video", "audio")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=500, help="number of synthetic videos (one query each)")
    parser.add_argument("--video-tokens", type=int, default=150, help="T_v: frames per video (x 512, float16)")
    parser.add_argument("--audio-tokens", type=int, default=1500, help="T_a: audio tokens per video (x 64, float16)")
    parser.add_argument("--text-tokens", type=int, default=20, help="L_t: query tokens (x 512, float16)")
    parser.add_argument("--per-shard", type=int, default=100, help="samples per shard")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both loaders")
    parser.add_argument("--batch-size", type=int, default=8, help="items per batch, for the loaders and the train steps")
    parser.add_argument("--train-steps", type=int, default=3, help="timed train steps (after 1 warm-up step)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the data (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.train_steps < 1:
        parser.error(f"--train-steps must be >= 1, got {args.train_steps}")
    return args


def synthetic_video(index: int, args: argparse.Namespace) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(index)
    duration = 150.0
    return {
        "video": rng.standard_normal((args.video_tokens, 512), dtype=np.float32).astype(np.float16),
        "video_ts": np.linspace(0, duration, args.video_tokens, endpoint=False, dtype=np.float32),
        "audio": rng.standard_normal((args.audio_tokens, 64), dtype=np.float32).astype(np.float16),
        "audio_ts": np.linspace(0, duration, args.audio_tokens, endpoint=False, dtype=np.float32),
        "text": rng.standard_normal((1, args.text_tokens, 512), dtype=np.float32).astype(np.float16),
    }


def write_data(root: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Shard DIR, npz DIR and the annotation file, all from the same synthetic features."""
    shard_dir, npz_dir = root / "extraction", root / "npz"
    for sub in ("video", "audio", "text"):
        (npz_dir / sub).mkdir(parents=True, exist_ok=True)
    (shard_dir / "shards").mkdir(parents=True, exist_ok=True)
    annotations = []
    # The pipeline's own writer: the same shards, manifest and sizes.json `lamflow extract` writes.
    output = OutputDir(shard_dir, {"kind": "benchmark", "settings": vars(args) | {"dir": None}, "texts": None})
    try:
        with output.shard_sink(args.per_shard, 1 << 40) as sink:
            for index in range(args.videos):
                vid, key = f"vid{index:05d}_0.0_150.0", safe_key(f"vid{index:05d}_0.0_150.0")
                features = synthetic_video(index, args)
                sample = {"__key__": key, **{f"{name}.npy": array for name, array in features.items()},
                          "meta.json": {"key": key, "original_name": vid, "source": f"{vid}.mp4", "duration": 150.0,
                                        "texts": [{"id": str(index), "text": f"query {index}", "tokens": args.text_tokens}]}}
                sink.write(sample, Record(key, f"{vid}.mp4", "ok", dims=sample_dims(sample), duration=150.0, original_name=vid))
                annotations.append({"qid": index, "query": f"query {index}", "duration": 150, "vid": vid,
                                    "relevant_windows": [[10, 20]], "relevant_clip_ids": [5, 6],
                                    "saliency_scores": [[2, 3, 4], [1, 1, 1]]})
                np.savez(npz_dir / "video" / f"{vid}.npz", features=features["video"])
                np.savez(npz_dir / "audio" / f"{vid}.npz", features=features["audio"])
                np.savez(npz_dir / "text" / f"qid{index}.npz", last_hidden_state=features["text"][0])
        output.write_summaries()
    finally:
        output.close()
    annotation_file = write_jsonl_atomic(root / "annotations.jsonl", annotations)
    return shard_dir, npz_dir, annotation_file


class NpzPerVideo(Dataset):
    """The moment_detr layout: one npz per video per stream, one per query for text."""

    def __init__(self, root: Path, queries: list[QVHighlightsQuery]):
        self.root, self.queries = root, queries

    def __len__(self) -> int:
        return len(self.queries)

    def _load(self, path: Path, name: str) -> np.ndarray:
        with np.load(path, allow_pickle=False) as archive:
            return archive[name]

    def __getitem__(self, index: int) -> dict:
        query = self.queries[index]
        video = self._load(self.root / "video" / f"{query.vid}.npz", "features")
        audio = self._load(self.root / "audio" / f"{query.vid}.npz", "features")
        text = self._load(self.root / "text" / f"qid{query.qid}.npz", "last_hidden_state")
        def times(count: int) -> np.ndarray:  # the layout stores no timestamps: uniform over the duration
            return np.linspace(0, query.duration, count, endpoint=False, dtype=np.float32)
        return {"key": query.vid, "sample_id": str(query.qid), "duration": query.duration, "query": query,
                "streams": {"text": text, "video": video, "audio": audio},
                "timestamps": {"text": np.zeros(len(text), np.float32), "video": times(len(video)), "audio": times(len(audio))}}


def measure(batches) -> tuple[float, int]:
    started, items = time.perf_counter(), 0
    for batch in batches:
        items += len(batch["sample_ids"])
    return items / (time.perf_counter() - started), items


def trainer_samples_per_second(batches: list[dict]) -> float:
    """Samples/s the default QVHighlights model consumes in training steps on ``batches`` (the first warms up)."""
    config = load_config(DEFAULT_CONFIG)  # run.amp auto: fp32 on the CPU, as the trainer runs there
    # The trainer takes all cores of a one-process run (lamflow.train.trainer).
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(config.run.seed)
    widths = {name: int(batches[0]["streams"][name].shape[-1]) for name in config.data.loader.streams}
    model = build_model(config, widths).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    cpu = torch.device("cpu")
    train_step_seconds(model, optimizer, batches[0], config, cpu)
    seconds = sum(train_step_seconds(model, optimizer, batch, config, cpu) for batch in batches[1:])
    return sum(len(batch["sample_ids"]) for batch in batches[1:]) / seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        started = time.perf_counter()
        shard_dir, npz_dir, annotations = write_data(Path(scratch), args)
        write_s = time.perf_counter() - started
        task = QVHighlightsTask(annotations)

        config = LoaderConfig(streams=STREAMS, batch_size=args.batch_size, num_workers=args.workers)
        shard_rate, shard_items = measure(StreamingLoader(str(shard_dir), task, config, mode="train"))

        def collate(items: list[dict]) -> dict:
            return {**collate_streams(items, STREAMS), **task.collate(items)}

        npz_loader = DataLoader(NpzPerVideo(npz_dir, task.queries), batch_size=args.batch_size, shuffle=True,
                                num_workers=args.workers, collate_fn=collate)
        npz_rate, npz_items = measure(npz_loader)
        shard_bytes = sum(p.stat().st_size for p in (shard_dir / "shards").iterdir())

        # Real batches of the same shards, read before the clock starts: the steps time the model alone.
        step_loader = StreamingLoader(str(shard_dir), task, LoaderConfig(streams=STREAMS, batch_size=args.batch_size), mode="train")
        epochs = itertools.repeat(step_loader)  # each pass: the next epoch
        batches = list(itertools.islice(itertools.chain.from_iterable(epochs), 1 + args.train_steps))
        trainer_rate = trainer_samples_per_second(batches)

    result = {
        "videos": args.videos, "workers": args.workers, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "shapes": {"video": [args.video_tokens, 512], "audio": [args.audio_tokens, 64], "text": [1, args.text_tokens, 512]},
        "shard_megabytes": round(shard_bytes / 2**20, 1), "write_seconds": round(write_s, 1),
        "shards_samples_per_s": round(shard_rate, 1), "shards_items": shard_items,
        "npz_samples_per_s": round(npz_rate, 1), "npz_items": npz_items,
        "shards_vs_npz": round(shard_rate / npz_rate, 2) if npz_rate else math.nan,
        "trainer_threads": torch.get_num_threads(), "trainer_steps": args.train_steps,
        "trainer_samples_per_s": round(trainer_rate, 2),
        "shards_vs_trainer": round(shard_rate / trainer_rate, 1),  # target >= 5
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}: {value}")
        print("target: shards_vs_trainer >= 5 (the loader keeps the default model's training fed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

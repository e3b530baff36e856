"""Contract-format shards with a learnable toy signal, written with webdataset's TarWriter.

Each video holds one query whose ground-truth window is marked in the video features (frames inside
the window carry one fixed pattern, frames outside another, plus noise), so a model that learns anything
lowers its loss and finds the window. Real extraction (lamflow.pipelines) produces the same layout.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

VIDEO_DIM, AUDIO_DIM, TEXT_DIM = 16, 8, 12
VIDEO_FPS, AUDIO_HOP = 1.0, 0.5


@dataclass
class ToyQVHighlights:
    shards: Path  # extraction-style DIR: shards/, sizes.json, manifest.jsonl
    train_annotations: Path
    val_annotations: Path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_toy_qvhighlights(
    root: Path, videos: int = 8, val_videos: int = 2, duration: float = 20.0, per_shard: int = 3, seed: int = 0
) -> ToyQVHighlights:
    """``videos`` toy videos in shards under ``root``; the last ``val_videos`` are annotated as val."""
    rng = np.random.default_rng(seed)
    inside, outside = rng.normal(size=VIDEO_DIM), rng.normal(size=VIDEO_DIM)
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True)
    annotations: list[dict] = []
    sizes: dict[str, int] = {}
    manifest: list[dict] = []
    for shard_index, first in enumerate(range(0, videos, per_shard)):
        name = f"shard-{shard_index:06d}.tar"
        with wds.TarWriter(str(shard_dir / name)) as sink:
            for index in range(first, min(first + per_shard, videos)):
                key, qid = f"vid{index:03d}", 1000 + index
                start = 2.0 * rng.integers(0, int(duration / 2) - 4)
                end = start + 2.0 * rng.integers(2, 4)
                video_ts = (np.arange(int(duration * VIDEO_FPS)) + 0.5) / VIDEO_FPS
                in_window = ((video_ts >= start) & (video_ts <= end))[:, None]
                video = np.where(in_window, inside, outside) + 0.3 * rng.normal(size=(len(video_ts), VIDEO_DIM))
                audio_ts = np.arange(int(duration / AUDIO_HOP)) * AUDIO_HOP
                audio = rng.normal(size=(len(audio_ts), AUDIO_DIM))
                text = np.zeros((1, 4, TEXT_DIM))
                text[0, :3] = rng.normal(size=(3, TEXT_DIM))
                query = f"toy query {index}"
                sink.write({
                    "__key__": key,
                    "video.npy": _npy(video.astype(np.float16)),
                    "video_ts.npy": _npy(video_ts.astype(np.float32)),
                    "audio.npy": _npy(audio.astype(np.float32)),
                    "audio_ts.npy": _npy(audio_ts.astype(np.float32)),
                    "text.npy": _npy(text.astype(np.float32)),
                    "text_pooled.npy": _npy(text[:, 0].astype(np.float32)),
                    "meta.json": json.dumps({
                        "key": key, "name": key, "source": f"{key}.mp4", "duration": duration,
                        "streams": {}, "provenance": {}, "notes": ["toy shard written by tests/shard_factory.py"],
                        "texts": [{"id": str(qid), "text": query, "tokens": 3}],
                    }).encode(),
                })
                clips = list(range(int(start // 2), int(end // 2)))
                annotations.append({
                    "qid": qid, "query": query, "duration": duration, "vid": key,
                    "relevant_windows": [[start, end]], "relevant_clip_ids": clips,
                    "saliency_scores": [[3, 4, 2] for _ in clips],
                })
                manifest.append({"key": key, "source": f"{key}.mp4", "status": "ok", "error": None, "shard": name})
        sizes[name] = min(first + per_shard, videos) - first
    (root / "sizes.json").write_text(json.dumps(sizes))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    train_path, val_path = root / "train.jsonl", root / "val.jsonl"
    train_path.write_text("".join(json.dumps(a) + "\n" for a in annotations[: videos - val_videos]))
    val_path.write_text("".join(json.dumps(a) + "\n" for a in annotations[videos - val_videos :]))
    return ToyQVHighlights(root, train_path, val_path)

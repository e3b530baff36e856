"""Small real WebDataset shards in the shard contract (docs/FORMATS.md), written with webdataset.TarWriter.

The extraction pipeline writes the real thing; these tests build the same layout by hand so the datasets side
is specified against the contract itself: DIR/shards/shard-%06d.tar, DIR/sizes.json, DIR/manifest.jsonl.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import webdataset as wds

D_VIDEO, D_AUDIO, D_TEXT = 8, 4, 6
VIDEO_STEP, AUDIO_STEP = 0.5, 0.1  # seconds between tokens: the streams run at different rates


@dataclass
class Video:
    name: str  # original source name, may contain dots (QVHighlights vid)
    duration: float = 4.0
    audio: bool = True
    texts: Sequence[tuple[str, str, int]] = ()  # (id, text, token count)
    extra: dict = field(default_factory=dict)  # raw members overriding/adding fields, e.g. garbage bytes

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.name)


def contract_sample(video: Video) -> dict:
    seed = sum(map(ord, video.name))
    rng = np.random.default_rng(seed)
    video_ts = np.arange(0, video.duration, VIDEO_STEP, dtype=np.float32)
    audio_ts = np.arange(0, video.duration, AUDIO_STEP, dtype=np.float32) if video.audio else np.zeros(0, np.float32)
    sample = {
        "__key__": video.key,
        "video.npy": rng.standard_normal((len(video_ts), D_VIDEO)).astype(np.float16),
        "video_ts.npy": video_ts,
        "audio.npy": rng.standard_normal((len(audio_ts), D_AUDIO)).astype(np.float32),
        "audio_ts.npy": audio_ts,
    }
    meta = {
        "key": video.key,
        "original_name": video.name,  # as the extraction pipeline records it
        "source": f"/videos/{video.name}.mp4",
        "duration": video.duration,
        "streams": {"video": {"fps": 1 / VIDEO_STEP}, "audio": {"hop": AUDIO_STEP}},
        "provenance": {"video": {"model": "test"}, "audio": {"model": "log-mel"}},
        "notes": [] if video.audio else ["no audio track"],
        "lamflow_version": "test",
    }
    if video.texts:
        longest = max(tokens for _, _, tokens in video.texts)
        text = np.zeros((len(video.texts), longest, D_TEXT), dtype=np.float32)
        for row, (_, _, tokens) in enumerate(video.texts):
            text[row, :tokens] = rng.standard_normal((tokens, D_TEXT))
        sample["text.npy"] = text
        sample["text_pooled.npy"] = text.mean(axis=1)
        meta["texts"] = [{"id": tid, "text": words, "tokens": tokens} for tid, words, tokens in video.texts]
    sample["meta.json"] = meta
    sample.update(video.extra)
    return sample


def write_extraction_dir(root: Path, shards: Sequence[Sequence[Video]]) -> Path:
    """Write one tar per inner list plus sizes.json and manifest.jsonl; returns ``root``."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    sizes, manifest = {}, []
    for number, videos in enumerate(shards):
        name = f"shard-{number:06d}.tar"
        with wds.TarWriter(str(root / "shards" / name)) as sink:
            for video in videos:
                sink.write(contract_sample(video))
                manifest.append({"key": video.key, "source": f"/videos/{video.name}.mp4", "status": "ok",
                                 "error": None, "shard": name, "counts": {}, "duration": video.duration,
                                 "original_name": video.name})
        sizes[name] = len(videos)
    (root / "sizes.json").write_text(json.dumps(sizes))
    (root / "manifest.jsonl").write_text("".join(json.dumps(record) + "\n" for record in manifest))
    return root


def grid(num_shards: int, per_shard: int, **video_args) -> list[list[Video]]:
    """num_shards x per_shard videos named v{shard}.{index} (dotted names, like QVHighlights vids)."""
    return [[Video(f"v{s}.{i}", **video_args) for i in range(per_shard)] for s in range(num_shards)]

"""Small real shard sets in the shard contract (lamflow.contract), written by the pipeline's own writer.

Samples are made here (random features, or features carrying a learnable signal for the trainer tests) and
written through ``lamflow.pipelines.manifest.OutputDir``: shards, manifest.jsonl, sizes.json, stats.json and the
sample index are exactly what ``lamflow extract`` writes. :func:`damage_members` then breaks chosen members on purpose,
for the tests of what the loader does with damaged data.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lamflow.contract import Record, safe_key, sample_dims
from lamflow.fileio import write_jsonl_atomic
from lamflow.pipelines.manifest import OutputDir

D_VIDEO, D_AUDIO, D_TEXT = 8, 4, 6
VIDEO_STEP, AUDIO_STEP = 0.5, 0.1  # seconds between tokens: the streams run at different rates


@dataclass
class Video:
    name: str  # original source name, may contain dots (QVHighlights vid)
    duration: float = 4.0
    audio: bool = True
    texts: Sequence[tuple[str, str, int]] = ()  # (id, text, token count)
    video_step: float = VIDEO_STEP
    audio_step: float = AUDIO_STEP
    # Raw members overriding/adding fields: garbage bytes, or arrays carrying a signal instead of random ones.
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return safe_key(self.name)


def contract_sample(video: Video) -> dict:
    seed = sum(map(ord, video.name))
    rng = np.random.default_rng(seed)
    video_ts = np.arange(0, video.duration, video.video_step, dtype=np.float32)
    audio_ts = np.arange(0, video.duration, video.audio_step, dtype=np.float32) if video.audio else np.zeros(0, np.float32)
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
        "streams": {"video": {"fps": 1 / video.video_step}, "audio": {"hop": video.audio_step}},
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
    """Write one shard per inner list, with the records the pipeline keeps; returns ``root``."""
    output = OutputDir(root, {"kind": "test", "settings": {}, "texts": None})
    try:
        for videos in shards:
            with output.shard_sink(max(1, len(videos)), 1 << 40) as sink:
                for video in videos:
                    sample = contract_sample(video)
                    sink.write(sample, Record(video.key, sample["meta.json"]["source"], "ok", dims=sample_dims(sample),
                                              duration=video.duration, original_name=video.name))
        output.compact()
        output.write_summaries()
    finally:
        output.close()
    return root


def damage_members(tar_path: Path, members: Mapping[str, bytes]) -> None:
    """Rewrite ``tar_path`` with the bytes of some members replaced, or members added (after the other
    members of their sample): a writer bug or bit rot that the loader must survive."""
    with tarfile.open(tar_path) as tar:
        entries = [(info, tar.extractfile(info).read()) for info in tar if info.isreg()]
    pending = dict(members)
    rewritten = []
    for index, (info, data) in enumerate(entries):
        rewritten.append((info.name, pending.pop(info.name, data)))
        key = info.name.split(".", 1)[0]
        next_key = entries[index + 1][0].name.split(".", 1)[0] if index + 1 < len(entries) else None
        if next_key != key:  # last member of this sample: add the new members that belong to it
            rewritten += [(name, pending.pop(name)) for name in list(pending) if name.split(".", 1)[0] == key]
    assert not pending, f"no sample for members {sorted(pending)}"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in rewritten:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def grid(num_shards: int, per_shard: int, **video_args) -> list[list[Video]]:
    """num_shards x per_shard videos named v{shard}.{index} (dotted names, like QVHighlights vids)."""
    return [[Video(f"v{s}.{i}", **video_args) for i in range(per_shard)] for s in range(num_shards)]


# The learnable toy: wider features and fewer tokens than the defaults above (trainer tests run real steps).
TOY_VIDEO_DIM, TOY_AUDIO_DIM, TOY_TEXT_DIM = 16, 8, 12
TOY_VIDEO_STEP, TOY_AUDIO_STEP = 1.0, 0.5


@dataclass
class ToyQVHighlights:
    shards: Path  # extraction-style DIR: shards/, sizes.json, manifest.jsonl
    train_annotations: Path
    val_annotations: Path


def write_toy_qvhighlights(
    root: Path, videos: int = 8, val_videos: int = 2, duration: float = 20.0, per_shard: int = 3, seed: int = 0
) -> ToyQVHighlights:
    """``videos`` toy videos with one query each in shards under ``root``; the last ``val_videos`` are annotated as val.

    Each query's ground-truth window is marked in the video features (frames inside the window carry one fixed
    pattern, frames outside another, plus noise), so a model that learns anything lowers its loss and finds it.
    """
    rng = np.random.default_rng(seed)
    inside, outside = rng.normal(size=TOY_VIDEO_DIM), rng.normal(size=TOY_VIDEO_DIM)
    toys: list[Video] = []
    annotations: list[dict] = []
    for index in range(videos):
        key, qid, query = f"vid{index:03d}", 1000 + index, f"toy query {index}"
        start = 2.0 * rng.integers(0, int(duration / 2) - 4)
        end = start + 2.0 * rng.integers(2, 4)
        video_ts = (np.arange(int(duration / TOY_VIDEO_STEP)) + 0.5) * TOY_VIDEO_STEP  # frame centres
        in_window = ((video_ts >= start) & (video_ts <= end))[:, None]
        video = np.where(in_window, inside, outside) + 0.3 * rng.normal(size=(len(video_ts), TOY_VIDEO_DIM))
        audio_ts = np.arange(int(duration / TOY_AUDIO_STEP)) * TOY_AUDIO_STEP
        audio = rng.normal(size=(len(audio_ts), TOY_AUDIO_DIM))
        text = np.zeros((1, 4, TOY_TEXT_DIM))  # 3 query tokens, zero-padded like a batch of texts
        text[0, :3] = rng.normal(size=(3, TOY_TEXT_DIM))
        toys.append(Video(key, duration, texts=[(str(qid), query, 3)], video_step=TOY_VIDEO_STEP,
                          audio_step=TOY_AUDIO_STEP, extra={
                              "video.npy": video.astype(np.float16),
                              "video_ts.npy": video_ts.astype(np.float32),
                              "audio.npy": audio.astype(np.float32),
                              "audio_ts.npy": audio_ts.astype(np.float32),
                              "text.npy": text.astype(np.float32),
                              "text_pooled.npy": text[:, 0].astype(np.float32),
                          }))
        clips = list(range(int(start // 2), int(end // 2)))
        annotations.append({
            "qid": qid, "query": query, "duration": duration, "vid": key,
            "relevant_windows": [[start, end]], "relevant_clip_ids": clips,
            "saliency_scores": [[3, 4, 2] for _ in clips],
        })
    write_extraction_dir(root, [toys[first:first + per_shard] for first in range(0, videos, per_shard)])
    train_path, val_path = root / "train.jsonl", root / "val.jsonl"
    write_jsonl_atomic(train_path, annotations[: videos - val_videos])
    write_jsonl_atomic(val_path, annotations[videos - val_videos :])
    return ToyQVHighlights(root, train_path, val_path)

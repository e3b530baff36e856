"""The demo corpus on disk: short generated videos whose moments and captions need both the picture and the sound.

``build_corpus`` renders every video of the schedule (``lamflow.demo.schedule``) with ffmpeg
(``lamflow.demo.render``) in parallel processes, and writes the QVHighlights annotations, the query texts,
the captions (``lamflow.demo.captions``) and ``corpus.json`` (``lamflow.demo.annotations``) beside them, each
under the name in ``FILES``. Re-running reuses every finished video.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lamflow.demo.annotations import VIDEOS_DIR, annotation_jsonl, corpus_document, texts_jsonl, video_file
from lamflow.demo.captions import captions_jsonl
from lamflow.demo.render import render_video
from lamflow.demo.schedule import CorpusConfig, plan_corpus
from lamflow.fileio import atomic_open

CORPUS_JSON = "corpus.json"
# The documents build_corpus writes, by the CorpusResult field that names them.
FILES = {"train_annotations": "train.jsonl", "val_annotations": "val.jsonl", "texts": "texts.jsonl",
         "train_captions": "train_captions.jsonl", "val_captions": "val_captions.jsonl"}


@dataclass(frozen=True)
class CorpusResult:
    out_dir: Path
    videos_dir: Path
    train_annotations: Path
    val_annotations: Path
    texts: Path
    train_captions: Path
    val_captions: Path
    corpus_json: Path
    videos_generated: int
    videos_reused: int
    seconds: float


def build_corpus(
    config: CorpusConfig,
    out_dir: str | Path,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> CorpusResult:
    """Write videos/, train.jsonl, val.jsonl, texts.jsonl, {train,val}_captions.jsonl and corpus.json under ``out_dir``.

    Re-running with the same settings reuses every finished video. ``corpus.json`` is written before
    any video and records each video's render hash, so a video from other settings (or a run that was
    interrupted while making them) is never mistaken for a finished one.
    """
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg was not found on PATH: install it (e.g. `apt-get install ffmpeg`)")
    started = time.monotonic()
    report = progress or (lambda message: None)
    out_dir = Path(out_dir)
    videos_dir = out_dir / VIDEOS_DIR
    videos_dir.mkdir(parents=True, exist_ok=True)
    corpus_json = out_dir / CORPUS_JSON

    plans = plan_corpus(config)
    document = corpus_document(config, plans)
    previous = _read_previous_render_hashes(corpus_json)
    current = {v["vid"]: v["render_sha256"] for v in document["videos"]}
    for vid, render_hash in previous.items():
        if current.get(vid) != render_hash:
            (out_dir / video_file(vid)).unlink(missing_ok=True)
    _write_if_changed(corpus_json, json.dumps(document, indent=1) + "\n")

    todo = [p for p in plans if not (out_dir / video_file(p.vid)).exists() or p.vid not in previous]
    reused = len(plans) - len(todo)
    workers = max(1, min(jobs or len(os.sched_getaffinity(0)), len(todo) or 1))
    report(f"demo corpus: {len(plans)} videos in {videos_dir}: {reused} reused, {len(todo)} to render"
           + (f" with {workers} parallel ffmpeg processes" if todo else ""))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(render_video, config, p, out_dir / video_file(p.vid)): p.vid for p in todo}
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            report(f"  rendered {futures[future]} ({done}/{len(todo)})")

    paths = {field: out_dir / name for field, name in FILES.items()}
    documents = {"train_annotations": annotation_jsonl(plans, "train"), "val_annotations": annotation_jsonl(plans, "val"),
                 "texts": texts_jsonl(plans), "train_captions": captions_jsonl(plans, "train"),
                 "val_captions": captions_jsonl(plans, "val")}
    for field, text in documents.items():
        _write_if_changed(paths[field], text)
    seconds = time.monotonic() - started
    queries = sum(len(p.queries) for p in plans)
    report(f"demo corpus: {len(plans)} videos, {queries} queries written to {out_dir} in {seconds:.1f} s")
    return CorpusResult(out_dir, videos_dir, **paths, corpus_json=corpus_json, videos_generated=len(todo),
                        videos_reused=reused, seconds=seconds)


def _read_previous_render_hashes(corpus_json: Path) -> dict[str, str]:
    if not corpus_json.exists():
        return {}
    try:
        document = json.loads(corpus_json.read_text(encoding="utf-8"))
        return {v["vid"]: v["render_sha256"] for v in document["videos"]}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{corpus_json} exists but is not a lamflow demo corpus description ({error}); "
            "delete it or choose another --out directory"
        ) from error


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so stages downstream can tell nothing changed.
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_open(path) as handle:
        handle.write(text)

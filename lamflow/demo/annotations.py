"""The demo corpus's documents: QVHighlights annotation lines, the query texts to extract and ``corpus.json``,
the full schedule (what was drawn and played, and when)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS
from lamflow.demo.captions import CROSSED, THEN
from lamflow.demo.render import ffmpeg_command
from lamflow.demo.schedule import (
    BEEP_AMPLITUDE,
    BEEP_RAMP_SECONDS,
    BEEP_SECONDS,
    COLOURS,
    NOISE_AMPLITUDE,
    QUERY_TEMPLATE,
    SHAPES,
    TONES,
    CorpusConfig,
    Query,
    VideoPlan,
)

CORPUS_FORMAT = "lamflow-demo-corpus/2"  # 2: one caption per video, naming two crossed events in order
VIDEOS_DIR = "videos"


def video_file(vid: str) -> str:
    """Where video ``vid`` lives, relative to the corpus folder."""
    return f"{VIDEOS_DIR}/{vid}.mp4"


def iter_queries(plans: list[VideoPlan]) -> Iterator[tuple[VideoPlan, Query]]:
    """(video, query) pairs in qid order."""
    for plan in plans:
        for query in plan.queries:
            yield plan, query


def annotation_record(plan: VideoPlan, query: Query) -> dict:
    """One QVHighlights annotation line (key order as in the official release)."""
    segment = plan.segments[query.segment]
    return {
        "qid": query.qid,
        "query": query.text,
        "duration": plan.duration,
        "vid": plan.vid,
        "relevant_clip_ids": list(range(segment.start // CLIP_SECONDS, segment.end // CLIP_SECONDS)),
        "saliency_scores": [list(s) for s in query.saliency_scores],
        "relevant_windows": [[segment.start, segment.end]],
    }


def annotation_jsonl(plans: list[VideoPlan], split: str) -> str:
    return "".join(json.dumps(annotation_record(p, q)) + "\n" for p, q in iter_queries(plans) if p.split == split)


def texts_jsonl(plans: list[VideoPlan]) -> str:
    """The input of ``lamflow extract --texts``: every query text keyed by its video."""
    return "".join(json.dumps({"vid": p.vid, "id": str(q.qid), "text": q.text}) + "\n" for p, q in iter_queries(plans))


def corpus_document(config: CorpusConfig, plans: list[VideoPlan]) -> dict:
    """The full event schedule (``corpus.json``): what was drawn and played, and when."""
    return {
        "format": CORPUS_FORMAT,
        "config": asdict(config),
        "clip_seconds": CLIP_SECONDS,
        "query_template": QUERY_TEMPLATE,
        "caption_templates": [f"{CROSSED}, {then}" for then in THEN.values()],
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "shapes": SHAPES,
        "tones_hz": TONES,
        "beep": {"seconds": list(BEEP_SECONDS), "amplitude": BEEP_AMPLITUDE, "ramp_seconds": BEEP_RAMP_SECONDS},
        "noise_amplitude": NOISE_AMPLITUDE,
        "videos": [_video_document(config, p) for p in plans],
    }


def _video_document(config: CorpusConfig, plan: VideoPlan) -> dict:
    segments = []
    for index, s in enumerate(plan.segments):
        shape = s.shape and {"colour": s.shape.colour, "shape": s.shape.shape, "box": list(s.shape.box),
                             "thickness": s.shape.thickness}
        segments.append({"index": index, "start": s.start, "end": s.end, "shape": shape, "tone": s.tone,
                         "tone_hz": TONES[s.tone] if s.tone else None, "beeps": [list(b) for b in s.beeps]})
    queries = []
    for q in plan.queries:
        target = plan.segments[q.segment]
        queries.append({"qid": q.qid, "query": q.text, "colour": target.shape.colour, "shape": target.shape.shape,
                        "tone": target.tone, "segment": q.segment, "window": [target.start, target.end],
                        "visual_only_distractors": list(q.visual_only_distractors),
                        "audio_only_distractors": list(q.audio_only_distractors)})
    return {
        "vid": plan.vid,
        "split": plan.split,
        "file": video_file(plan.vid),
        "duration": plan.duration,
        "background_rgb": list(plan.background),
        "noise_seed": plan.noise_seed,
        "render_sha256": hashlib.sha256(json.dumps(ffmpeg_command(config, plan, Path("OUT"))).encode()).hexdigest(),
        "segments": segments,
        "queries": queries,
    }

"""Trivial predictions that any trained model must beat (the demo's sanity floor): QVHighlights windows and
captions."""
from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Iterable

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS


def _clip_count(duration: float) -> int:
    return math.ceil(duration / CLIP_SECONDS)


def whole_video(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One window covering the whole video; every clip equally salient."""
    return [
        {
            "qid": a["qid"], "query": a["query"], "vid": a["vid"],
            "pred_relevant_windows": [[0.0, float(a["duration"]), 1.0]],
            "pred_saliency_scores": [1.0] * _clip_count(a["duration"]),
        }
        for a in annotations
    ]


def random_windows(annotations: list[dict[str, Any]], seed: int = 0, windows: int = 10) -> list[dict[str, Any]]:
    """``windows`` random windows on the 2-s clip grid with random scores; random clip saliency."""
    rng = random.Random(seed)
    rows = []
    for a in annotations:
        clips = _clip_count(a["duration"])
        proposals = []
        for _ in range(windows):
            start = rng.randrange(clips)
            end = rng.randrange(start, clips) + 1
            proposals.append([start * CLIP_SECONDS, min(end * CLIP_SECONDS, float(a["duration"])), rng.random()])
        proposals.sort(key=lambda w: -w[2])
        rows.append({
            "qid": a["qid"], "query": a["query"], "vid": a["vid"],
            "pred_relevant_windows": proposals,
            "pred_saliency_scores": [rng.random() for _ in range(clips)],
        })
    return rows


BASELINES = {"whole-video": whole_video, "random": random_windows}


def most_frequent_caption(train_captions: list[dict[str, Any]], vids: Iterable[str]) -> list[dict[str, Any]]:
    """The most frequent caption of the training ``{"vid", "caption"}`` lines for every video of ``vids``
    (ties: the caption seen first)."""
    caption = Counter(line["caption"] for line in train_captions).most_common(1)[0][0]
    return [{"vid": vid, "caption": caption} for vid in dict.fromkeys(vids)]


CAPTION_BASELINES = {"most-frequent-caption": most_frequent_caption}

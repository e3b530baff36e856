"""QVHighlights moment retrieval + highlight detection over lamflow shards.

Annotations (jsonl, schema in docs/FORMATS.md) are validated on load; a malformed line is an error naming
``file:line``, the field and the fix. A shard sample (one video) joins its annotations by the video name
(``vid``; rules in ``lamflow.contract.join_names``) and expands into one item per query. The query's text tokens come
from the shard's text arrays (``meta.json["texts"][i]["id"] == str(qid)``), or, for shards extracted without
texts, from the ``text_encoder`` given at construction: ``text_encoder(query) -> L_t x D_t`` array/tensor.

Labelled files (``highlight_{train,val}_release.jsonl`` and the public test answers
``highlight_test_with_gt.jsonl``, same schema) and the unlabelled ``highlight_test_release.jsonl`` (query
only) are read alike. Targets per item: ``windows`` (n x 2 seconds; empty on unlabelled lines) and
``saliency``: the mean of the three annotators' scores for every 2-second clip, 0 for clips outside
``relevant_clip_ids``; the clip count is ``ceil(duration / 2)`` with the annotation's duration, as the
official evaluator counts clips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS, MAX_SALIENCY, NUM_ANNOTATORS
from lamflow.errors import DataFileError
from lamflow.fileio import iter_jsonl

LABEL_FIELDS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")


@dataclass(frozen=True)
class QVHighlightsQuery:
    qid: int
    query: str
    vid: str
    duration: float
    windows: tuple[tuple[float, float], ...]  # empty on unlabelled lines (highlight_test_release.jsonl)
    clip_ids: tuple[int, ...]
    scores: tuple[tuple[int, ...], ...]  # per clip id, one score per annotator

    @property
    def num_clips(self) -> int:
        return math.ceil(self.duration / CLIP_SECONDS)

    def saliency(self) -> np.ndarray:
        """Mean annotator score per 2-s clip (0 outside relevant_clip_ids), length num_clips."""
        values = np.zeros(self.num_clips, dtype=np.float32)
        for clip, scores in zip(self.clip_ids, self.scores):
            values[clip] = sum(scores) / len(scores)
        return values


class AnnotationError(DataFileError):
    """A QVHighlights annotation line that breaks the schema (message: file:line, field, fix)."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


REQUIRED_FIELDS = (
    ("qid", _integer, "an int"),
    ("query", _text, "a non-empty string"),
    ("vid", _text, "a non-empty string ({youtube_id}_{start}_{end})"),
    ("duration", lambda value: _number(value) and value > 0, "a number of seconds > 0"),
)


def parse_query(record: Any, where: str) -> QVHighlightsQuery:
    """One annotation line -> QVHighlightsQuery; AnnotationError('file:line: field ...: fix') when malformed."""

    def fail(name: str, problem: str) -> AnnotationError:
        return AnnotationError(f"{where}: field '{name}' {problem}; fix this line of the annotation file")

    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
    for name, valid, expected in REQUIRED_FIELDS:
        if name not in record:
            raise fail(name, "is missing")
        if not valid(record[name]):
            raise fail(name, f"must be {expected}, got {record[name]!r}")
    duration = float(record["duration"])
    present = [name for name in LABEL_FIELDS if name in record]
    if present and len(present) != len(LABEL_FIELDS):
        missing = sorted(set(LABEL_FIELDS) - set(present))
        raise fail(missing[0], f"is missing while {present} are given (labelled lines need all of {list(LABEL_FIELDS)})")
    if not present:  # highlight_test_release.jsonl: the query only
        return QVHighlightsQuery(record["qid"], record["query"], record["vid"], duration, (), (), ())
    windows = record["relevant_windows"]
    if not isinstance(windows, list) or not windows or not all(
        isinstance(w, list) and len(w) == 2 and all(map(_number, w)) and 0 <= w[0] < w[1] <= duration for w in windows
    ):
        raise fail("relevant_windows", "must be a non-empty list of [start, end] seconds with "
                                       f"0 <= start < end <= duration ({duration:g}), got {windows!r}")
    clips, scores = record["relevant_clip_ids"], record["saliency_scores"]
    num_clips = math.ceil(duration / CLIP_SECONDS)
    if not isinstance(clips, list) or len(set(map(str, clips))) != len(clips) or not all(
        _integer(c) and 0 <= c < num_clips for c in clips
    ):
        raise fail("relevant_clip_ids", f"must list distinct 2-second clip indices in [0, {num_clips}), got {clips!r}")
    if not isinstance(scores, list) or len(scores) != len(clips) or not all(
        isinstance(s, list) and len(s) == NUM_ANNOTATORS and all(_integer(v) and 0 <= v <= MAX_SALIENCY for v in s)
        for s in scores
    ):
        raise fail("saliency_scores", f"must hold one [a1, a2, a3] list of ints 0..{MAX_SALIENCY} "
                                      f"per relevant clip id ({len(clips)} clips)")
    return QVHighlightsQuery(
        qid=record["qid"], query=record["query"], vid=record["vid"], duration=duration,
        windows=tuple((float(s), float(e)) for s, e in windows), clip_ids=tuple(clips),
        scores=tuple(tuple(s) for s in scores),
    )


def load_queries(path: str | Path) -> list[QVHighlightsQuery]:
    """All queries of a QVHighlights jsonl file, validated; qids must be unique."""
    queries, first_line = [], {}
    what = ("QVHighlights annotation file (highlight_{train,val,test}_release.jsonl or "
            "highlight_test_with_gt.jsonl)")
    for number, record in iter_jsonl(path, what):
        where = f"{path}:{number}"
        query = parse_query(record, where)
        if query.qid in first_line:
            raise AnnotationError(
                f"{where}: field 'qid' {query.qid} repeats line {first_line[query.qid]}; qids must be unique"
            )
        first_line[query.qid] = number
        queries.append(query)
    return queries


class QVHighlightsTask:
    """Task adapter: one item per (video, query); see the module docstring."""

    def __init__(self, annotations: str | Path, text_encoder: Callable[[str], Any] | None = None):
        self.annotations = Path(annotations)
        self.source = str(self.annotations)
        self.queries = load_queries(self.annotations)
        if not self.queries:
            raise AnnotationError(f"{self.annotations} holds no queries; expected one QVHighlights record per line")
        self.by_vid: dict[str, list[QVHighlightsQuery]] = {}
        for query in self.queries:
            self.by_vid.setdefault(query.vid, []).append(query)
        self.text_encoder = text_encoder
        self._encoded: dict[int, np.ndarray] = {}  # qid -> tokens, when encoding at load time

    def names(self) -> list[str]:
        return list(self.by_vid)

    def num_items(self, name: str) -> int:
        return len(self.by_vid.get(name, ()))

    def _text_tokens(self, sample: dict, query: QVHighlightsQuery) -> np.ndarray:
        qid = str(query.qid)
        if qid in sample["text_ids"]:
            row = sample["text_ids"].index(qid)
            return sample["text_tokens"][row, : sample["text_lengths"][row]]
        if self.text_encoder is None:
            raise AnnotationError(
                f"qid {query.qid} (vid {query.vid!r}): shard sample {sample['key']!r} has no text tokens for this "
                f"query; extract the shards with --texts {self.annotations} or pass "
                "QVHighlightsTask(..., text_encoder=...) to encode queries at load time"
            )
        if query.qid not in self._encoded:
            tokens = self.text_encoder(query.query)
            tokens = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
            if tokens.ndim != 2:
                raise ValueError(
                    f"text_encoder({query.query!r}) returned shape {tokens.shape}; expected L_t x D_t tokens"
                )
            self._encoded[query.qid] = tokens.astype(np.float32, copy=False)
        return self._encoded[query.qid]

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        for query in self.by_vid.get(name, ()):
            tokens = self._text_tokens(sample, query)
            yield {
                **sample,
                "sample_id": str(query.qid),
                "query": query,
                "streams": {**sample["streams"], "text": tokens},
                "timestamps": {**sample["timestamps"], "text": np.zeros(len(tokens), dtype=np.float32)},
            }

    def collate(self, items: list[dict]) -> dict:
        queries: list[QVHighlightsQuery] = [item["query"] for item in items]
        clips = max(query.num_clips for query in queries)
        saliency = torch.zeros(len(items), clips)
        saliency_padding = torch.ones(len(items), clips, dtype=torch.bool)
        for row, query in enumerate(queries):
            saliency[row, : query.num_clips] = torch.from_numpy(query.saliency())
            saliency_padding[row, : query.num_clips] = False
        return {
            "qids": [query.qid for query in queries],
            "queries": [query.query for query in queries],
            "windows": [torch.tensor(query.windows, dtype=torch.float32).reshape(-1, 2) for query in queries],
            "saliency": saliency,
            "saliency_padding": saliency_padding,
        }

"""QVHighlights-style moment retrieval + highlight detection over lamflow shards (QVHighlights and MAD).

Annotations (jsonl, schema in docs/FORMATS.md, "QVHighlights annotations") are validated on load; a malformed line is an error naming
``file:line``, the field and the fix. A shard sample (one video) joins its annotations by the video name
(``vid``; rules in ``lamflow.contract.join_names``) and expands into one item per query.

Query tokens, first found wins: the shard's own text arrays (``meta.json["texts"][i]["id"] == str(qid)``,
shards extracted with ``--texts``); a :class:`~lamflow.datasets.texts.TextStore` (``text_store``: a text
shard set, e.g. ``lamflow import-h5 LANG.h5 --stream text``, which must hold every query's id, checked at
construction); the ``text_encoder`` given at construction (``text_encoder(query) -> L_t x D_t``). A query
with none of these is an error saying which to provide.

Labelled files (``highlight_{train,val}_release.jsonl`` and the public test answers
``highlight_test_with_gt.jsonl``, same schema) and the unlabelled ``highlight_test_release.jsonl`` (query
only) are read alike. Targets per item: ``windows`` (n x 2 seconds; empty on unlabelled lines) and
``saliency``: the mean of the three annotators' scores for every 2-second clip, 0 for clips outside
``relevant_clip_ids``; the clip count is ``ceil(duration / 2)`` with the annotation's duration, as the
official evaluator counts clips. Queries without saliency labels (unlabelled lines, MAD) have their
saliency masked (``saliency_padding`` True on every clip), so they never train saliency towards zero.

MAD (``MAD_{train,val,test}.json``): one JSON object ``{sentence id: {movie, sentence, timestamps:
[st, ed], movie_duration}}`` (MAD's own files also carry ``ext_timestamps``, which its baselines ground
against and which wins when present). Read as queries with qid = the sentence id (an integer string, as
MAD's are; the id itself keys the query's tokens), vid = movie, duration = movie_duration, one relevant
window (clamped to [0, movie_duration] as MAD's loaders do) and no saliency.

Long videos (``window_seconds`` > 0): a MAD movie is hours of 5 fps frames, tens of thousands of tokens,
far beyond the encoder. Each query then sees a window of ``window_seconds`` of its video that holds its
ground-truth span: the video/audio tokens inside it, with timestamps, duration and windows rebased to the
window's start (``window_start`` on the item, ``window_starts`` in the batch, so predictions map back to
video time). Placement ``random``: uniform over the positions that hold the span, drawn from (seed, epoch,
qid) (training; the loader calls :meth:`QVHighlightsTask.start_epoch`); ``fixed``: one position per query
drawn from the qid alone (evaluation: every evaluation sees the same windows). A span longer than the
window is cut to it (the window is centred on the span), a video no longer than the window is not cut, and
a cut query trains no saliency (its clip labels lie on the video's 2-second grid, not the window's).
This is honest training, not MAD's benchmark: evaluating inside a window known to hold the answer is far
easier than MAD's protocol, which slides windows over the whole movie (VLG-Net: 128 frames at 5 fps,
stride 64), scores every proposal of every window, merges them with NMS over the movie and reports
R@{1,5,10,50,100} at IoU {0.1,0.3,0.5} per query; that needs a sliding-window predictor over whole movies
and is not built here.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS, MAX_SALIENCY, NUM_ANNOTATORS
from lamflow.datasets.task import Task
from lamflow.datasets.texts import TextStore
from lamflow.datasets.windows import cut_window
from lamflow.errors import DataFileError
from lamflow.fileio import iter_jsonl, read_json

LABEL_FIELDS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")
# MAD's window fields, first present wins: its baselines (VLG-Net, zero-shot CLIP) ground against ext_timestamps.
MAD_WINDOW_FIELDS = ("ext_timestamps", "timestamps")
PLACEMENTS = ("random", "fixed")
_FIXED_PLACEMENT = 2**31 - 1  # seeds "fixed" window positions apart from any run seed


@dataclass(frozen=True)
class QVHighlightsQuery:
    qid: int
    query: str
    vid: str
    duration: float
    windows: tuple[tuple[float, float], ...]  # empty on unlabelled lines (highlight_test_release.jsonl)
    clip_ids: tuple[int, ...]
    scores: tuple[tuple[int, ...], ...]  # per clip id, one score per annotator
    text_id: str = ""  # the id the query's tokens are stored under ("" = str(qid)); MAD: the sentence id as written
    saliency_labelled: bool = True  # False: no saliency labels (unlabelled lines, MAD), masked in the loss

    @property
    def token_id(self) -> str:
        return self.text_id or str(self.qid)

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
        return QVHighlightsQuery(record["qid"], record["query"], record["vid"], duration, (), (), (),
                                 saliency_labelled=False)
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


def parse_mad_query(sentence_id: str, record: Any, where: str) -> QVHighlightsQuery:
    """One MAD annotation ``{movie, sentence, timestamps | ext_timestamps, movie_duration}`` -> a query
    without saliency; AnnotationError naming the sentence id and field when malformed."""

    def fail(name: str, problem: str) -> AnnotationError:
        return AnnotationError(f"{where}: sentence {sentence_id!r}: field '{name}' {problem}; fix this entry of the "
                               "MAD annotation file")

    if not re.fullmatch(r"[0-9]+", sentence_id):
        raise AnnotationError(f"{where}: sentence id {sentence_id!r} is not an integer string; MAD ids are (e.g. "
                              "'1050') and become the query's qid")
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: sentence {sentence_id!r}: expected an object {{movie, sentence, timestamps, "
                              f"movie_duration}}, got {type(record).__name__}")
    for name, valid, expected in (("movie", _text, "a non-empty string (the movie id of the frames file)"),
                                  ("sentence", _text, "a non-empty string"),
                                  ("movie_duration", lambda v: _number(v) and v > 0, "a number of seconds > 0")):
        if name not in record:
            raise fail(name, "is missing")
        if not valid(record[name]):
            raise fail(name, f"must be {expected}, got {record[name]!r}")
    duration = float(record["movie_duration"])
    window_field = next((name for name in MAD_WINDOW_FIELDS if name in record), None)
    if window_field is None:
        raise fail(MAD_WINDOW_FIELDS[-1], f"is missing (give {' or '.join(MAD_WINDOW_FIELDS)}: [start, end] seconds)")
    window = record[window_field]
    if not (isinstance(window, list) and len(window) == 2 and all(map(_number, window))):
        raise fail(window_field, f"must be [start, end] seconds, got {window!r}")
    start, end = max(float(window[0]), 0.0), min(float(window[1]), duration)  # clamped as MAD's loaders do
    if not start < end:
        raise fail(window_field, f"must hold a span inside [0, movie_duration={duration:g}], got {window!r}")
    return QVHighlightsQuery(qid=int(sentence_id), query=record["sentence"], vid=record["movie"], duration=duration,
                             windows=((start, end),), clip_ids=(), scores=(), text_id=sentence_id,
                             saliency_labelled=False)


def _mad_annotations(path: Path) -> dict | None:
    """MAD's ``{sentence id: {movie, ...}}`` object of ``path``, or None when it is JSON lines (QVHighlights)."""
    try:
        document = read_json(path, "annotation file")
    except DataFileError:
        return None  # not one JSON document: JSON lines (iter_jsonl names a bad line)
    # One object: MAD's, unless it is the one line of a QVHighlights file (which has a qid).
    return document if isinstance(document, dict) and "qid" not in document else None


def is_mad_file(path: str | Path) -> bool:
    """Whether ``path`` holds MAD annotations (one JSON object keyed by sentence id)."""
    return _mad_annotations(Path(path)) is not None


def load_queries(path: str | Path) -> list[QVHighlightsQuery]:
    """All queries of a QVHighlights jsonl file or a MAD json file, validated; qids must be unique."""
    path = Path(path)
    mad = _mad_annotations(path)
    if mad is not None:
        queries = [parse_mad_query(str(sentence_id), record, str(path)) for sentence_id, record in mad.items()]
        first: dict[int, str] = {}
        for query in queries:
            if query.qid in first:
                raise AnnotationError(f"{path}: sentence ids {first[query.qid]!r} and {query.text_id!r} are the same "
                                      "number; qids must be unique")
            first[query.qid] = query.text_id
        return queries
    queries, first_line = [], {}
    what = ("QVHighlights annotation file (highlight_{train,val,test}_release.jsonl or "
            "highlight_test_with_gt.jsonl) or MAD annotation file (MAD_{train,val,test}.json)")
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


class QVHighlightsTask(Task):
    """Task adapter: one item per (video, query); see the module docstring."""

    prediction_field = "qid"  # predictions are QVHighlights lines {"qid", "pred_relevant_windows", ...}

    def __init__(self, annotations: str | Path, text_encoder: Callable[[str], Any] | None = None,
                 text_store: TextStore | None = None, window_seconds: float = 0.0, placement: str = "random"):
        self.annotations = Path(annotations)
        self.source = str(self.annotations)
        self.queries = load_queries(self.annotations)
        if not self.queries:
            raise AnnotationError(f"{self.annotations} holds no queries; expected one QVHighlights record per line "
                                  "or MAD's {sentence id: {...}} object")
        if not (window_seconds >= 0 and math.isfinite(window_seconds)):
            raise ValueError(f"window_seconds must be a finite number >= 0 (0 = whole videos), got {window_seconds!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.by_qid = {query.qid: query for query in self.queries}  # qids are unique (load_queries)
        self.by_vid: dict[str, list[QVHighlightsQuery]] = {}
        for query in self.queries:
            self.by_vid.setdefault(query.vid, []).append(query)
        self.text_encoder = text_encoder
        self.text_store = text_store
        if text_store is not None and text_encoder is None:
            text_store.require((query.token_id for query in self.queries), str(self.annotations))
        self.window_seconds, self.placement = float(window_seconds), placement
        self.seed = self.epoch = 0  # of "random" window positions; set by the loader for each epoch
        self._encoded: dict[int, np.ndarray] = {}  # qid -> tokens, when encoding at load time

    def names(self) -> list[str]:
        return list(self.by_vid)

    def num_items(self, name: str) -> int:
        return len(self.by_vid.get(name, ()))

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Draw this epoch's "random" window positions from (seed, epoch, qid): a resumed epoch cuts the same."""
        self.seed, self.epoch = seed, epoch

    def _text_tokens(self, sample: dict, query: QVHighlightsQuery) -> np.ndarray:
        text_id = query.token_id
        if text_id in sample["text_ids"]:
            row = sample["text_ids"].index(text_id)
            return sample["text_tokens"][row, : sample["text_lengths"][row]]
        if self.text_store is not None and text_id in self.text_store:
            return self.text_store.tokens(text_id)
        if self.text_encoder is None:
            raise AnnotationError(
                f"qid {query.qid} (vid {query.vid!r}): no text tokens for this query: shard sample {sample['key']!r} "
                f"holds none{' and the text store lacks its id' if self.text_store is not None else ''}; give them by "
                f"extracting the shards with --texts {self.annotations}, by a text shard set holding id {text_id!r} "
                "(data.train_texts / data.val_texts, made by `lamflow import-h5 LANG.h5 --stream text`), or by "
                "QVHighlightsTask(..., text_encoder=...)"
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

    def window_start(self, query: QVHighlightsQuery) -> float:
        """Where the query's window of ``window_seconds`` starts in its video (see the module docstring)."""
        width, duration = self.window_seconds, query.duration
        if query.windows:
            first, last = min(s for s, _ in query.windows), max(e for _, e in query.windows)
        else:  # an unlabelled query: any window
            first, last = duration, 0.0
        low, high = max(0.0, last - width), min(first, duration - width)
        if low > high:  # the span is longer than the window: centre the window on it
            return float(min(max(0.0, (first + last - width) / 2), duration - width))
        qid = query.qid % 2**63  # numpy seeds are non-negative
        parts = (self.seed, self.epoch, qid) if self.placement == "random" else (_FIXED_PLACEMENT, qid)
        return float(np.random.default_rng(parts).uniform(low, high)) if high > low else low

    def _cut(self, item: dict, query: QVHighlightsQuery) -> dict:
        """``item`` restricted to its query's window, times rebased to the window's start."""
        start, width = self.window_start(query), self.window_seconds
        cut = cut_window(item["streams"], item["timestamps"], start, start + width, include_end=False)
        windows = tuple((max(s - start, 0.0), min(e - start, width)) for s, e in query.windows
                        if e > start and s < start + width)
        view = dataclasses.replace(query, duration=width, windows=windows, clip_ids=(), scores=(),
                                   saliency_labelled=False)
        return {**item, "query": view, "duration": width, "window_start": start, "streams": cut.streams,
                "timestamps": cut.timestamps}

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        for query in self.by_vid.get(name, ()):
            tokens = self._text_tokens(sample, query)
            item = {
                **sample,
                "sample_id": str(query.qid),
                "query": query,
                "window_start": 0.0,
                "streams": {**sample["streams"], "text": tokens},
                "timestamps": {**sample["timestamps"], "text": np.zeros(len(tokens), dtype=np.float32)},
            }
            yield self._cut(item, query) if 0 < self.window_seconds < query.duration else item

    def collate(self, items: list[dict]) -> dict:
        # The queries as the model saw them: rebased to their window when cut.
        queries: list[QVHighlightsQuery] = [item["query"] for item in items]
        clips = max(query.num_clips for query in queries)
        saliency = torch.zeros(len(items), clips)
        saliency_padding = torch.ones(len(items), clips, dtype=torch.bool)
        for row, query in enumerate(queries):
            saliency[row, : query.num_clips] = torch.from_numpy(query.saliency())
            # Clips without a saliency label stay masked: past the video's end, or the whole query (MAD).
            saliency_padding[row, : query.num_clips] = not query.saliency_labelled
        return {
            "qids": [query.qid for query in queries],
            "queries": [query.query for query in queries],
            "windows": [torch.tensor(query.windows, dtype=torch.float32).reshape(-1, 2) for query in queries],
            "saliency": saliency,
            "saliency_padding": saliency_padding,
            # Where each item's view starts in its video and how long it is (the whole video unless cut);
            # float64 keeps the annotation's numbers exact (clip counts and official lines are computed from them).
            "window_starts": torch.tensor([float(item["window_start"]) for item in items], dtype=torch.float64),
            "query_durations": torch.tensor([query.duration for query in queries], dtype=torch.float64),
        }

"""The two files the QVHighlights evaluator scores (``qvhighlights_eval``), read as the official evaluator
reads them: what it scores is accepted (or counted as adjusted), what it crashes on is an error naming
``file:line`` and the fix.

Prediction files: every file the official evaluator scores is scored, with its numbers. Lines it
accepts although they break the documented format are counted in the output's ``adjusted_lines`` (see
``ADJUSTMENTS``): ``pred_saliency_scores`` shorter or longer than the video's clips (fitted to the GT's
``int(duration / 2)`` clips as ``compute_ap_from_tuple`` does: padded with 0 or cut), windows not sorted
by score, windows outside the video, a ``vid`` other than the GT's. ``strict=True`` refuses those lines
instead. Inputs the official evaluator crashes on (missing or unknown qids, missing fields, no window,
an empty or non-finite saliency list) are errors in both modes, and so are duplicate qids (which it
merges inconsistently: windows of both lines for mAP, the last line for R1 and HL). Predicted windows
that run past the end of the video are scored unclipped, as the official evaluator does (it never
clips; moment_detr clips windows at 150 s, not at each video's duration, when writing them).

Ground truth: any file with the val schema, e.g. ``highlight_val_release.jsonl`` or the public test
answers ``highlight_test_with_gt.jsonl``; the unlabelled ``highlight_test_release.jsonl`` is an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS, MAX_SALIENCY, NUM_ANNOTATORS
from lamflow.train.tasks.scoring import (
    EvaluationInputError,
    PredictionKeys,
    is_number,
    number_rows,
    one_prediction_per_key,
    required_field,
)

# Prediction lines the official evaluator scores although they break the documented format: kind -> what
# was accepted and how it is scored. Counted in the output's "adjusted_lines"; refused with strict=True.
ADJUSTMENTS: dict[str, str] = {
    "saliency_padded": "pred_saliency_scores shorter than int(duration / 2) (the GT's clips): padded with 0 for HL-mAP",
    "saliency_truncated": "pred_saliency_scores longer than ceil(duration / 2): cut to int(duration / 2) for HL-mAP",
    "windows_unsorted": "pred_relevant_windows not sorted by score: mAP ranks them by score, R1 takes the first",
    "windows_out_of_range": "a window with st > ed, st < 0 or st > duration: scored as written",
    "vid_mismatch": "a vid other than the ground truth's: ignored",
}


@dataclass(frozen=True)
class GroundTruthQuery:
    """One validated annotation line."""

    qid: int
    vid: str | None
    duration: float
    windows: np.ndarray  # (n, 2) seconds, n >= 1
    clip_scores: np.ndarray  # (int(duration / 2), 3) annotator scores 0-4, 0 for non-relevant clips


@dataclass(frozen=True)
class PredictedQuery:
    """One validated prediction line."""

    qid: int
    windows: np.ndarray  # (k, 3) [st, ed, score] rows in file order (sorted by score, descending)
    saliency: np.ndarray  # (c,) one score per 2-second clip


def _require_qid(record: Mapping, where: str) -> int:
    qid = required_field(record, "qid", where)
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise EvaluationInputError(f"{where}: 'qid' must be an integer, got {qid!r}")
    return qid


def num_gt_clips(duration: float) -> int:
    """Number of 2-second clips the official GT covers: ``int(duration / 2)`` (``mk_gt_scores``)."""
    return int(duration / CLIP_SECONDS)


def validate_ground_truth(
    numbered: Iterable[tuple[int, Mapping]], source: str = "ground truth"
) -> dict[int, GroundTruthQuery]:
    """Check annotation records (val schema) and index them by qid, keeping file order.

    ``numbered`` yields (line number, record) pairs, e.g. :func:`lamflow.fileio.iter_jsonl`'s; errors
    quote ``source:line``.

    Errors (official crashes or meaningless scores otherwise): duplicate qids, a missing label field
    (e.g. the unlabelled test split), a duration below one clip, no GT window, windows with
    ``st >= ed`` or outside ``[0, duration]``, clip ids outside ``[0, int(duration / 2))``, saliency rows
    that are not 3 scores in 0-4 aligned with ``relevant_clip_ids``.
    """
    queries: dict[int, GroundTruthQuery] = {}
    for line, record in numbered:
        where = f"{source}:{line}"
        qid = _require_qid(record, where)
        if qid in queries:
            raise EvaluationInputError(f"{where}: duplicate qid {qid}; each query must appear once")
        for field in ("relevant_windows", "relevant_clip_ids", "saliency_scores"):
            if field not in record:
                raise EvaluationInputError(
                    f"{where}: qid {qid} has no '{field}'; ground truth needs labels (highlight_test_release.jsonl "
                    "is unlabelled: evaluate on highlight_val_release.jsonl, or on the public test answers "
                    "highlight_test_with_gt.jsonl)"
                )
        duration = required_field(record, "duration", where)
        if not is_number(duration) or duration < CLIP_SECONDS:
            raise EvaluationInputError(
                f"{where}: 'duration' must be a number of seconds >= {CLIP_SECONDS:g} (one clip), got {duration!r}"
            )
        windows = number_rows(record["relevant_windows"], 2, "relevant_windows", where, "[st, ed]")
        if len(windows) == 0:
            raise EvaluationInputError(f"{where}: qid {qid} has an empty 'relevant_windows'; MR needs >= 1 GT window")
        bad = (windows[:, 0] >= windows[:, 1]) | (windows[:, 0] < 0) | (windows[:, 1] > duration)
        if bad.any():
            raise EvaluationInputError(
                f"{where}: GT window {windows[bad][0].tolist()} of qid {qid} must satisfy 0 <= st < ed <= duration "
                f"({duration:g})"
            )
        clip_ids = record["relevant_clip_ids"]
        n_clips = num_gt_clips(duration)
        if not isinstance(clip_ids, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n_clips for c in clip_ids
        ):
            raise EvaluationInputError(
                f"{where}: 'relevant_clip_ids' must be integers in [0, {n_clips}) (2-second clips of a "
                f"{duration:g} s video), got {clip_ids!r}"
            )
        if len(set(clip_ids)) != len(clip_ids):
            raise EvaluationInputError(f"{where}: 'relevant_clip_ids' of qid {qid} has repeated clip ids")
        scores = number_rows(record["saliency_scores"], NUM_ANNOTATORS, "saliency_scores", where, "[a1, a2, a3]")
        if len(scores) != len(clip_ids):
            raise EvaluationInputError(
                f"{where}: 'saliency_scores' has {len(scores)} rows but 'relevant_clip_ids' has {len(clip_ids)}; "
                "they must be aligned"
            )
        if ((scores < 0) | (scores > MAX_SALIENCY)).any():
            raise EvaluationInputError(f"{where}: 'saliency_scores' must be in 0..{MAX_SALIENCY}")
        clip_scores = np.zeros((n_clips, NUM_ANNOTATORS))
        clip_scores[clip_ids] = scores
        vid = record.get("vid")
        vid = vid if isinstance(vid, str) else None
        queries[qid] = GroundTruthQuery(qid, vid, float(duration), windows, clip_scores)
    if not queries:
        raise EvaluationInputError(f"{source}: no annotation records")
    return queries


PREDICTION_KEYS = PredictionKeys(
    key="qid",
    prediction="prediction",
    expected="ground-truth qid(s)",
    truth="the ground truth",
    why_every_one="the official evaluator requires one prediction per query",
)


def validate_predictions(
    numbered: Iterable[tuple[int, Mapping]],
    ground_truth: Mapping[int, GroundTruthQuery],
    source: str = "predictions",
    strict: bool = False,
) -> tuple[dict[int, PredictedQuery], dict[str, list[int]]]:
    """Check prediction records against the GT and index them by qid; also return the qids of the lines
    accepted with an adjustment, per kind of ``ADJUSTMENTS`` (all empty for a well-formed file).

    ``numbered`` yields (line number, record) pairs; errors quote ``source:line``. Errors in both modes:
    unknown, duplicate or missing qids (the official ``match_number=True`` check), a missing field,
    ``pred_relevant_windows`` that is empty (official R1 crashes) or not ``[st, ed, score]`` rows of finite
    numbers, ``pred_saliency_scores`` that is empty or not finite numbers. Accepted as the official does
    (more than 10 windows: only the first 10 are scored; tied scores: file order kept; windows ending after
    ``duration``: scored unclipped) and, unless ``strict``, the ``ADJUSTMENTS``. ``strict`` refuses those,
    requiring windows sorted by score with ``0 <= st <= ed`` and ``st <= duration``, the GT's ``vid``, and
    one saliency score per 2-second clip: ``ceil(duration / 2)`` values (``int(duration / 2)``, the
    official GT length, is accepted too; the two differ only for odd durations).
    """
    adjusted: dict[str, list[int]] = {kind: [] for kind in ADJUSTMENTS}

    def checked(qid: int, record: Mapping, where: str) -> PredictedQuery:
        gt = ground_truth[qid]
        windows = number_rows(
            required_field(record, "pred_relevant_windows", where), 3, "pred_relevant_windows", where, "[st, ed, score]"
        )
        if len(windows) == 0:
            raise EvaluationInputError(f"{where}: qid {qid} has no 'pred_relevant_windows'; predict >= 1 window")
        saliency = required_field(record, "pred_saliency_scores", where)
        if not isinstance(saliency, list) or not saliency or not all(is_number(x) for x in saliency):
            raise EvaluationInputError(f"{where}: 'pred_saliency_scores' must be a non-empty list of finite numbers")
        deviations = _deviations(qid, record.get("vid"), windows, len(saliency), gt)
        if strict and deviations:
            raise EvaluationInputError(
                f"{where}: {next(iter(deviations.values()))} (strict mode; without it the line is scored as the "
                "official evaluator does)"
            )
        for kind in deviations:
            adjusted[kind].append(qid)
        return PredictedQuery(qid, windows, np.asarray(saliency, dtype=float))

    predictions = one_prediction_per_key(
        numbered, ground_truth, _require_qid, checked, source, PREDICTION_KEYS,
        unknown_hint=lambda qids: "are the predictions for another split?",
    )
    return predictions, adjusted


def _deviations(qid: int, vid: Any, windows: np.ndarray, num_saliency: int, gt: GroundTruthQuery) -> dict[str, str]:
    """The ``ADJUSTMENTS`` a prediction needs (deviations from the format that the official evaluator scores
    anyway): kind -> the message that refuses it in strict mode."""
    deviations: dict[str, str] = {}
    if vid is not None and gt.vid is not None and vid != gt.vid:
        deviations["vid_mismatch"] = f"qid {qid} has vid {vid!r} but the ground truth says {gt.vid!r}"
    starts, ends, window_scores = windows.T
    bad = (starts > ends) | (starts < 0) | (starts > gt.duration)
    if bad.any():
        deviations["windows_out_of_range"] = (
            f"predicted window {windows[bad][0].tolist()} of qid {qid} is out of range: need "
            f"0 <= st <= ed and st <= duration ({gt.duration:g} s)"
        )
    if (np.diff(window_scores) > 0).any():
        deviations["windows_unsorted"] = (
            f"'pred_relevant_windows' of qid {qid} is not sorted by score (descending); the official "
            "evaluator scores the first 10 windows and uses the first as top-1, so sort them"
        )
    clips = math.ceil(gt.duration / CLIP_SECONDS)
    if num_saliency not in (clips, num_gt_clips(gt.duration)):
        kind = "saliency_padded" if num_saliency < clips else "saliency_truncated"
        deviations[kind] = (
            f"qid {qid} has {num_saliency} 'pred_saliency_scores' but its {gt.duration:g} s video has "
            f"{clips} two-second clips (ceil(duration / 2)); write one score per clip"
        )
    return deviations

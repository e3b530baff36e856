"""Official QVHighlights metrics: moment retrieval (MR) and highlight detection (HL).

The numbers are computed as the official evaluator does (moment_detr ``standalone_eval/eval.py`` and
``standalone_eval/utils.py``), reimplemented in numpy so lamflow needs neither sklearn nor a copy of
that code. Every function below names the official behaviour it reproduces, including its quirks:

* MR mAP (``compute_mr_ap`` / ``compute_average_precision_detection``): per query, the first 10
  windows of the file (``max_pred_windows=10``) are sorted by score with a *stable* sort, each is
  matched to the unlocked ground-truth (GT) window of highest IoU at or above the threshold (each GT
  window matched at most once), and AP is the VOC-2011 interpolated area under precision/recall.
  Thresholds are 0.50, 0.55, ..., 0.95; the per-query APs are averaged over queries, then over
  thresholds for ``MR-full-mAP``.
* MR R1 (``compute_mr_r1``): the *first* window of the file against the GT window it overlaps most
  (first one on IoU ties); this IoU uses the hull ``max(ed) - min(st)`` as the union, as the official
  ``compute_temporal_iou_batch_paired`` does.
* Length buckets (``get_data_by_range``): short (0, 10], middle (10, 30], long (30, 150] seconds of GT
  window length; a query keeps only its GT windows in the bucket and is left out of the bucket when
  none remain. ``full`` keeps every window untouched.
* HL (``eval_highlight``): GT scores of the ``int(duration / 2)`` 2-second clips (clips not in
  ``relevant_clip_ids`` score 0), binarised per annotator at >= 2 (Fair), >= 3 (Good), >= 4
  (VeryGood). Hit1: the clip with the highest predicted score (first on ties) is positive for at
  least one of the three annotators. mAP: ``get_ap`` (sklearn precision/recall curve, precision
  interpolated, mean precision at each threshold where recall grows) per annotator, averaged over
  annotators and queries; an annotator with no positive clip in a query scores AP 0.
* Results are percentages formatted like the official ``float(f"{100 * x:.2f}")``, and the output
  has the official layout: ``brief`` (the 14 numbers), then per-bucket and per-HL-level details.

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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS, MAX_SALIENCY, NUM_ANNOTATORS
from lamflow.errors import LamflowError
from lamflow.fileio import iter_jsonl

# np.linspace(0.5, 0.95, 10) rounded to 2 decimals, exactly as the official code rounds its thresholds
# (so 0.65 is the float 0.65, not 0.6499999...).
IOU_THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
MAX_PRED_WINDOWS = 10
# name -> (min_len, max_len): GT windows with min_len < length <= max_len. "full" is not filtered at all.
LENGTH_RANGES: dict[str, tuple[float, float]] = {
    "short": (0.0, 10.0),
    "middle": (10.0, 30.0),
    "long": (30.0, 150.0),
    "full": (0.0, 150.0),
}
# HL level name -> minimal annotator score (0-4 scale) of a positive clip.
SALIENCY_LEVELS: dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}
BRIEF_KEYS: tuple[str, ...] = (
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-mAP",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-long-mAP",
    "MR-middle-mAP",
    "MR-short-mAP",
    "HL-min-Fair-mAP",
    "HL-min-Fair-Hit1",
    "HL-min-Good-mAP",
    "HL-min-Good-Hit1",
    "HL-min-VeryGood-mAP",
    "HL-min-VeryGood-Hit1",
)
# How many offending qids an error message lists before summarising the rest.
_LISTED_IN_ERRORS = 5
# Prediction lines the official evaluator scores although they break the documented format: kind -> what
# was accepted and how it is scored. Counted in the output's "adjusted_lines"; refused with strict=True.
ADJUSTMENTS: dict[str, str] = {
    "saliency_padded": "pred_saliency_scores shorter than int(duration / 2) (the GT's clips): padded with 0 for HL-mAP",
    "saliency_truncated": "pred_saliency_scores longer than ceil(duration / 2): cut to int(duration / 2) for HL-mAP",
    "windows_unsorted": "pred_relevant_windows not sorted by score: mAP ranks them by score, R1 takes the first",
    "windows_out_of_range": "a window with st > ed, st < 0 or st > duration: scored as written",
    "vid_mismatch": "a vid other than the ground truth's: ignored",
}


class EvaluationInputError(LamflowError, ValueError):
    """A ground-truth or prediction file that cannot be scored; the message names the record and fix."""


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


# ---------------------------------------------------------------------------------------------------
# Reading and validation
# ---------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(record: Mapping, field: str, where: str) -> Any:
    if field not in record:
        raise EvaluationInputError(f"{where}: missing field '{field}' (keys present: {sorted(record)})")
    return record[field]


def _require_qid(record: Mapping, where: str) -> int:
    qid = _require(record, "qid", where)
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise EvaluationInputError(f"{where}: 'qid' must be an integer, got {qid!r}")
    return qid


def _number_rows(value: Any, width: int, field: str, where: str, example: str) -> np.ndarray:
    """``value`` as a (n, width) float array of finite numbers, or an error showing the expected shape."""
    if not isinstance(value, list) or not all(
        isinstance(row, list) and len(row) == width and all(_is_number(x) for x in row) for row in value
    ):
        raise EvaluationInputError(f"{where}: '{field}' must be a list of {example} rows of finite numbers")
    return np.asarray(value, dtype=float).reshape(len(value), width)


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
        duration = _require(record, "duration", where)
        if not _is_number(duration) or duration < CLIP_SECONDS:
            raise EvaluationInputError(
                f"{where}: 'duration' must be a number of seconds >= {CLIP_SECONDS:g} (one clip), got {duration!r}"
            )
        windows = _number_rows(record["relevant_windows"], 2, "relevant_windows", where, "[st, ed]")
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
        scores = _number_rows(record["saliency_scores"], NUM_ANNOTATORS, "saliency_scores", where, "[a1, a2, a3]")
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


def listed(values: set[int] | set[str]) -> str:
    """The first few of ``values`` (sorted) for an error message, and how many more there are."""
    shown = ", ".join(str(v) for v in sorted(values)[:_LISTED_IN_ERRORS])
    more = len(values) - _LISTED_IN_ERRORS
    return f"{shown} (and {more} more)" if more > 0 else shown


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
    predictions: dict[int, PredictedQuery] = {}
    adjusted: dict[str, list[int]] = {kind: [] for kind in ADJUSTMENTS}
    unknown: set[int] = set()
    for line, record in numbered:
        where = f"{source}:{line}"
        qid = _require_qid(record, where)
        if qid in predictions:
            raise EvaluationInputError(f"{where}: duplicate qid {qid}; write one prediction line per query")
        gt = ground_truth.get(qid)
        if gt is None:
            unknown.add(qid)
            continue
        windows = _number_rows(
            _require(record, "pred_relevant_windows", where), 3, "pred_relevant_windows", where, "[st, ed, score]"
        )
        if len(windows) == 0:
            raise EvaluationInputError(f"{where}: qid {qid} has no 'pred_relevant_windows'; predict >= 1 window")
        saliency = _require(record, "pred_saliency_scores", where)
        if not isinstance(saliency, list) or not saliency or not all(_is_number(x) for x in saliency):
            raise EvaluationInputError(f"{where}: 'pred_saliency_scores' must be a non-empty list of finite numbers")

        # Deviations from the format that the official evaluator scores anyway: kind -> the strict refusal.
        deviations: dict[str, str] = {}
        vid = record.get("vid")
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
        if len(saliency) not in (clips, num_gt_clips(gt.duration)):
            kind = "saliency_padded" if len(saliency) < clips else "saliency_truncated"
            deviations[kind] = (
                f"qid {qid} has {len(saliency)} 'pred_saliency_scores' but its {gt.duration:g} s video has "
                f"{clips} two-second clips (ceil(duration / 2)); write one score per clip"
            )
        if strict and deviations:
            raise EvaluationInputError(
                f"{where}: {next(iter(deviations.values()))} (strict mode; without it the line is scored as the "
                "official evaluator does)"
            )
        for kind in deviations:
            adjusted[kind].append(qid)
        predictions[qid] = PredictedQuery(qid, windows, np.asarray(saliency, dtype=float))
    if unknown:
        raise EvaluationInputError(
            f"{source}: {len(unknown)} qid(s) not in the ground truth: {listed(unknown)}; "
            "are the predictions for another split?"
        )
    missing = set(ground_truth) - set(predictions)
    if missing:
        raise EvaluationInputError(
            f"{source}: no prediction for {len(missing)} of {len(ground_truth)} ground-truth qid(s): "
            f"{listed(missing)}; the official evaluator requires one prediction per query"
        )
    return predictions, adjusted


def adjustment_summary(adjusted_lines: Mapping[str, int]) -> str | None:
    """One sentence saying which lines were scored although they break the format (None when none were)."""
    parts = [f"{adjusted_lines[kind]} with {what}" for kind, what in ADJUSTMENTS.items() if adjusted_lines[kind]]
    if not parts:
        return None
    return (
        f"{adjusted_lines['total']} prediction line(s) scored as the official evaluator does although they break "
        f"the format: {'; '.join(parts)}. Pass --strict to refuse them."
    )


# ---------------------------------------------------------------------------------------------------
# Moment retrieval
# ---------------------------------------------------------------------------------------------------


def temporal_iou_cross(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """IoU of every window in ``windows_a`` (N, 2) with every one in ``windows_b`` (M, 2) -> (N, M).

    Union = len_a + len_b - intersection, as the official ``compute_temporal_iou_batch_cross`` (same
    floating-point operations, so IoUs that sit exactly on a threshold compare the same way).
    """
    lengths_a = windows_a[:, 1] - windows_a[:, 0]
    lengths_b = windows_b[:, 1] - windows_b[:, 0]
    left = np.maximum(windows_a[:, None, 0], windows_b[None, :, 0])
    right = np.minimum(windows_a[:, None, 1], windows_b[None, :, 1])
    intersection = np.clip(right - left, 0, None)
    union = lengths_a[:, None] + lengths_b[None, :] - intersection
    return intersection / union


def temporal_iou_hull(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 2) arrays with the official R1 formula (``compute_temporal_iou_batch_paired``):
    the union is the hull ``max(ed) - min(st)``. It equals the true union whenever the windows overlap
    (and the IoU is 0 otherwise), but rounds differently, which matters exactly at a threshold."""
    overlap_end = np.minimum(windows_a[:, 1], windows_b[:, 1])
    intersection = np.maximum(0, overlap_end - np.maximum(windows_a[:, 0], windows_b[:, 0]))
    hull = np.maximum(windows_a[:, 1], windows_b[:, 1]) - np.minimum(windows_a[:, 0], windows_b[:, 0])
    return np.divide(intersection, hull, out=np.zeros_like(intersection), where=hull != 0)


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 AP (official ``interpolated_precision_recall``): precision made monotone from the right,
    summed over the recall steps, with a (recall 1, precision 0) end point so missed GT costs AP."""
    padded_precision = np.concatenate([[0.0], precision, [0.0]])
    padded_recall = np.concatenate([[0.0], recall, [1.0]])
    padded_precision = np.maximum.accumulate(padded_precision[::-1])[::-1]
    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1]) + 1
    return float(np.sum((padded_recall[steps] - padded_recall[steps - 1]) * padded_precision[steps]))


def detection_average_precision(
    gt_windows: np.ndarray, pred_windows: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """AP of one query's predictions (k, 3) against its GT windows (n >= 1, 2), one value per threshold.

    Official ``compute_average_precision_detection``: predictions ranked by score with a stable sort
    (ties keep file order); a prediction is a true positive when the highest-IoU GT window that is
    not yet matched at this threshold has IoU >= threshold; GT windows are visited in the order of
    ``np.argsort(iou)[::-1]`` (the official order: on tied IoUs the later GT window comes first).
    """
    thresholds = np.asarray(thresholds, dtype=float)
    order = np.argsort(-pred_windows[:, 2], kind="stable")
    ranked = pred_windows[order]
    ious = temporal_iou_cross(ranked[:, :2], gt_windows)  # (k, n)
    matched_gt = np.zeros((len(thresholds), len(gt_windows)), dtype=bool)
    true_positive = np.zeros((len(thresholds), len(ranked)))
    for rank, pred_ious in enumerate(ious):
        gt_order = np.argsort(pred_ious)[::-1]
        # eligible[t, j]: the j-th GT window in visiting order is free and overlaps enough at threshold t.
        eligible = (pred_ious[gt_order][None, :] >= thresholds[:, None]) & ~matched_gt[:, gt_order]
        hit = eligible.any(axis=1)
        first = gt_order[eligible.argmax(axis=1)]
        matched_gt[hit, first[hit]] = True
        true_positive[hit, rank] = 1.0
    tp_cumsum = np.cumsum(true_positive, axis=1)
    fp_cumsum = np.cumsum(1.0 - true_positive, axis=1)
    recall = tp_cumsum / float(len(gt_windows))
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    return np.array([interpolated_average_precision(precision[t], recall[t]) for t in range(len(thresholds))])


def as_percent(value: float) -> float:
    """The official formatting of every reported number: ``float(f"{100 * value:.2f}")``."""
    return float(f"{100 * value:.2f}")


def _threshold_key(threshold: float) -> str:
    return str(threshold)  # the official keys: "0.5", "0.55", ..., "0.95"


def _restrict_to_range(
    ground_truth: Mapping[int, GroundTruthQuery], name: str
) -> dict[int, np.ndarray]:
    """qid -> GT windows of the bucket (official ``get_data_by_range``): ``full`` is returned untouched,
    other buckets keep windows with min_len < length <= max_len and drop queries left with none."""
    if name == "full":
        return {qid: gt.windows for qid, gt in ground_truth.items()}
    min_len, max_len = LENGTH_RANGES[name]
    kept = {}
    for qid, gt in ground_truth.items():
        lengths = gt.windows[:, 1] - gt.windows[:, 0]
        in_range = gt.windows[(min_len < lengths) & (lengths <= max_len)]
        if len(in_range):
            kept[qid] = in_range
    return kept


def recall_at_one(
    gt_windows_by_qid: Mapping[int, np.ndarray], predictions: Mapping[int, PredictedQuery]
) -> dict[str, float]:
    """Official ``compute_mr_r1``: the first predicted window against the GT window it overlaps most
    (``np.argmax``: first on ties), scored with the hull IoU; share of queries with IoU >= t, in %."""
    qids = list(gt_windows_by_qid)
    top_windows = np.array([predictions[qid].windows[0, :2] for qid in qids])
    best_gt = np.array(
        [
            gt_windows_by_qid[qid][np.argmax(temporal_iou_cross(top_windows[i : i + 1], gt_windows_by_qid[qid])[0])]
            for i, qid in enumerate(qids)
        ]
    )
    ious = temporal_iou_hull(top_windows, best_gt)
    return {_threshold_key(t): as_percent(np.mean(ious >= t)) for t in IOU_THRESHOLDS}


def mean_average_precision(
    gt_windows_by_qid: Mapping[int, np.ndarray], predictions: Mapping[int, PredictedQuery]
) -> dict[str, float]:
    """Official ``compute_mr_ap``: per-query AP of the first ``MAX_PRED_WINDOWS`` windows, averaged over
    queries per threshold, plus ``average`` over thresholds (of the unrounded means), in %."""
    per_query = np.array(
        [
            detection_average_precision(windows, predictions[qid].windows[:MAX_PRED_WINDOWS])
            for qid, windows in gt_windows_by_qid.items()
        ]
    )
    per_threshold = per_query.mean(axis=0)
    result = {_threshold_key(t): as_percent(ap) for t, ap in zip(IOU_THRESHOLDS, per_threshold)}
    result["average"] = as_percent(np.mean(per_threshold))
    return result


def evaluate_moment_retrieval(
    ground_truth: Mapping[int, GroundTruthQuery], predictions: Mapping[int, PredictedQuery]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{bucket: {"MR-mAP": {...}, "MR-R1": {...}}}`` for short, middle, long and full.

    A bucket with no query (e.g. no GT window longer than 30 s) makes the official evaluator crash;
    here its numbers are ``None`` (JSON null).
    """
    metrics = {}
    for name in LENGTH_RANGES:
        windows_by_qid = _restrict_to_range(ground_truth, name)
        if windows_by_qid:
            metrics[name] = {
                "MR-mAP": mean_average_precision(windows_by_qid, predictions),
                "MR-R1": recall_at_one(windows_by_qid, predictions),
            }
        else:
            metrics[name] = {
                "MR-mAP": {**{_threshold_key(t): None for t in IOU_THRESHOLDS}, "average": None},
                "MR-R1": {_threshold_key(t): None for t in IOU_THRESHOLDS},
            }
    return metrics


# ---------------------------------------------------------------------------------------------------
# Highlight detection
# ---------------------------------------------------------------------------------------------------


def highlight_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Official ``get_ap`` (interpolated, not 11-point) for binary clip labels and predicted clip scores.

    All-negative labels score 0 and all-positive labels score 1 (official shortcut). Otherwise, as
    sklearn's ``precision_recall_curve``: one operating point per distinct score (tied clips enter
    together), precision interpolated as the max precision at this or any lower threshold, and the AP
    is the plain mean of the interpolated precision at the points where recall grows -- a point that
    adds several positives at once still counts once (official quirk, not weighted by recall).
    """
    if np.all(labels == labels[0]):
        return 0.0 if labels[0] == 0 else 1.0
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores = scores[order]
    # Last index of each group of equal scores, in descending score order.
    point_ends = np.concatenate([np.flatnonzero(np.diff(sorted_scores)), [len(scores) - 1]])
    true_positives = np.cumsum(labels[order])[point_ends]
    precision = true_positives / (point_ends + 1)
    # Max over this point and all lower thresholds: a running max from the lowest threshold upwards.
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    recall_grows = np.diff(np.concatenate([[0.0], true_positives])) > 0
    # Mean in the official order (lowest threshold first) so the float sum is the same.
    return float(np.mean(interpolated[recall_grows][::-1]))


def _fit_to_clips(saliency: np.ndarray, n_clips: int) -> np.ndarray:
    """Official ``compute_ap_from_tuple``: predictions cut, or padded with 0, to the GT clip count."""
    fitted = np.zeros(n_clips)
    kept = min(n_clips, len(saliency))
    fitted[:kept] = saliency[:kept]
    return fitted


def evaluate_highlights(
    ground_truth: Mapping[int, GroundTruthQuery], predictions: Mapping[int, PredictedQuery]
) -> dict[str, dict[str, float]]:
    """``{"HL-min-Fair": {"HL-mAP": ..., "HL-Hit1": ...}, ...Good, ...VeryGood}`` (official ``eval_highlight``)."""
    metrics = {}
    for level, min_score in SALIENCY_LEVELS.items():
        hits = []
        average_precisions = []
        for qid, gt in ground_truth.items():
            positives = (gt.clip_scores >= min_score).astype(float)  # (clips, annotators)
            saliency = predictions[qid].saliency
            top_clip = int(np.argmax(saliency))
            # A top clip past the GT clips (an odd duration's last half clip) hits nothing (official).
            hits.append(positives[top_clip].max() if top_clip < len(positives) else 0.0)
            fitted = _fit_to_clips(saliency, len(positives))
            average_precisions.extend(
                highlight_average_precision(positives[:, a], fitted) for a in range(NUM_ANNOTATORS)
            )
        metrics[f"HL-min-{level}"] = {
            "HL-mAP": as_percent(np.mean(average_precisions)),
            "HL-Hit1": as_percent(np.mean(hits)),
        }
    return metrics


# ---------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------


def _evaluate_numbered(
    ground_truth: Iterable[tuple[int, Mapping]],
    predictions: Iterable[tuple[int, Mapping]],
    gt_source: str,
    pred_source: str,
    strict: bool,
) -> dict[str, Any]:
    gt = validate_ground_truth(ground_truth, gt_source)
    preds, adjusted = validate_predictions(predictions, gt, pred_source, strict=strict)
    moment_retrieval = evaluate_moment_retrieval(gt, preds)
    highlights = evaluate_highlights(gt, preds)
    brief = {
        "MR-full-R1@0.5": moment_retrieval["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": moment_retrieval["full"]["MR-R1"]["0.7"],
        "MR-full-mAP": moment_retrieval["full"]["MR-mAP"]["average"],
        "MR-full-mAP@0.5": moment_retrieval["full"]["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": moment_retrieval["full"]["MR-mAP"]["0.75"],
        "MR-long-mAP": moment_retrieval["long"]["MR-mAP"]["average"],
        "MR-middle-mAP": moment_retrieval["middle"]["MR-mAP"]["average"],
        "MR-short-mAP": moment_retrieval["short"]["MR-mAP"]["average"],
    }
    for level, values in highlights.items():
        brief[f"{level}-mAP"] = values["HL-mAP"]
        brief[f"{level}-Hit1"] = values["HL-Hit1"]
    assert tuple(brief) == BRIEF_KEYS
    adjusted_lines = {"total": len(set().union(*adjusted.values())), **{k: len(v) for k, v in adjusted.items()}}
    return {
        "brief": brief,
        **dict(sorted({**moment_retrieval, **highlights}.items())),
        "adjusted_lines": adjusted_lines,
    }


def evaluate(
    ground_truth: Sequence[Mapping],
    predictions: Sequence[Mapping],
    gt_source: str = "ground truth",
    pred_source: str = "predictions",
    strict: bool = False,
) -> dict[str, Any]:
    """Score prediction records against annotation records, in the official output layout.

    Returns ``{"brief": {14 numbers}, "HL-min-Fair": {...}, "HL-min-Good": {...}, "HL-min-VeryGood":
    {...}, "full": {...}, "long": {...}, "middle": {...}, "short": {...}}`` (official key order), then
    ``"adjusted_lines"``: ``{"total": n, <kind>: n, ...}`` for the kinds of ``ADJUSTMENTS`` (lamflow's
    addition; all 0 for a well-formed file, and ``strict=True`` refuses such lines instead). The sources
    name the inputs in error messages as ``source:record_number``.
    """
    return _evaluate_numbered(
        enumerate(ground_truth, start=1), enumerate(predictions, start=1), gt_source, pred_source, strict
    )


def evaluate_files(gt_path: str | Path, pred_path: str | Path, strict: bool = False) -> dict[str, Any]:
    """``evaluate`` on two JSONL files; errors quote ``file:line``."""
    return _evaluate_numbered(
        iter_jsonl(gt_path, "QVHighlights annotation file"),
        iter_jsonl(pred_path, "QVHighlights prediction file"),
        str(gt_path),
        str(pred_path),
        strict,
    )

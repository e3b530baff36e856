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

Which prediction lines are scored, adjusted or refused, and which ground truth is accepted: see
``qvhighlights_input_eval``, which reads both files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lamflow.datasets.qvhighlights_format import NUM_ANNOTATORS
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.qvhighlights_input_eval import (
    ADJUSTMENTS,
    GroundTruthQuery,
    PredictedQuery,
    validate_ground_truth,
    validate_predictions,
)
from lamflow.train.tasks.scoring import as_percent, temporal_iou

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
    ious = temporal_iou(ranked[:, :2], gt_windows)  # (k, n)
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
            gt_windows_by_qid[qid][np.argmax(temporal_iou(top_windows[i : i + 1], gt_windows_by_qid[qid])[0])]
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

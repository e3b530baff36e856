"""Recall at temporal IoU for MAD-style queries, on lamflow's prediction lines (the trainer's validation score).

``R@k-IoU=m``: the percentage of queries for which one of the first ``k`` predicted windows (best first, as
written) overlaps a ground-truth moment with IoU >= ``m`` (intersection over the union of the two spans),
for k in {1, 5} and m in {0.1, 0.3, 0.5}, the cells MAD reports; ``mIoU@1``: the mean IoU of the first window.

What these numbers are not: MAD's benchmark. Under ``data.window_seconds`` every query is predicted inside
a window known to hold its moment (``cut_queries`` counts them), which is far easier. MAD's protocol predicts
over the whole movie: windows of 128 frames (5 fps) slid with stride 64 over every movie, every proposal of
every window scored, all proposals of a movie merged by NMS, then R@{1,5,10,50,100} at IoU {0.1,0.3,0.5};
lamflow does not build that sliding-window predictor (see ``lamflow.datasets.qvhighlights``).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from lamflow.train.tasks.scoring import EvaluationInputError, as_percent, temporal_iou

RECALL_AT = (1, 5)
IOU_THRESHOLDS = (0.1, 0.3, 0.5)


def window_recall(queries: Iterable[Any], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """R@k-IoU=m and mIoU@1 of prediction ``rows`` against ``queries`` (``QVHighlightsQuery`` with windows)."""
    by_qid = {query.qid: query for query in queries}
    hits = np.zeros((len(RECALL_AT), len(IOU_THRESHOLDS)))
    first_iou = []
    for row in rows:
        query = by_qid.get(row["qid"])
        if query is None or not query.windows:
            raise EvaluationInputError(f"prediction for qid {row['qid']!r} has no ground-truth moment in the validation "
                                       "annotations; predict the split the annotations describe")
        windows = np.asarray([window[:2] for window in row["pred_relevant_windows"]], dtype=float).reshape(-1, 2)
        # The best IoU with any ground-truth moment (MAD has one per query).
        iou = temporal_iou(windows, np.asarray(query.windows, dtype=float)).max(axis=1)
        for i, k in enumerate(RECALL_AT):
            hits[i] += (iou[:k, None] >= np.asarray(IOU_THRESHOLDS)[None, :]).any(axis=0)
        first_iou.append(iou[0] if len(iou) else 0.0)
    count = max(len(rows), 1)
    result = {f"R@{k}-IoU={m:.1f}": as_percent(hits[i, j] / count)
              for i, k in enumerate(RECALL_AT) for j, m in enumerate(IOU_THRESHOLDS)}
    result["mIoU@1"] = as_percent(float(np.mean(first_iou)) if first_iou else 0.0)
    result["cut_queries"] = sum("window" in row for row in rows)
    return result

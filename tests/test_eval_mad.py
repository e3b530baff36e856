"""Recall at temporal IoU for MAD-style queries (train/tasks/mad_eval.py), checked against hand arithmetic."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from lamflow.train.tasks.mad_eval import window_recall
from lamflow.train.tasks.scoring import EvaluationInputError


def query(qid, *windows):
    return SimpleNamespace(qid=qid, windows=windows)  # the fields of a QVHighlightsQuery window_recall reads


def test_recall_at_k_and_mean_iou_of_the_first_window_match_hand_computation():
    queries = [query(1, (10.0, 20.0)), query(2, (0.0, 10.0))]
    rows = [
        # IoUs with [10, 20]: 0 (disjoint), then 5 / 15 = 0.33, then 1.
        {"qid": 1, "pred_relevant_windows": [[30, 40, 0.9], [5, 15, 0.8], [10, 20, 0.7]]},
        # IoU with [0, 10]: 4 / 10 = 0.4 (first window), and the query's window was cut for it.
        {"qid": 2, "pred_relevant_windows": [[0, 4, 0.9]], "window": 0},
    ]
    assert window_recall(queries, rows) == {
        "R@1-IoU=0.1": 50.0, "R@1-IoU=0.3": 50.0, "R@1-IoU=0.5": 0.0,
        "R@5-IoU=0.1": 100.0, "R@5-IoU=0.3": 100.0, "R@5-IoU=0.5": 50.0,
        "mIoU@1": 20.0,  # (0 + 0.4) / 2
        "cut_queries": 1,
    }


def test_the_best_of_several_ground_truth_moments_counts():
    assert window_recall([query(1, (0.0, 2.0), (10.0, 20.0))], [{"qid": 1, "pred_relevant_windows": [[10, 20, 1]]}])[
        "R@1-IoU=0.5"] == 100.0


def test_a_prediction_without_a_ground_truth_moment_is_an_error():
    with pytest.raises(EvaluationInputError, match="qid 7 has no ground-truth moment"):
        window_recall([query(1, (0.0, 1.0))], [{"qid": 7, "pred_relevant_windows": [[0, 1, 1]]}])

"""Top-k accuracy for classification, from logits in memory or from a prediction file.

Label files are the ones the classification task reads (``lamflow.datasets.classification.load_labels``):
a CSV of ``key,label`` rows (an optional ``key,label`` header) or a JSON object ``{key: label}``, or an image
folder's extraction DIR, whose samples are labelled by their class folders (``folder_labels``). A
prediction file is JSONL, one line per key: ``{"key": "vid123", "top_labels": ["dog", "cat", ...]}``
with the predicted labels best first (at least ``max(k)`` of them, or every class; other fields such as
``scores`` are ignored). Labels are compared as strings, so ``3`` and ``"3"`` match.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from lamflow.datasets.classification import load_labels
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.qvhighlights_eval import EvaluationInputError, as_percent, listed

DEFAULT_TOPK: tuple[int, ...] = (1, 5)


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise EvaluationInputError(f"top-k values must be positive integers, got {list(ks)}")


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = DEFAULT_TOPK) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` for (N, C) scores and (N,) integer labels.

    A sample counts for top-k when its label is among the k highest scores; tied scores rank the lower
    class index first (stable sort), so a constant score vector predicts class 0. ``k`` larger than C
    counts every sample as correct, as timm's ``accuracy`` does.
    """
    _check_ks(ks)
    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise EvaluationInputError(
            f"logits must be (N, C) and labels (N,), got {logits.shape} and {labels.shape}"
        )
    if len(labels) == 0:
        raise EvaluationInputError("no samples to score")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise EvaluationInputError(f"labels must be class indices in [0, {logits.shape[1]}), got {labels.dtype} values")
    ranking = np.argsort(-logits, axis=1, kind="stable")
    # rank_of_label[i]: 0 when the label is the top prediction of sample i.
    rank_of_label = np.argmax(ranking == labels[:, None], axis=1)
    return {f"top{k}": as_percent(np.mean(rank_of_label < k)) for k in ks}


def ranked_accuracy(
    labels: Mapping[str, str],
    predictions: Sequence[Mapping],
    ks: Sequence[int] = DEFAULT_TOPK,
    source: str = "predictions",
) -> dict[str, float | int]:
    """Top-k accuracy of prediction records ``{"key", "top_labels"}`` against ``{key: label}``.

    Every labelled key needs exactly one prediction and every prediction a labelled key; a ranking
    shorter than ``max(ks)`` is an error unless it lists every class seen in the labels.
    """
    return _ranked_accuracy(labels, enumerate(predictions, start=1), ks, source)


def _ranked_accuracy(
    labels: Mapping[str, str], numbered: Iterable[tuple[int, Mapping]], ks: Sequence[int], source: str
) -> dict[str, float | int]:
    _check_ks(ks)
    if not labels:
        raise EvaluationInputError("no labelled keys to score")
    num_classes = len(set(labels.values()))
    needed = min(max(ks), num_classes)
    hits = {k: 0 for k in ks}
    seen: set[str] = set()
    unknown: set[str] = set()
    for line, record in numbered:
        where = f"{source}:{line}"
        key, ranking = record.get("key"), record.get("top_labels")
        if not isinstance(key, str) or not isinstance(ranking, list):
            raise EvaluationInputError(f"{where}: expected {{\"key\": str, \"top_labels\": [label, ...]}}")
        if key in seen:
            raise EvaluationInputError(f"{where}: duplicate key {key!r}")
        seen.add(key)
        if key not in labels:
            unknown.add(key)
            continue
        if len(ranking) < needed:
            raise EvaluationInputError(
                f"{where}: 'top_labels' lists {len(ranking)} label(s); top-{max(ks)} needs at least {needed}"
            )
        ranked = [str(label) for label in ranking]
        truth = labels[key]
        for k in ks:
            hits[k] += truth in ranked[:k]
    if unknown:
        raise EvaluationInputError(f"{source}: {len(unknown)} key(s) have no label: {listed(unknown)}")
    missing = set(labels) - seen
    if missing:
        raise EvaluationInputError(f"{source}: no prediction for {len(missing)} labelled key(s): {listed(missing)}")
    result: dict[str, float | int] = {f"top{k}": as_percent(hits[k] / len(labels)) for k in ks}
    result["num_samples"] = len(labels)
    return result


def evaluate_files(
    labels_path: str | Path, pred_path: str | Path, ks: Sequence[int] = DEFAULT_TOPK
) -> dict[str, float | int]:
    """``ranked_accuracy`` on a label file and a JSONL prediction file; errors quote ``file:line``."""
    try:
        labels = load_labels(labels_path)
    except (OSError, ValueError) as error:  # the task's reader raises these; one error type for the CLI
        raise EvaluationInputError(str(error)) from None
    return _ranked_accuracy(labels, iter_jsonl(pred_path, "prediction file"), ks, str(pred_path))

"""Top-k accuracy for classification, from prediction lines in memory or in a file.

Label files are the ones the classification task reads (``lamflow.datasets.classification.load_labels``):
a CSV of ``key,label`` rows (an optional ``key,label`` header) or a JSON object ``{key: label}``, or an image
folder's extraction DIR, whose samples are labelled by their class folders (``folder_labels``). A
prediction file is JSONL, one line per key: ``{"key": "vid123", "top_labels": ["dog", "cat", ...]}``
with the predicted labels best first (at least ``max(k)`` of them, or every class; other fields such as
``scores`` are ignored). Labels are compared as strings, so ``3`` and ``"3"`` match.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lamflow.datasets.classification import load_labels
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.scoring import EvaluationInputError, PredictionKeys, as_percent, check_ks, one_prediction_per_key

DEFAULT_TOPK: tuple[int, ...] = (1, 5)
PREDICTION_KEYS = PredictionKeys(
    key="key",
    prediction="prediction",
    expected="labelled key(s)",
    truth="the labels",
    why_every_one="accuracy is over every labelled key",
)
LINE_FORMAT = '{"key": str, "top_labels": [label, ...]}'


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


def _key(record: Mapping[str, Any], where: str) -> str:
    key = record.get("key")
    if not isinstance(key, str):
        raise EvaluationInputError(f"{where}: expected {LINE_FORMAT}, got 'key' {key!r}")
    return key


def _ranked_accuracy(
    labels: Mapping[str, str], numbered: Iterable[tuple[int, Mapping]], ks: Sequence[int], source: str
) -> dict[str, float | int]:
    check_ks(ks, "top-k")
    if not labels:
        raise EvaluationInputError("no labelled keys to score")
    # A ranking of every class is complete even when shorter than max(ks).
    needed = min(max(ks), len(set(labels.values())))

    def ranking(key: str, record: Mapping[str, Any], where: str) -> list[str]:
        ranked = record.get("top_labels")
        if not isinstance(ranked, list):
            raise EvaluationInputError(f"{where}: expected {LINE_FORMAT}, got 'top_labels' {ranked!r}")
        if len(ranked) < needed:
            raise EvaluationInputError(
                f"{where}: 'top_labels' lists {len(ranked)} label(s); top-{max(ks)} needs at least {needed}"
            )
        return [str(label) for label in ranked]  # labels compare as strings: 3 and "3" match

    rankings = one_prediction_per_key(numbered, labels, _key, ranking, source, PREDICTION_KEYS)
    result: dict[str, float | int] = {
        f"top{k}": as_percent(sum(labels[key] in ranked[:k] for key, ranked in rankings.items()) / len(labels))
        for k in ks
    }
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

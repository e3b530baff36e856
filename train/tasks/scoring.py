"""What every evaluator shares: its error type, the checks of prediction records, and the numbers' form.

An evaluator scores a prediction file against ground truth keyed by query, video, AD or sample. The rule
they all enforce is :func:`one_prediction_per_key`: exactly one prediction line for every ground-truth key,
none for a key the ground truth lacks; its errors name ``file:line``, the key and the fix in one line.
Reported numbers are percentages rounded as the official QVHighlights evaluator rounds them
(:func:`as_percent`), and temporal windows are compared by :func:`temporal_iou`, the official formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from lamflow.errors import LamflowError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# How many offending keys an error message lists before summarising the rest.
_LISTED_IN_ERRORS = 5


class EvaluationInputError(LamflowError, ValueError):
    """A ground-truth or prediction file that cannot be scored; the message names the record and fix."""


def listed(values: Collection[Any]) -> str:
    """The first few of ``values`` (sorted) for an error message, and how many more there are."""
    shown = ", ".join(str(v) for v in sorted(values)[:_LISTED_IN_ERRORS])
    more = len(values) - _LISTED_IN_ERRORS
    return f"{shown} (and {more} more)" if more > 0 else shown


def as_percent(value: float) -> float:
    """The official formatting of every reported number: ``float(f"{100 * value:.2f}")``."""
    return float(f"{100 * value:.2f}")


def check_ks(ks: Sequence[int], option: str) -> None:
    """``ks`` (the k of top-k or R@k) must be positive integers; ``option`` names them for the user."""
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise EvaluationInputError(f"{option} values must be positive integers, got {list(ks)}")


# ---------------------------------------------------------------------------------------------------
# Fields of a record
# ---------------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite int or float (JSON ``true`` is no number, though Python's bool is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def required_field(record: Mapping[str, Any], field: str, where: str) -> Any:
    """``record[field]``, or an error naming the record and the keys it has."""
    if field not in record:
        raise EvaluationInputError(f"{where}: missing field '{field}' (keys present: {sorted(record)})")
    return record[field]


def number_rows(value: Any, width: int, field: str, where: str, example: str) -> np.ndarray:
    """``value`` as a (n, width) float array of finite numbers, or an error showing the expected rows
    (``example``, e.g. ``"[st, ed]"``)."""
    if not isinstance(value, list) or not all(
        isinstance(row, list) and len(row) == width and all(is_number(x) for x in row) for row in value
    ):
        raise EvaluationInputError(f"{where}: '{field}' must be a list of {example} rows of finite numbers")
    return np.asarray(value, dtype=float).reshape(len(value), width)


# ---------------------------------------------------------------------------------------------------
# One prediction per key
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionKeys:
    """How an evaluator's errors speak of its prediction file, in which each line gives one ``prediction``
    for the ground-truth entry its field ``key`` names."""

    key: str  # the field naming the predicted entry: "qid", "vid", "ad_id", "key"
    prediction: str  # what one line gives: "prediction", "caption"
    expected: str  # the entries that need one, counted: "ground-truth qid(s)", "reference AD(s)"
    truth: str  # where those entries come from: "the ground truth", "the references", "the labels"
    why_every_one: str  # why a missing entry is an error: "R@k/N needs every AD of a movie"


def one_prediction_per_key(
    numbered: Iterable[tuple[int, Mapping[str, Any]]],
    expected: Collection[K],
    key_of: Callable[[Mapping[str, Any], str], K],
    value_of: Callable[[K, Mapping[str, Any], str], V],
    source: str,
    keys: PredictionKeys,
    unknown_hint: Callable[[set[K]], str] | None = None,
) -> dict[K, V]:
    """``{key: value}`` of the prediction records, exactly one for every key of ``expected``.

    ``numbered`` yields (line number, record) pairs (:func:`lamflow.fileio.iter_jsonl`'s); ``key_of(record,
    where)`` reads a record's key and ``value_of(key, record, where)`` what is scored of a record whose key is
    expected (``where`` is ``source:line``; both raise on a malformed record). Errors, all naming the fix: a
    key on two lines (both lines quoted), keys not in ``expected`` (listed, with ``unknown_hint(keys)`` when
    given: e.g. the split they belong to), expected keys without a line (listed). Keys not in ``expected``
    are reported after the whole file is read, so that the message counts them all.
    """
    values: dict[K, V] = {}
    first_line: dict[K, int] = {}
    unknown: set[K] = set()
    for line, record in numbered:
        where = f"{source}:{line}"
        key = key_of(record, where)
        if key in first_line:
            raise EvaluationInputError(
                f"{where}: duplicate {keys.key} {key!r} (first at line {first_line[key]}); "
                f"write one {keys.prediction} per {keys.key}"
            )
        first_line[key] = line
        if key in expected:
            values[key] = value_of(key, record, where)
        else:
            unknown.add(key)
    if unknown:
        hint = unknown_hint(unknown) if unknown_hint is not None else ""
        raise EvaluationInputError(
            f"{source}: {len(unknown)} {keys.key}(s) not in {keys.truth}: {listed(unknown)}" + (f"; {hint}" if hint else "")
        )
    missing = {key for key in expected if key not in values}
    if missing:
        raise EvaluationInputError(
            f"{source}: no {keys.prediction} for {len(missing)} of {len(expected)} {keys.expected}: "
            f"{listed(missing)}; {keys.why_every_one}"
        )
    return values


# ---------------------------------------------------------------------------------------------------
# Temporal windows
# ---------------------------------------------------------------------------------------------------


def temporal_iou(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """IoU of every [st, ed] window of ``windows_a`` (N, 2) with every one of ``windows_b`` (M, 2) -> (N, M).

    Union = len_a + len_b - intersection, as the official QVHighlights ``compute_temporal_iou_batch_cross``
    (the same floating-point operations, so IoUs that sit exactly on a threshold compare the same way).
    Ground-truth windows have a positive length, so the union is positive unless a predicted window is
    written with st > ed: then, as in the official code, the IoU is 0 / 0 (nan) or -0, and no threshold
    accepts it.
    """
    lengths_a = windows_a[:, 1] - windows_a[:, 0]
    lengths_b = windows_b[:, 1] - windows_b[:, 0]
    left = np.maximum(windows_a[:, None, 0], windows_b[None, :, 0])
    right = np.minimum(windows_a[:, None, 1], windows_b[None, :, 1])
    intersection = np.clip(right - left, 0, None)
    union = lengths_a[:, None] + lengths_b[None, :] - intersection
    return intersection / union

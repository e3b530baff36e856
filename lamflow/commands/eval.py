"""``lamflow eval``: score prediction files with the official metrics (argument parsing only)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a prediction file (QVHighlights official metrics, classification top-k accuracy)",
        description=(
            "Score a prediction file against its annotations and print the result as one JSON object. "
            "Inputs that cannot be scored (wrong or missing ids, malformed lines, windows out of range) "
            "stop with an error naming file:line and the fix; the exit status is then 2."
        ),
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    qvh = tasks.add_parser(
        "qvhighlights",
        help="moment retrieval + highlight detection, computed as the official QVHighlights evaluator",
        description=(
            "Compute the official QVHighlights metrics (moment_detr standalone_eval, reimplemented "
            "exactly): the printed object's 'brief' holds the 14 numbers papers quote (MR-full-R1@0.5, "
            "MR-full-R1@0.7, MR-full-mAP, MR-full-mAP@0.5, MR-full-mAP@0.75, MR-{short,middle,long}-mAP, "
            "HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}), in percent rounded to 2 decimals; the other keys "
            "hold the per-threshold details. Only the first 10 windows of each prediction are scored; "
            "windows ending after the video are scored as written (the official evaluator does not clip)."
        ),
    )
    qvh.add_argument("--gt", required=True, type=Path, metavar="GT.jsonl",
                     help="annotation file with labels, e.g. highlight_val_release.jsonl")
    qvh.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                     help="one prediction line per GT qid: qid, pred_relevant_windows [[st, ed, score], ...] "
                          "sorted by score, pred_saliency_scores (one per 2-second clip)")
    qvh.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    qvh.set_defaults(func=_run_qvhighlights)

    cls = tasks.add_parser(
        "classification",
        help="top-1 / top-5 accuracy of ranked label predictions",
        description=(
            "Top-k accuracy (percent, 2 decimals) of a JSONL prediction file whose lines are "
            '{"key": KEY, "top_labels": [best, second, ...]} against a label file (CSV key,label or '
            "JSON {key: label}). Every labelled key needs exactly one prediction."
        ),
    )
    cls.add_argument("--labels", required=True, type=Path, metavar="LABELS",
                     help="CSV with key,label rows (optional header) or a JSON object {key: label}")
    cls.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                     help='JSONL lines {"key": ..., "top_labels": [...]}, labels best first')
    cls.add_argument("--topk", type=int, nargs="+", default=[1, 5], metavar="K",
                     help="which top-k accuracies to report (default: 1 5)")
    cls.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    cls.set_defaults(func=_run_classification)


def _score(task: str, evaluate: Callable[[], dict], out: Path | None) -> int:
    """Print (and optionally write) ``evaluate()``'s result; unscorable input is exit status 2."""
    from lamflow.train.eval_qvhighlights import EvaluationInputError

    try:
        result = evaluate()
    except EvaluationInputError as error:
        print(f"lamflow eval {task}: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=4)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return 0


def _run_qvhighlights(args: argparse.Namespace) -> int:
    from lamflow.train.eval_qvhighlights import evaluate_files

    return _score("qvhighlights", lambda: evaluate_files(args.gt, args.pred), args.out)


def _run_classification(args: argparse.Namespace) -> int:
    from lamflow.train.eval_classification import evaluate_files

    return _score("classification", lambda: evaluate_files(args.labels, args.pred, tuple(args.topk)), args.out)

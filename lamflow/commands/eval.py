"""``lamflow eval``: score prediction files with the official metrics (argument parsing only)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from lamflow.errors import LamflowError
from lamflow.fileio import atomic_open


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,5, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a prediction file (QVHighlights, classification, captioning, audio description)",
        description=(
            "Score a prediction file against its annotations and print the result as one JSON object. "
            "Inputs that cannot be scored (wrong or missing ids, malformed lines, empty captions) stop "
            "with one error line naming file:line and the fix; the exit status is then 2."
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
            "windows ending after the video are scored as written (the official evaluator does not clip). "
            "Every file the official evaluator scores is scored, with its numbers: lines it accepts although "
            "they break the format (pred_saliency_scores shorter or longer than one score per 2-second "
            "clip, fitted to the ground truth's int(duration / 2) clips by padding with 0 or cutting; "
            "windows not sorted by score or outside the video; another vid) are counted in "
            "'adjusted_lines' and summarised on stderr; --strict refuses them. "
            "Ground truth: any file with the val schema: highlight_val_release.jsonl, or the public test "
            "answers highlight_test_with_gt.jsonl to score the test split locally (highlight_test_release"
            ".jsonl has no labels)."
        ),
    )
    qvh.add_argument("--gt", required=True, type=Path, metavar="GT.jsonl",
                     help="annotation file with labels: highlight_val_release.jsonl or highlight_test_with_gt.jsonl")
    qvh.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                     help="one prediction line per GT qid: qid, pred_relevant_windows [[st, ed, score], ...] "
                          "sorted by score, pred_saliency_scores (one per 2-second clip)")
    qvh.add_argument("--strict", action="store_true",
                     help="refuse lines the official evaluator scores although they break the format "
                          "(saliency length, unsorted or out-of-range windows, another vid)")
    qvh.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    qvh.set_defaults(func=_run_qvhighlights)

    cls = tasks.add_parser(
        "classification",
        help="top-1 / top-5 accuracy of ranked label predictions",
        description=(
            "Top-k accuracy (percent, 2 decimals) of a JSONL prediction file whose lines are "
            '{"key": KEY, "top_labels": [best, second, ...]} against a label file (CSV key,label or '
            "JSON {key: label}), or against the class folders of an image folder's extraction DIR (each "
            "sample's label is the folder its recorded name CLASS/IMAGE starts with). Every labelled key "
            "needs exactly one prediction."
        ),
    )
    cls.add_argument("--labels", required=True, type=Path, metavar="LABELS",
                     help="CSV with key,label rows (optional header), a JSON object {key: label}, or the extraction "
                          "DIR of an image folder (lamflow extract ROOT --media image): labels = class folders")
    cls.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                     help='JSONL lines {"key": ..., "top_labels": [...]}, labels best first')
    cls.add_argument("--topk", type=int, nargs="+", default=[1, 5], metavar="K",
                     help="which top-k accuracies to report (default: 1 5)")
    cls.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    cls.set_defaults(func=_run_classification)

    cap = tasks.add_parser(
        "captioning",
        help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when available), computed by pycocoevalcap",
        description=(
            "Caption metrics computed by pycocoevalcap itself (coco-caption; Java runs its PTB tokenizer "
            "and METEOR): Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (pycocoevalcap's CIDEr is CIDEr-D; its "
            "IDF comes from the references scored, so a subset of videos scores differently from the whole "
            "set) as fractions, under pycocoevalcap's own keys. SPICE is null with a note unless the "
            "Stanford CoreNLP 3.6.0 jars it would download are already in pycocoevalcap's spice/lib/. "
            "Every scored video needs exactly one predicted caption; captions must be non-empty."
        ),
    )
    cap.add_argument("--gt", required=True, type=Path, metavar="GT",
                     help="MSRVTT train_val_videodatainfo.json / test_videodatainfo.json (a .json file), or "
                          'JSONL lines {"vid", "caption"}, several lines per video for several references')
    cap.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                     help='JSONL, one line {"vid", "caption"} per scored video')
    cap.add_argument("--split", metavar="SPLIT",
                     help="MSRVTT only: score the videos of this split (train, validate or test); "
                          "default: every video in the file")
    cap.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    cap.set_defaults(func=_run_captioning)

    ad = tasks.add_parser(
        "ad",
        help="audio description R@k/N (AutoAD-II recall within neighbouring ADs)",
        description=(
            "R@k/N as AutoAD-II defines it, in percent: per movie, reference ADs in time order and each "
            "generated AD joined to its reference by ad_id; windows of N consecutive ADs with stride N/2, a "
            "trailing partial window dropped; a generated AD is recalled when its own reference is among "
            "the k references of its window most similar to it; averaged over the windows of a movie, then "
            "over movies. A movie with fewer than N ADs is scored as one window of all its ADs (the official "
            "code fails on it), and a window smaller than k recalls everything. Ties rank the earlier "
            "reference first. --similarity bertscore (default) is the official BERTScore F1 with "
            "roberta-large, whose weights must be available locally (Hugging Face cache or "
            "--bertscore-model DIR); --similarity tfidf runs offline and is labelled in the output as NOT "
            "the official metric."
        ),
    )
    ad.add_argument("--gt", required=True, type=Path, metavar="GT.jsonl",
                    help="JSONL lines {ad_id, movie, start, end, text} (MAD-v2 loaders' movie_id and ad "
                         "are accepted for movie and text)")
    ad.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                    help="JSONL lines {ad_id, caption}, one per reference AD")
    ad.add_argument("--k", type=_int_list, default=[1, 5], metavar="K1,K2",
                    help="recall cut-offs, comma-separated (default: 1,5)")
    ad.add_argument("--n", type=int, default=16, metavar="N", help="window size in ADs (default: 16)")
    ad.add_argument("--similarity", choices=("bertscore", "tfidf"), default="bertscore",
                    help="bertscore: official (BERTScore F1); tfidf: offline, NOT the official metric")
    ad.add_argument("--bertscore-model", default="roberta-large", metavar="NAME_OR_DIR",
                    help="model for --similarity bertscore: a name in the local Hugging Face cache or a "
                         "directory saved with save_pretrained (default: roberta-large)")
    ad.add_argument("--bertscore-layers", type=int, metavar="L",
                    help="hidden layer BERTScore uses (default: bert_score's choice for a known model name, "
                         "or a directory named like one, e.g. 17 for roberta-large; required for other models)")
    ad.add_argument("--device", help="device for BERTScore, e.g. cpu or cuda (default: cuda when available)")
    ad.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    ad.set_defaults(func=_run_ad)


def _score(
    task: str, evaluate: Callable[[], dict], out: Path | None, note: Callable[[dict], str | None] | None = None
) -> int:
    """Print (and optionally write) ``evaluate()``'s result, then ``note(result)`` on stderr; unscorable
    input is one error line and exit status 2."""
    try:
        result = evaluate()
    except LamflowError as error:
        print(f"lamflow eval {task}: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=4)
    print(text)
    if out is not None:
        with atomic_open(out) as handle:
            handle.write(text + "\n")
    message = note(result) if note is not None else None
    if message:
        print(f"lamflow eval {task}: note: {message}", file=sys.stderr)
    return 0


def _run_qvhighlights(args: argparse.Namespace) -> int:
    from lamflow.train.tasks.qvhighlights_eval import adjustment_summary, evaluate_files

    return _score(
        "qvhighlights",
        lambda: evaluate_files(args.gt, args.pred, strict=args.strict),
        args.out,
        lambda result: adjustment_summary(result["adjusted_lines"]),
    )


def _run_classification(args: argparse.Namespace) -> int:
    from lamflow.train.tasks.classification_eval import evaluate_files

    return _score("classification", lambda: evaluate_files(args.labels, args.pred, tuple(args.topk)), args.out)


def _run_captioning(args: argparse.Namespace) -> int:
    from lamflow.train.tasks.captioning_eval import evaluate_files

    return _score(
        "captioning",
        lambda: evaluate_files(args.gt, args.pred, split=args.split),
        args.out,
        lambda result: "; ".join(result["notes"]),
    )


def _run_ad(args: argparse.Namespace) -> int:
    from lamflow.train.tasks.audio_description_eval import BertScoreSimilarity, TfidfSimilarity, evaluate_files

    if args.similarity == "bertscore":
        similarity = BertScoreSimilarity(args.bertscore_model, args.bertscore_layers, args.device)
    else:
        similarity = TfidfSimilarity()
    return _score(
        "ad",
        lambda: evaluate_files(args.gt, args.pred, similarity, ks=args.k, n=args.n),
        args.out,
        lambda result: None if result["similarity"]["official"] else result["similarity"]["note"],
    )

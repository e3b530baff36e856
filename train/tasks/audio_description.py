"""Task "audio_description": an audio description (AD) per movie moment (MAD-v2 / AutoAD-style).

Options (the caption files of ``captioning`` plus the context around each AD), the adapter
(``lamflow.datasets.audio_description.AudioDescriptionTask``), ``{"ad_id", "caption"}`` lines, and
``lamflow eval ad`` (AutoAD-II's R@k/N). The rest is the captioning task's: the decoder, its options and
loss, beam search, and the caption metrics used during training.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamflow.datasets.audio_description import AudioDescriptionTask, load_ads
from lamflow.errors import ConfigError
from lamflow.train.tasks.captioning import (
    CAPTIONING,
    CaptionFileOptions,
    caption_files,
    caption_metrics,
    caption_rows,
    validate_caption_files,
)
from lamflow.train.tasks.spec import EvalCommand

if TYPE_CHECKING:
    from lamflow.train.config import DataConfig

PREDICTION_KEY = AudioDescriptionTask.prediction_field


@dataclass
class AudioDescriptionDataOptions(CaptionFileOptions):
    # Seconds of features before an AD's start that form its context (task audio_description).
    ad_context_before: float = 3.0
    # Seconds of features after an AD's end that form its context (task audio_description).
    ad_context_after: float = 3.0


def validate_data(data: "DataConfig") -> None:
    validate_caption_files(data)
    for name in ("ad_context_before", "ad_context_after"):
        value = getattr(data, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"data.{name} must be a finite number of seconds >= 0, got {value!r}")


def build_adapter(data: "DataConfig", split: str, shards: str, mode: str) -> Any:
    return AudioDescriptionTask(caption_files(data, split), data.ad_context_before, data.ad_context_after)


def score(rows: list[dict[str, Any]], data: "DataConfig") -> dict[str, float]:
    """The caption metrics of the generated ADs against their reference ADs (R@k/N needs BERTScore's
    weights, which training does not assume: ``lamflow eval ad`` computes it from the prediction file)."""
    references = {ad.ad_id: [ad.text] for ads in load_ads(data.val_captions).values() for ad in ads}
    return caption_metrics(rows, PREDICTION_KEY, references)


def _recall_cutoffs(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,5, got {text!r}") from None


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, metavar="GT.jsonl",
                        help="JSONL lines {ad_id, movie, start, end, text} (MAD-v2 loaders' movie_id and ad "
                             "are accepted for movie and text)")
    parser.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                        help="JSONL lines {ad_id, caption}, one per reference AD")
    parser.add_argument("--k", type=_recall_cutoffs, default=[1, 5], metavar="K1,K2",
                        help="recall cut-offs, comma-separated (default: 1,5)")
    parser.add_argument("--n", type=int, default=16, metavar="N", help="window size in ADs (default: 16)")
    parser.add_argument("--similarity", choices=("bertscore", "tfidf"), default="bertscore",
                        help="bertscore: official (BERTScore F1); tfidf: offline, NOT the official metric")
    parser.add_argument("--bertscore-model", default="roberta-large", metavar="NAME_OR_DIR",
                        help="model for --similarity bertscore: a name in the local Hugging Face cache or a "
                             "directory saved with save_pretrained (default: roberta-large)")
    parser.add_argument("--bertscore-layers", type=int, metavar="L",
                        help="hidden layer BERTScore uses (default: bert_score's choice for a known model name, "
                             "or a directory named like one, e.g. 17 for roberta-large; required for other models)")
    parser.add_argument("--device", help="device for BERTScore, e.g. cpu or cuda (default: cuda when available)")


def _evaluate_files(args: argparse.Namespace) -> dict:
    from lamflow.train.tasks.audio_description_eval import BertScoreSimilarity, TfidfSimilarity, evaluate_files

    if args.similarity == "bertscore":
        similarity = BertScoreSimilarity(args.bertscore_model, args.bertscore_layers, args.device)
    else:
        similarity = TfidfSimilarity()
    return evaluate_files(args.gt, args.pred, similarity, ks=args.k, n=args.n)


# The captioning task's decoder, loss, generation and headline metrics, over AD files and their context.
AUDIO_DESCRIPTION = dataclasses.replace(
    CAPTIONING,
    name="audio_description",
    summary="an audio description per movie moment (MAD-v2 / AutoAD-style), written from the context around it",
    data_options=AudioDescriptionDataOptions,
    validate_data=validate_data,
    build_adapter=build_adapter,
    prediction_rows=caption_rows(PREDICTION_KEY),
    prediction_key=PREDICTION_KEY,
    score=score,
    eval_command=EvalCommand(
        name="ad",
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
        add_arguments=_eval_arguments,
        evaluate=_evaluate_files,
        note=lambda result: None if result["similarity"]["official"] else result["similarity"]["note"],
    ),
)

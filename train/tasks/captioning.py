"""Task "captioning": a caption per video (MSRVTT-style), and the parts every caption-writing task shares.

Options, the adapter (``lamflow.datasets.captioning.CaptioningTask``), the caption decoder
(``lamflow.train.caption_decoder``) as head, teacher-forced cross-entropy, ``{"vid", "caption"}`` lines,
pycocoevalcap scores and ``lamflow eval captioning``. The audio description task
(``lamflow.train.tasks.audio_description``) reuses the caption files' options, the decoder, the loss, the
lines and the scoring from here.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lamflow.contract import TEXT_STREAM
from lamflow.datasets.captioning import CaptioningTask
from lamflow.errors import ConfigError
from lamflow.train.caption_decoder import PAD, CaptionDecoder
from lamflow.train.typed_config import at_least
from lamflow.train.tasks.spec import Encoded, EvalCommand, HeadFacts, PredictionContext, TaskSpec

if TYPE_CHECKING:
    from lamflow.train.config import DataConfig, ModelConfig

# Headline caption metrics, under pycocoevalcap's own keys; CIDEr, the one captioning papers rank by, first.
CAPTION_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")


@dataclass
class CaptionFileOptions:
    # Captions of the training videos (task captioning): MSRVTT's videodatainfo .json or a jsonl of
    # {"vid", "caption"} lines; task audio_description: a jsonl of ADs {"ad_id", "movie", "start", "end", "text"}.
    train_captions: str = ""
    # The same for the validation split; also the references its caption metrics (CIDEr, BLEU, ...) use.
    val_captions: str = ""


@dataclass
class CaptioningDataOptions(CaptionFileOptions):
    # MSRVTT split of train_captions to train on (train, validate or test); null = the file's only split.
    # Leave it null for jsonl caption files, which have no splits.
    train_caption_split: str | None = None
    # MSRVTT split of val_captions to validate on (e.g. validate); null = the file's only split.
    val_caption_split: str | None = None


@dataclass
class CaptionModelOptions:
    # Layers of the caption decoder (generation tasks): causal self-attention + cross-attention to the encoder,
    # at the encoder's width and head count (train/caption_decoder.py says why a decoder and not SwinBERT's MLM).
    decoder_layers: int = 2
    # Words the decoder reads and writes: "train" = the BPE tokens of the training captions (the mapping is
    # stored in the checkpoint), "full" = all 49,408 tokens of open_clip's BPE vocabulary.
    caption_vocabulary: Literal["train", "full"] = "train"
    # Longest caption in BPE tokens, start and end tokens included: longer training captions are cut, and
    # generation stops here.
    max_caption_tokens: int = 32
    # Hypotheses kept by the caption beam search; 1 = greedy decoding.
    beam_size: int = 1
    # Finished beam hypotheses are ranked by log-probability / length ** length_penalty (0 = the plain sum,
    # which favours short captions).
    length_penalty: float = 1.0


def validate_caption_files(data: "DataConfig") -> None:
    """The checks every caption-writing task makes: its caption files, and no text input stream."""
    if not data.train_captions:
        raise ConfigError(f"data.train_captions is required for task {data.task} (the training captions)")
    if data.val_shards and not data.val_captions:
        raise ConfigError(f"data.val_captions is required when data.val_shards is set (task {data.task})")
    if TEXT_STREAM in data.loader.streams:
        raise ConfigError(f"data.loader.streams must not list {TEXT_STREAM!r} for task {data.task}: its text is "
                          f"the output, not an input; e.g. [video, audio]")


def validate_decoder(model: "ModelConfig") -> None:
    at_least("model.decoder_layers", model.decoder_layers, 1)
    at_least("model.max_caption_tokens", model.max_caption_tokens, 3)  # start, a word, end
    at_least("model.beam_size", model.beam_size, 1)
    if not (model.length_penalty >= 0 and math.isfinite(model.length_penalty)):
        raise ConfigError(f"model.length_penalty must be a finite number >= 0, got {model.length_penalty}")


def caption_files(data: "DataConfig", split: str) -> str:
    captions = data.train_captions if split == "train" else data.val_captions
    if not captions:
        raise ConfigError(f"data.{split}_captions is required to read the {split} split of task {data.task}")
    return captions


def build_adapter(data: "DataConfig", split: str, shards: str, mode: str) -> Any:
    caption_split = data.train_caption_split if split == "train" else data.val_caption_split
    # Training sees every caption of a video; evaluation one item per video, scored against all of them.
    return CaptioningTask(caption_files(data, split), caption_split, per_caption=mode == "train")


def vocabulary_facts(model: "ModelConfig", adapter: Any) -> HeadFacts:
    """The decoder's BPE ids: those of the training captions with model.caption_vocabulary "train", every id
    with "full"."""
    from lamflow.datasets.caption_text import end_id, start_id, vocabulary_size

    if model.caption_vocabulary == "full":
        return HeadFacts(vocabulary=list(range(vocabulary_size())))
    return HeadFacts(vocabulary=sorted(adapter.token_ids() | {start_id(), end_id()}))


def build_decoder(model: "ModelConfig", streams: Sequence[str], facts: HeadFacts) -> nn.Module:
    if not facts.vocabulary:
        raise ValueError("a caption task needs the caption vocabulary (BPE ids the decoder reads and writes)")
    encoder = model.encoder
    return CaptionDecoder(encoder.dim, encoder.heads, model.decoder_layers, encoder.dropout, facts.vocabulary,
                          model.max_caption_tokens)


def run_decoder(head: nn.Module, encoded: Encoded, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Teacher-forced ``{"logits", "targets"}`` of the batch's captions."""
    return head(encoded.hidden, encoded.padding, batch["caption_tokens"], batch["caption_padding"])


def generate_captions(head: nn.Module, encoded: Encoded, model: "ModelConfig") -> list[list[int]]:
    """One caption per item as BPE ids, with model.beam_size and model.length_penalty."""
    return head.generate(encoded.hidden, encoded.padding, model.beam_size, model.length_penalty)


def caption_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: "ModelConfig") -> dict[str, torch.Tensor]:
    """Cross-entropy of every next caption token under teacher forcing, padding excluded (config is unused)."""
    logits = outputs["logits"].float()
    return {"loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]), outputs["targets"].reshape(-1), ignore_index=PAD)}


def caption_rows(field: str) -> Callable[[dict[str, Any], list[list[int]], PredictionContext], list[dict[str, Any]]]:
    """The lines function of a caption task whose lines are ``{field: the item's caption key, "caption": text}``."""

    def rows(batch: dict[str, Any], captions: list[list[int]], context: PredictionContext) -> list[dict[str, Any]]:
        from lamflow.datasets.caption_text import decode_caption

        return [{field: key, "caption": decode_caption(ids)} for key, ids in zip(batch["caption_keys"], captions)]

    return rows


def caption_metrics(rows: list[dict[str, Any]], field: str, references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr (SPICE when its models are present) of the lines,
    with the references of the predicted items only: CIDEr's IDF comes from them."""
    from lamflow.train.tasks.captioning_eval import caption_scores

    predicted = {row[field]: row["caption"] for row in rows}
    scores = caption_scores({key: references[key] for key in predicted}, predicted)
    return {name: value for name, value in scores.items() if value is not None}  # SPICE is None without its models


def score(rows: list[dict[str, Any]], data: "DataConfig") -> dict[str, float]:
    from lamflow.train.tasks.captioning_eval import load_references

    references, _ = load_references(data.val_captions, data.val_caption_split)
    return caption_metrics(rows, CaptioningTask.prediction_field, references)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, metavar="GT",
                        help="MSRVTT train_val_videodatainfo.json / test_videodatainfo.json (a .json file), or "
                             'JSONL lines {"vid", "caption"}, several lines per video for several references')
    parser.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                        help='JSONL, one line {"vid", "caption"} per scored video')
    parser.add_argument("--split", metavar="SPLIT",
                        help="MSRVTT only: score the videos of this split (train, validate or test); "
                             "default: every video in the file")


def _evaluate_files(args: argparse.Namespace) -> dict:
    from lamflow.train.tasks.captioning_eval import evaluate_files

    return evaluate_files(args.gt, args.pred, split=args.split)


CAPTIONING = TaskSpec(
    name="captioning",
    summary="a caption per video (MSRVTT-style), written by a decoder over the LAM encoder",
    data_options=CaptioningDataOptions,
    model_options=CaptionModelOptions,
    validate_data=validate_caption_files,
    validate_model=validate_decoder,
    build_adapter=build_adapter,
    head_facts=vocabulary_facts,
    build_head=build_decoder,
    run_head=run_decoder,
    loss=caption_loss,
    generate=generate_captions,
    prediction_rows=caption_rows(CaptioningTask.prediction_field),
    prediction_key=CaptioningTask.prediction_field,
    score=score,
    headline_metrics=CAPTION_METRICS,
    eval_command=EvalCommand(
        name="captioning",
        help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when available), computed by pycocoevalcap",
        description=(
            "Caption metrics computed by pycocoevalcap itself (coco-caption; Java runs its PTB tokenizer "
            "and METEOR): Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (pycocoevalcap's CIDEr is CIDEr-D; its "
            "IDF comes from the references scored, so a subset of videos scores differently from the whole "
            "set) as fractions, under pycocoevalcap's own keys. SPICE is null with a note unless the "
            "Stanford CoreNLP 3.6.0 jars it would download are already in pycocoevalcap's spice/lib/. "
            "Every scored video needs exactly one predicted caption; captions must be non-empty."
        ),
        add_arguments=_eval_arguments,
        evaluate=_evaluate_files,
        note=lambda result: "; ".join(result["notes"]),
    ),
)

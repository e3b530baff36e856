"""Task "qvhighlights": moment retrieval + highlight detection (QVHighlights), and MAD-style long videos.

Options, the adapter (``lamflow.datasets.qvhighlights.QVHighlightsTask``), the moment head, the loss,
official prediction lines, scoring (the QVHighlights evaluator, or recall at IoU for MAD annotations) and
``lamflow eval qvhighlights``.

Moment targets are built per video token, FCOS-style: a token whose time lies inside a ground-truth
window is foreground and regresses that window (the shortest one if several contain it); each window also
claims its nearest token, so a moment shorter than the frame spacing still has a positive.
"""
from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lamflow.datasets.qvhighlights import QVHighlightsTask, is_mad_file, load_queries
from lamflow.datasets.qvhighlights_format import CLIP_SECONDS, MAX_SALIENCY
from lamflow.errors import ConfigError
from lamflow.train.tasks.moment_head import MomentHead, decode_moments, token_windows
from lamflow.train.typed_config import at_least
from lamflow.train.tasks.spec import Encoded, EvalCommand, HeadFacts, PredictionContext, TaskSpec

if TYPE_CHECKING:
    from lamflow.datasets.texts import TextStore
    from lamflow.train.config import DataConfig, ModelConfig

MOMENT_STREAM = "video"  # moment windows and saliency are anchored on the video tokens


@dataclass
class MomentDataOptions:
    # QVHighlights annotation jsonl joined to the training shards by `vid` (task qvhighlights).
    train_annotations: str = ""
    # QVHighlights annotation jsonl for the validation split; also the ground truth of the official metrics.
    val_annotations: str = ""
    # Text shard set (DIR or .tar pattern, e.g. from `lamflow import-h5 LANG.h5 --stream text`) holding the
    # training queries' tokens by query id, for shards without them (MAD's sentence features); "" = none.
    train_texts: str = ""
    # The same for the validation queries.
    val_texts: str = ""
    # Cut each query's view to this many seconds of its video holding the ground-truth moment, times rebased
    # (training: a random position per epoch; validation: a fixed one per query); 0 = whole videos. For
    # hours-long videos (MAD) the encoder cannot take whole (datasets/qvhighlights.py).
    window_seconds: float = 0.0


@dataclass
class MomentModelOptions:
    # Moment windows written per query, best first (the official evaluator scores the top 10).
    num_windows: int = 10
    # Windows overlapping a better one by at least this IoU are dropped (1-D non-maximum suppression).
    nms_iou: float = 0.7
    # Loss weights (task qvhighlights): foreground logit, L1 on normalised offsets, 1-D GIoU, clip saliency.
    foreground_weight: float = 1.0
    offset_weight: float = 1.0
    giou_weight: float = 1.0
    saliency_weight: float = 1.0


LOSS_WEIGHTS = ("foreground_weight", "offset_weight", "giou_weight", "saliency_weight")


def validate_data(data: "DataConfig") -> None:
    if not data.train_annotations:
        raise ConfigError("data.train_annotations is required for task qvhighlights (an annotation jsonl)")
    if data.val_shards and not data.val_annotations:
        raise ConfigError("data.val_annotations is required when data.val_shards is set (task qvhighlights)")
    if not (data.window_seconds >= 0 and math.isfinite(data.window_seconds)):
        raise ConfigError(f"data.window_seconds must be a finite number >= 0 (0 = whole videos), got {data.window_seconds!r}")


def validate_model(model: "ModelConfig") -> None:
    at_least("model.num_windows", model.num_windows, 1)
    if not 0.0 < model.nms_iou <= 1.0:
        raise ConfigError(f"model.nms_iou must be in (0, 1], got {model.nms_iou}")
    for name in LOSS_WEIGHTS:
        value = getattr(model, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"model.{name} must be a finite number >= 0, got {value}")


@functools.lru_cache(maxsize=4)
def text_store(spec: str) -> "TextStore":
    """The TextStore of ``spec``, indexed once per process: train and val usually share one text shard set,
    and indexing reads every tar header of it (the store holds no open file, so sharing it is safe)."""
    from lamflow.datasets.texts import TextStore

    return TextStore(spec)


def build_adapter(data: "DataConfig", split: str, shards: str, mode: str) -> Any:
    annotations = data.train_annotations if split == "train" else data.val_annotations
    if not annotations:
        raise ConfigError(f"data.{split}_annotations is required to read the {split} split of task qvhighlights")
    texts = data.train_texts if split == "train" else data.val_texts
    # Training draws a window position per epoch; validation sees the same windows every time.
    return QVHighlightsTask(annotations, text_store=text_store(texts) if texts else None,
                            window_seconds=data.window_seconds, placement="random" if split == "train" else "fixed")


def build_head(model: "ModelConfig", streams: Sequence[str], facts: HeadFacts) -> nn.Module:
    if MOMENT_STREAM not in streams:
        raise ValueError(f"task qvhighlights anchors moments on the {MOMENT_STREAM!r} stream; add it to data.loader.streams")
    return MomentHead(model.encoder.dim)


def run_head(head: nn.Module, encoded: Encoded, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    video = encoded.spans[MOMENT_STREAM]
    # Saliency is predicted for the clips the batch's targets cover (QVHighlightsTask.collate).
    num_clips = batch["saliency"].shape[1]
    return head(encoded.hidden[:, video], encoded.times[:, video], encoded.padding[:, video],
                batch["duration"].float(), num_clips)


def moment_targets(
    times: torch.Tensor, padding: torch.Tensor, windows: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground (B, T) bool and the assigned ground-truth window (B, T, 2) seconds for each token."""
    batch, tokens = times.shape
    foreground = torch.zeros(batch, tokens, dtype=torch.bool, device=times.device)
    assigned = torch.zeros(batch, tokens, 2, dtype=torch.float32, device=times.device)
    for i, item_windows in enumerate(windows):
        if len(item_windows) == 0 or tokens == 0:
            continue
        gt = item_windows.to(times.device, torch.float32)  # (n, 2)
        t = times[i].float()
        inside = (t[:, None] >= gt[None, :, 0]) & (t[:, None] <= gt[None, :, 1])  # (T, n)
        centre_distance = (t[:, None] - gt.mean(-1)[None, :]).abs().masked_fill(padding[i][:, None], float("inf"))
        nearest = F.one_hot(centre_distance.argmin(0), tokens).T.bool()  # (T, n)
        claims = (inside | nearest) & ~padding[i][:, None]
        length = (gt[:, 1] - gt[:, 0])[None, :].expand(tokens, -1).masked_fill(~claims, float("inf"))
        choice = length.argmin(-1)
        foreground[i] = claims.any(-1)
        assigned[i] = gt[choice]
    return foreground, assigned


def giou_1d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching (N, 2) intervals (1 = identical, -1 = far apart)."""
    inter = (torch.minimum(pred[:, 1], target[:, 1]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
    union = (pred[:, 1] - pred[:, 0]) + (target[:, 1] - target[:, 0]) - inter
    hull = torch.maximum(pred[:, 1], target[:, 1]) - torch.minimum(pred[:, 0], target[:, 0])
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def moment_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: "ModelConfig") -> dict[str, torch.Tensor]:
    """Weighted sum ("loss") of foreground BCE, offset L1, GIoU and clip-saliency BCE, plus each term."""
    times, padding = outputs["token_times"], outputs["token_padding"]
    duration = batch["duration"].float()
    foreground, assigned = moment_targets(times, padding, batch["windows"])
    valid = ~padding
    fg_loss = F.binary_cross_entropy_with_logits(outputs["foreground"][valid], foreground[valid].float())

    positive = foreground & valid
    scale = duration[:, None].expand_as(times)[positive].clamp(min=1e-3)
    predicted = token_windows(outputs["offsets"], times, duration)[positive]
    target_offsets = torch.stack([times - assigned[..., 0], assigned[..., 1] - times], dim=-1)[positive]
    if positive.any():
        offset_loss = ((outputs["offsets"][positive] - target_offsets).abs().sum(-1) / scale).mean()
        giou_loss = (1.0 - giou_1d(predicted, assigned[positive])).mean()
    else:  # no ground truth in this batch: keep every parameter in the graph (DDP expects gradients)
        offset_loss = giou_loss = outputs["offsets"].sum() * 0.0

    # Saliency: mean annotator score (0..MAX_SALIENCY) per clip, as a soft target in [0, 1]. Queries without
    # saliency labels (MAD) are masked whole; a batch of only those has no target (the mean would be NaN).
    clip_valid = ~batch["saliency_padding"]
    if clip_valid.any():
        saliency_loss = F.binary_cross_entropy_with_logits(
            outputs["saliency"][clip_valid], (batch["saliency"].float() / MAX_SALIENCY).clamp(0, 1)[clip_valid]
        )
    else:  # keep the head in the graph (DDP expects a gradient for every parameter)
        saliency_loss = outputs["saliency"].sum() * 0.0
    terms = {"foreground": fg_loss, "offset": offset_loss, "giou": giou_loss, "saliency": saliency_loss}
    total = (
        config.foreground_weight * fg_loss
        + config.offset_weight * offset_loss
        + config.giou_weight * giou_loss
        + config.saliency_weight * saliency_loss
    )
    return {"loss": total, **terms}


def moment_rows(batch: dict[str, Any], outputs: dict[str, torch.Tensor], context: PredictionContext) -> list[dict[str, Any]]:
    """Official QVHighlights lines: ``qid``, ``query``, ``vid`` (the annotated name, not the shard key, as the
    evaluator checks it), ``pred_relevant_windows`` [[start, end, score], ...] best first and
    ``pred_saliency_scores`` (one per 2-second clip). A query whose view was cut to a window
    (data.window_seconds, e.g. MAD) has its windows in video time and a ``window`` field [start, end]: its
    ``pred_saliency_scores`` cover that window's 2-second clips."""
    annotations = [context.adapter.by_qid[int(qid)] for qid in batch["qids"]]
    # Each item saw [start, start + duration] of its video: all of it, or the window cut for its query
    # (data.window_seconds). Windows are decoded in that view and shifted back to video time.
    starts, durations = batch["window_starts"].tolist(), batch["query_durations"].tolist()
    duration = torch.tensor(durations, device=outputs["offsets"].device)
    clip_counts = [math.ceil(d / CLIP_SECONDS) for d in durations]
    windows, saliency = decode_moments(outputs, duration, clip_counts, context.model.num_windows, context.model.nms_iou)
    rows = []
    for a, start, view, item_windows, item_saliency in zip(annotations, starts, durations, windows, saliency):
        row = {"qid": a.qid, "query": a.query, "vid": a.vid,
               "pred_relevant_windows": [[round(s + start, 4), round(e + start, 4), score] for s, e, score in item_windows],
               "pred_saliency_scores": item_saliency}
        if view != a.duration:  # a cut view: its saliency scores are the 2-second clips of this window
            row["window"] = [round(start, 4), round(start + view, 4)]
        rows.append(row)
    return rows


def score(rows: list[dict[str, Any]], data: "DataConfig") -> dict[str, float]:
    """The 14 ``brief`` numbers of the official evaluator, against the annotated queries the rows cover (it
    requires a prediction for every ground-truth query); MAD annotations: recall at IoU
    (``mad_eval``, not MAD's full-movie protocol)."""
    from lamflow.fileio import read_jsonl
    from lamflow.train.tasks.qvhighlights_eval import evaluate

    if is_mad_file(data.val_annotations):  # no saliency and no QVHighlights evaluator: recall at IoU
        from lamflow.train.tasks.mad_eval import window_recall

        return window_recall(load_queries(data.val_annotations), rows)
    predicted = {row["qid"] for row in rows}
    ground_truth = [record for record in read_jsonl(data.val_annotations) if record.get("qid") in predicted]
    return evaluate(ground_truth, rows, gt_source=data.val_annotations)["brief"]


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, metavar="GT.jsonl",
                        help="annotation file with labels: highlight_val_release.jsonl or highlight_test_with_gt.jsonl")
    parser.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                        help="one prediction line per GT qid: qid, pred_relevant_windows [[st, ed, score], ...] "
                             "sorted by score, pred_saliency_scores (one per 2-second clip)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse lines the official evaluator scores although they break the format "
                             "(saliency length, unsorted or out-of-range windows, another vid)")


def _evaluate_files(args: argparse.Namespace) -> dict:
    from lamflow.train.tasks.qvhighlights_eval import evaluate_files

    return evaluate_files(args.gt, args.pred, strict=args.strict)


def _adjustments(result: dict) -> str | None:
    from lamflow.train.tasks.qvhighlights_eval import adjustment_summary

    return adjustment_summary(result["adjusted_lines"])


EVAL_COMMAND = EvalCommand(
    name="qvhighlights",
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
    add_arguments=_eval_arguments,
    evaluate=_evaluate_files,
    note=_adjustments,
)

QVHIGHLIGHTS = TaskSpec(
    name="qvhighlights",
    summary="moment retrieval + highlight detection (QVHighlights; MAD-style long videos with data.window_seconds)",
    data_options=MomentDataOptions,
    model_options=MomentModelOptions,
    validate_data=validate_data,
    validate_model=validate_model,
    build_adapter=build_adapter,
    head_facts=lambda model, adapter: HeadFacts(),
    build_head=build_head,
    run_head=run_head,
    loss=moment_loss,
    prediction_rows=moment_rows,
    prediction_key=QVHighlightsTask.prediction_field,
    key_order=int,
    score=score,
    headline_metrics=("MR-full-mAP", "MR-full-R1@0.5", "MR-full-R1@0.7", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"),
    eval_command=EVAL_COMMAND,
)

"""Training losses: moment retrieval + saliency (QVHighlights), classification, and captions (the generation tasks).

Moment targets are built per video token, FCOS-style: a token whose time lies inside a ground-truth
window is foreground and regresses that window (the shortest one if several contain it); each window also
claims its nearest token, so a moment shorter than the frame spacing still has a positive.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from lamflow.datasets.qvhighlights_format import MAX_SALIENCY
from lamflow.train.caption_decoder import PAD
from lamflow.train.config import ModelConfig
from lamflow.train.heads import token_windows


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


def moment_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: ModelConfig) -> dict[str, torch.Tensor]:
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


def classification_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Cross-entropy of the class logits (config is unused; same signature as :func:`moment_loss`)."""
    return {"loss": F.cross_entropy(outputs["logits"], batch["labels"])}


def caption_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Cross-entropy of every next caption token under teacher forcing, padding excluded (config is unused)."""
    logits = outputs["logits"].float()
    return {"loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]), outputs["targets"].reshape(-1), ignore_index=PAD)}


TASK_LOSSES = {"qvhighlights": moment_loss, "classification": classification_loss, "captioning": caption_loss,
               "audio_description": caption_loss}

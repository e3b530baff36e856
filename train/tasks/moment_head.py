"""The moment-retrieval head on top of the encoder's hidden states, and the decoding of its outputs.

Moment retrieval is anchor-free (FCOS-style): every video token predicts a foreground logit (is this
instant inside a moment matching the query?) and its distances in seconds to the moment's start and end.
Decoding turns each valid token into a scored window and keeps the best ones after 1-D non-maximum
suppression. Saliency is predicted per video token and averaged into the 2-second clips the QVHighlights
annotation (and evaluator) uses, so it does not depend on the frame rate of the shards.
"""
from __future__ import annotations

import torch
from torch import nn

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS


def _mlp(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))


class MomentHead(nn.Module):
    """Per video token: foreground logit, (start, end) offsets in seconds, saliency logit pooled per clip."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.foreground = _mlp(dim, 1)
        self.offsets = _mlp(dim, 2)
        self.saliency = nn.Linear(dim, 1)

    def forward(
        self,
        hidden: torch.Tensor,
        times: torch.Tensor,
        padding: torch.Tensor,
        duration: torch.Tensor,
        num_clips: int,
    ) -> dict[str, torch.Tensor]:
        """hidden (B, T, dim) of the video tokens, times/padding (B, T), duration (B,) seconds.

        Returns foreground (B, T) logits, offsets (B, T, 2) seconds before/after the token, saliency
        (B, num_clips) logits, and the token times/padding the windows are anchored on.
        """
        hidden = self.norm(hidden)
        # Offsets as a fraction of the video's duration: scale-free across 10-s and 150-s videos.
        offsets = torch.sigmoid(self.offsets(hidden).float()) * duration.float()[:, None, None]
        token_saliency = self.saliency(hidden).squeeze(-1).float()
        return {
            "foreground": self.foreground(hidden).squeeze(-1).float(),
            "offsets": offsets,
            "saliency": pool_to_clips(token_saliency, times, padding, num_clips),
            "token_times": times,
            "token_padding": padding,
        }


def pool_to_clips(
    token_scores: torch.Tensor, times: torch.Tensor, padding: torch.Tensor, num_clips: int
) -> torch.Tensor:
    """Average token scores (B, T) into (B, num_clips) 2-second clips by token time.

    A clip holding no token (frames sparser than 2 s, or a video shorter than its annotated duration)
    takes the score of the token nearest to its centre, so every clip gets a score.
    """
    batch, tokens = token_scores.shape
    if tokens == 0:
        return token_scores.new_zeros(batch, num_clips)
    clips = torch.arange(num_clips, device=times.device)
    clip_of_token = torch.floor(times / CLIP_SECONDS).long()
    member = (clip_of_token[:, None, :] == clips[None, :, None]) & ~padding[:, None, :]  # (B, C, T)
    centres = (clips.to(times.dtype) + 0.5) * CLIP_SECONDS
    distance = (times[:, None, :] - centres[None, :, None]).abs().masked_fill(padding[:, None, :], float("inf"))
    nearest = nn.functional.one_hot(distance.argmin(-1), tokens).bool()
    weights = torch.where(member.any(-1, keepdim=True), member, nearest).to(token_scores.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.einsum("bct,bt->bc", weights, token_scores)


def token_windows(offsets: torch.Tensor, times: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) windows [start, end] in seconds from token times and offsets, clipped to the video."""
    start = (times - offsets[..., 0]).clamp(min=0.0)
    end = torch.minimum(times + offsets[..., 1], duration[:, None].to(times.dtype))
    return torch.stack([start, torch.maximum(start, end)], dim=-1)


def interval_iou(windows: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU between (N, 2) and (M, 2) intervals -> (N, M)."""
    inter = (torch.minimum(windows[:, None, 1], others[None, :, 1]) - torch.maximum(windows[:, None, 0], others[None, :, 0])).clamp(min=0)
    union = (windows[:, 1] - windows[:, 0])[:, None] + (others[:, 1] - others[:, 0])[None, :] - inter
    return inter / union.clamp(min=1e-6)


def nms_1d(windows: torch.Tensor, scores: torch.Tensor, iou_threshold: float, keep: int) -> list[int]:
    """Indices of the best ``keep`` windows, greedily dropping any that overlaps a kept one by >= threshold."""
    order = torch.argsort(scores, descending=True, stable=True)
    overlaps = interval_iou(windows, windows)
    kept: list[int] = []
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    for index in order.tolist():
        if suppressed[index]:
            continue
        kept.append(index)
        if len(kept) == keep:
            break
        suppressed |= overlaps[index] >= iou_threshold
    return kept


def decode_moments(
    outputs: dict[str, torch.Tensor], duration: torch.Tensor, clip_counts: list[int], num_windows: int, nms_iou: float
) -> tuple[list[list[list[float]]], list[list[float]]]:
    """Official-format predictions per item: windows [[start, end, score], ...] best first (at most
    ``num_windows``, inside [0, duration]), and ``clip_counts[i]`` saliency scores, one per 2-second clip."""
    windows = token_windows(outputs["offsets"], outputs["token_times"], duration).detach().float().cpu()
    scores = torch.sigmoid(outputs["foreground"].detach().float()).cpu()
    padding = outputs["token_padding"].cpu()
    saliency = torch.sigmoid(outputs["saliency"].detach().float()).cpu()
    all_windows, all_saliency = [], []
    for i, clips in enumerate(clip_counts):
        valid = ~padding[i]
        item_windows, item_scores = windows[i][valid], scores[i][valid]
        kept = nms_1d(item_windows, item_scores, nms_iou, num_windows)
        ranked = [[*(round(v, 4) for v in item_windows[k].tolist()), round(float(item_scores[k]), 6)] for k in kept]
        if not ranked:  # no video token at all: the whole video, with no confidence
            ranked = [[0.0, float(duration[i]), 0.0]]
        item_saliency = saliency[i, :clips].tolist()
        item_saliency += [0.0] * (clips - len(item_saliency))
        all_windows.append(ranked)
        all_saliency.append([round(v, 6) for v in item_saliency])
    return all_windows, all_saliency

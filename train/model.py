"""MultimodalLAMModel: several time-stamped token streams -> one LAM-encoded sequence -> a task head.

Each stream (query text, video frames, audio hops...) has its own feature size and token rate. Every
stream is normalised and projected to the model width; a modality embedding says which stream a token
came from and a sinusoidal embedding of its time in seconds keeps streams of different rates aligned
(a frame at 12.0 s and the audio hop at 12.0 s get the same time code). The streams are concatenated in
the configured order ([query ; video ; audio]) and encoded by the LAM encoder with the padding mask.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from lamflow.lam import LAMEncoder
from lamflow.train.config import ModelConfig
from lamflow.train.tasks import get_task
from lamflow.train.tasks.spec import Encoded, HeadFacts


class TimeEmbedding(nn.Module):
    """Seconds -> dim: sin/cos at geometrically spaced periods from 1 s to ``max_period``, then a linear map."""

    def __init__(self, dim: int, frequencies: int, max_period: float) -> None:
        super().__init__()
        periods = torch.logspace(0.0, math.log10(max_period), frequencies)
        self.register_buffer("angular_speed", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * frequencies, dim)

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        angles = seconds.float().unsqueeze(-1) * self.angular_speed
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


class RunningStandardizer(nn.Module):
    """Per-feature standardisation with running statistics of the real (non-padding) training tokens.

    Why not only LayerNorm: CLIP features (random-weight ones especially) share one dominant direction, so
    frames that differ in content differ by a few percent of the vector; per-token LayerNorm keeps that
    common part. Subtracting the per-feature mean and dividing by the per-feature spread over the data
    makes the differences the signal. The statistics are buffers (saved in checkpoints, broadcast by DDP
    from rank 0), updated in training mode and frozen in eval mode, so train and eval see the same map.
    """

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, features: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        if self.training:
            real = features[~padding].detach()
            if len(real) > 1:
                # Plain average over the first 1/momentum batches, then an exponential moving average.
                rate = max(self.momentum, 1.0 / float(self.updates + 1))
                self.mean.lerp_(real.mean(0), rate)
                self.var.lerp_(real.var(0, unbiased=False), rate)
                self.updates += 1
        return (features - self.mean) * torch.rsqrt(self.var + self.eps)


def downsample_stream(
    features: torch.Tensor, padding: torch.Tensor, times: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average every ``factor`` consecutive tokens (features and times, padding excluded).

    A pooled token is padding only when all of its tokens were padding.
    """
    if factor == 1:
        return features, padding, times
    batch, tokens, width = features.shape
    groups = math.ceil(tokens / factor)
    extra = groups * factor - tokens
    keep = (~padding).to(features.dtype)
    if extra:
        features = nn.functional.pad(features, (0, 0, 0, extra))
        keep = nn.functional.pad(keep, (0, extra))
        times = nn.functional.pad(times, (0, extra))
    keep = keep.view(batch, groups, factor)
    count = keep.sum(-1)
    pooled = (features.view(batch, groups, factor, width) * keep.unsqueeze(-1)).sum(2) / count.clamp(min=1).unsqueeze(-1)
    pooled_times = (times.view(batch, groups, factor) * keep).sum(-1) / count.clamp(min=1)
    return pooled, count == 0, pooled_times


class MultimodalLAMModel(nn.Module):
    """LAM encoder over the concatenated streams with the head of a task (``lamflow.train.tasks``).

    ``forward(batch)`` takes a collated batch (the batch contract) already on the model's device and
    returns the task head's outputs (``TaskSpec.run_head``: e.g. foreground/offsets/saliency for
    qvhighlights, ``{"logits"}`` for classification, the teacher-forced ``{"logits", "targets"}`` of the
    caption decoder); ``generate(batch)`` is the task's generation (captions), for tasks that generate.
    """

    def __init__(
        self,
        config: ModelConfig,
        input_dims: dict[str, int],
        streams: Sequence[str],
        task: str,
        facts: HeadFacts = HeadFacts(),
    ) -> None:
        super().__init__()
        missing = [name for name in streams if name not in input_dims]
        if missing:
            raise ValueError(f"model.input_dims has no size for stream(s) {missing}; give e.g. {{{missing[0]}: 512}} or auto")
        self.config = config
        self.streams = tuple(streams)
        self.spec = get_task(task)
        self.standardizers = nn.ModuleDict({name: RunningStandardizer(input_dims[name]) for name in self.streams})
        self.projections = nn.ModuleDict(
            {name: nn.Sequential(nn.LayerNorm(input_dims[name]), nn.Linear(input_dims[name], config.encoder.dim)) for name in self.streams}
        )
        self.modality = nn.Embedding(len(self.streams), config.encoder.dim)
        self.time = TimeEmbedding(config.encoder.dim, config.time_frequencies, config.max_period)
        self.dropout = nn.Dropout(config.encoder.dropout)
        self.encoder = LAMEncoder(config.encoder)
        self.head = self.spec.build_head(config, self.streams, facts)

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, slice]]:
        """Project, embed and concatenate the streams: (x (B, L, dim), padding (B, L), times (B, L), spans)."""
        pieces, paddings, times, spans, start = [], [], [], {}, 0
        for index, name in enumerate(self.streams):
            features, padding, stamps = downsample_stream(
                batch["streams"][name].float(),
                batch["stream_padding"][name],
                batch["stream_timestamps"][name].float(),
                self.config.downsample.get(name, 1),
            )
            tokens = self.projections[name](self.standardizers[name](features, padding)) + self.modality.weight[index]
            pieces.append(tokens)
            paddings.append(padding)
            times.append(stamps)
            spans[name] = slice(start, start + tokens.shape[1])
            start += tokens.shape[1]
        times_all = torch.cat(times, dim=1)
        x = torch.cat(pieces, dim=1) + self.time(times_all)
        return self.dropout(x), torch.cat(paddings, dim=1), times_all, spans

    def attention_masks(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[tuple[str, int, int]], torch.Tensor]:
        """Each layer's LAM mask for ``batch``, where each stream sits in the sequence, and the padding
        (the inputs of ``lamflow.lam.save_masks``). Empty list for mask "none"."""
        x, padding, _, spans = self.embed(batch)
        masks = self.encoder(x, key_padding_mask=padding, return_masks=True).masks
        return masks, [(name, span.start, span.stop) for name, span in spans.items()], padding

    def encode(self, batch: dict[str, Any]) -> Encoded:
        """The LAM encoder's hidden states (B, L, dim), with the padding, times and stream spans of ``embed``."""
        x, padding, times, spans = self.embed(batch)
        return Encoded(self.encoder(x, key_padding_mask=padding).hidden, padding, times, spans)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.spec.run_head(self.head, self.encode(batch), batch)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> Any:
        """The task's generated outputs (one caption per item as BPE ids, with model.beam_size and
        model.length_penalty); only for tasks whose spec generates."""
        if self.spec.generate is None:
            raise TypeError(f"task {self.spec.name} does not generate: call the model")
        return self.spec.generate(self.head, self.encode(batch), self.config)

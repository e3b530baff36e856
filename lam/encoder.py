"""LAMEncoder: a pre-norm BERT-like encoder whose attention is regulated by learnable masks.

Parameter names of the encoder proper (blocks.*, ln_f.*) are the same in every mask mode; the mask
generators live under generators.*. A LAM state dict therefore loads into a mask="none" model with
strict=False and no missing keys, which is how LAM is compared with vanilla attention at equal weights.
The encoder adds no position embedding: callers add position/time/modality embeddings to x, which keeps
the dynamic generator usable at any length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lamflow.lam.attention import lam_attention
from lamflow.lam.config import LAMConfig
from lamflow.lam.generator import LAMMask, build_generator


@dataclass
class LAMOutput:
    hidden: Tensor  # (B, L, dim)
    # One tensor per layer when return_masks=True in a LAM mode, else empty: (B, L, L) shared by the
    # heads, or (B, H, L, L) with mask_per_head. Single mode repeats the same tensor for every layer.
    masks: list[Tensor] = field(default_factory=list)


class SelfAttention(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, mask: LAMMask | None, key_padding: Tensor | None, attention: str) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = lam_attention(q, k, v, mask, key_padding, attention)
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: LAMMask | None, key_padding: Tensor | None, attention: str) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask, key_padding, attention))
        return x + self.drop(self.mlp(self.ln2(x)))


class LAMEncoder(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)
        n_generators = {"none": 0, "single": 1, "multi": cfg.depth}[cfg.mask]
        self.generators = nn.ModuleList(build_generator(cfg) for _ in range(n_generators))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, return_masks: bool = False) -> LAMOutput:
        """x: (B, L, dim); key_padding_mask: (B, L) bool, True = padding (never attended to)."""
        pad = self._check_inputs(x, key_padding_mask)
        if pad is not None:
            # Zero padded tokens: attention weights of padded keys are exactly 0, but 0 * inf/nan garbage
            # in their values would still poison real positions.
            x = x.masked_fill(pad[..., None], 0.0)
        encoder_input = x
        mask = self.generators[0](x) if self.cfg.mask == "single" else None
        masks = []
        for i, block in enumerate(self.blocks):
            if self.cfg.mask == "multi":
                mask = self.generators[i](x if self.cfg.generator_input == "hidden" else encoder_input)
            if return_masks and mask is not None:
                masks.append(masks[-1] if self.cfg.mask == "single" and masks else self._dense(mask))
            x = block(x, mask, pad, self.cfg.attention)
        return LAMOutput(self.ln_f(x), masks)

    def _dense(self, mask: LAMMask) -> Tensor:
        values = mask.values()
        return values if self.cfg.mask_per_head else values.squeeze(1)

    def _check_inputs(self, x: Tensor, pad: Tensor | None) -> Tensor | None:
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"x must have shape (batch, length, {self.cfg.dim}), got {tuple(x.shape)}")
        if pad is None:
            return None
        if pad.dtype != torch.bool or pad.shape != x.shape[:2]:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape {tuple(x.shape[:2])} (True = padding), "
                f"got {pad.dtype} {tuple(pad.shape)}"
            )
        if pad.all(dim=1).any():
            # Softmax over keys that are all -inf has no defined value (nan).
            raise ValueError("key_padding_mask marks every position of a sample as padding; drop that sample")
        return pad

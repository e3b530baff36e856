"""Attention paths: vanilla SDPA, and LAM attention softmax(S (*|+) M) as an eager reference, fused with
FlexAttention, in blocks of query rows with a recomputing backward (lamflow.lam.blocked), or (additive
low-rank masks) as one fused SDPA call. All are exact; they differ in speed, memory and where they train.

All functions take q, k, v of shape (B, H, L, head_dim) and a key padding mask (B, L), True = padding.
Padding is applied *after* M is combined with the scores, as -inf (a fill, or an added -inf bias): M can
never un-mask a padded key, and in "mul" mode -inf is never multiplied by M (nan for M <= 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import flex_attention

from lamflow.lam.blocked import blocked_lam_attention
from lamflow.lam.config import LOWRANK_SDPA_NEEDS
from lamflow.lam.generator import LAMMask

# torch.compile is lazy: nothing is compiled until the first call. One module-level object means every
# encoder and layer (and benchmarks/attention.py's flex row without a mask) shares its compile cache (the
# first CPU compile takes ~10-20 s). dynamic=True because sequence lengths change from batch to batch, and
# because torch 2.14.1's automatic switch to dynamic shapes (static first compile, dynamic recompile on the
# next length) fails for our score_mod in the CPU C++ codegen ("'cur_kvSplitSize8' was not declared in this
# scope"); a dynamic first compile does not.
compiled_flex_attention = torch.compile(flex_attention, dynamic=True)


def combine_scores(scores: Tensor, mask: Tensor, combine: str) -> Tensor:
    return scores * mask if combine == "mul" else scores + mask


def sdpa_attend_mask(key_padding: Tensor | None) -> Tensor | None:
    """SDPA's boolean attn_mask (True = may attend) from a (B, L) key padding mask, broadcast over heads
    and queries."""
    return None if key_padding is None else ~key_padding[:, None, None, :]


def vanilla_attention(q: Tensor, k: Tensor, v: Tensor, key_padding: Tensor | None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_attend_mask(key_padding))


def eager_lam_attention(q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None) -> Tensor:
    """Reference implementation: materialises the (B, H, L, L) scores."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = combine_scores(scores, mask.values(), mask.combine)
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v


def flex_lam_attention(q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None) -> Tensor:
    """Fused LAM attention: compiled torch FlexAttention, M applied to each score in score_mod.

    M is handed over dense, (B, Hm, L, L): shared by the heads it is H times smaller than the scores the
    eager path materialises, and low-rank factors are multiplied out by one GEMM first. Computing
    u . v inside score_mod instead was measured 1.8x slower on CPU (r strided loads per score) and
    would make the GPU backward scatter 2r atomic adds per score into u and v.
    """
    values = mask.values()
    per_head = values.shape[1] > 1
    combine = mask.combine

    def score_mod(score, b, h, q_idx, kv_idx):
        score = combine_scores(score, values[b, h if per_head else 0, q_idx, kv_idx], combine)
        if key_padding is not None:
            score = torch.where(key_padding[b, kv_idx], float("-inf"), score)
        return score

    return compiled_flex_attention(q, k, v, score_mod=score_mod)


def lowrank_additive_attention(q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + u v^T) in one fused SDPA call, exact: an additive low-rank mask is itself
    a dot product, so it rides along as extra head dims, [q / sqrt(d), u] . [k, v]. v is zero-padded to
    the same head dim because SDPA's fused CPU kernel needs equal head dims (else: slow math fallback)."""
    heads, head_dim = q.shape[1], q.shape[-1]
    u, w = (t.to(q.dtype).expand(-1, heads, -1, -1) for t in (mask.u, mask.v))
    q_aug = torch.cat([q * head_dim**-0.5, u], dim=-1)
    k_aug = torch.cat([k, w], dim=-1)
    v_pad = F.pad(v, (0, u.shape[-1]))
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_pad, attn_mask=sdpa_attend_mask(key_padding), scale=1.0)
    return out[..., :head_dim]


def flex_unavailable_reason(device: torch.device, needs_grad: bool) -> str | None:
    """Why the flex backend cannot run here, or None when it can."""
    if device.type not in ("cpu", "cuda"):
        return (
            f"FlexAttention is only supported on cpu and cuda devices here, not {device.type}; "
            'use attention="auto" (or "blocked", "eager") on this device'
        )
    if device.type == "cpu" and needs_grad:
        return (
            f"FlexAttention has no CPU backward in torch {torch.__version__} "
            '("FlexAttention does not support backward on CPU"); use attention="auto" (or "blocked", "eager") '
            'to train on CPU, or run the forward under torch.no_grad()'
        )
    if device.type == "cpu" and not torch.cpu._is_avx2_supported():
        return 'FlexAttention on CPU needs a CPU with AVX2; use attention="auto" (or "blocked", "eager") here'
    return None


LAM_PATHS = {
    "eager": eager_lam_attention,
    "flex": flex_lam_attention,
    "blocked": blocked_lam_attention,
    "lowrank-sdpa": lowrank_additive_attention,
}


def choose_backend(requested: str, device: torch.device, needs_grad: bool, lowrank_additive: bool) -> str:
    """The LAM path to run: a key of LAM_PATHS.

    An explicit path is honoured, or raises saying why it cannot run here. "auto" takes the fastest exact
    path that can run and, when gradients are needed, train (so never flex for CPU training):
    - CUDA: lowrank-sdpa for additive low-rank masks without gate (one fused SDPA call), else flex;
    - CPU and other devices: blocked, which trains (flex has no CPU backward), never forms B x H x L x L,
      and needs no compile. Forward on the 2-core CPU it was tuned on (fp32, batch 2, README "Figures"):
      1.08-1.25x SDPA at L=256-2048 in 1-thread CPU time, below flex (1.27-1.50x), eager (up to 3.9x) and
      lowrank-sdpa (1.24-1.32x); whole encoder at L=1024, 2-thread wall: 1.08-1.22x vs flex 1.26-1.40x.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "lowrank-sdpa" if lowrank_additive else "flex"
        return "blocked"
    if requested == "flex":
        reason = flex_unavailable_reason(device, needs_grad)
        if reason:
            raise RuntimeError(f'attention="flex" cannot run: {reason}')
    if requested == "lowrank-sdpa" and not lowrank_additive:
        needs = ", ".join(f'{field}="{value}"' for field, value in LOWRANK_SDPA_NEEDS.items())
        raise RuntimeError(f'attention="lowrank-sdpa" cannot run: it needs an additive low-rank mask without gate ({needs})')
    if requested not in LAM_PATHS:
        raise ValueError(f"attention={requested!r} is not valid; allowed values: auto, {', '.join(LAM_PATHS)}")
    return requested


def lam_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: LAMMask | None, key_padding: Tensor | None, attention: str = "auto"
) -> Tensor:
    """Vanilla SDPA when there is no mask, else LAM attention on the path `attention` resolves to."""
    if mask is None:
        return vanilla_attention(q, k, v, key_padding)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *mask.tensors()))
    path = choose_backend(attention, q.device, needs_grad, mask.lowrank_additive)
    return LAM_PATHS[path](q, k, v, mask, key_padding)

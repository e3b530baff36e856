"""Exact LAM attention that never materialises the B x H x L x L scores, with a hand-written backward.

The eager reference builds the scores of every sample and head at once, and autograd keeps several such
tensors alive for the backward. Here each sample is processed in blocks of query rows x heads of at most
BLOCK_ELEMENTS scores (256 rows of one head at L=1024): for each block, S = (q / sqrt(d)) k^T, M for the
same rows only (a slice of the fixed generator's logits, or u_rows v^T for the low-rank one; computed once
for all heads when they share it), S (*|+)= M and the padding in place, softmax, @ v. The backward
recomputes each block's probabilities from q, k, v and the mask tensors instead of saving them
(FlashAttention's recompute idea, in plain torch ops), so working memory is a few blocks per thread
whatever B and L. With several torch threads, samples run in parallel, one per thread (for_each_sample).

For combine="add" the forward instead hands M to SDPA as a float mask (padding folded in as -inf): CPU
SDPA's fused kernel tiles the scores itself and is faster than the loop. SDPA cannot give the mask its
gradient without falling back to its materialising math path, so the backward is the blocked one for both
combine rules.

Memory beyond the inputs and outputs: a few blocks of at most BLOCK_ELEMENTS per thread; the gradient of
the fixed generator's logits (the size of those logits, B x Hm x L x L, which that generator makes); and
for combine="add" with a mask shared by the heads, the B x 1 x L x L float mask of the forward. Never
anything of the size of the scores, B x H x L x L.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lamflow.lam.generator import LAMMask, mask_values, mask_values_vjp

# Scores per block: 2**18 fp32 = 1 MiB, the per-core L2 cache of the 2-core x86 VM it was tuned on; each
# thread has a few such buffers live. Read at call time, so tests can shrink it to exercise many blocks on
# small inputs.
BLOCK_ELEMENTS = 2**18


def _slices(size: int, step: int) -> list[slice]:
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def blocks(heads: int, length: int) -> tuple[list[slice], list[slice]]:
    """One sample's blocks: row slices and head groups with rows x group x length <= BLOCK_ELEMENTS (at least
    one row of one head). Rows come first: a block re-reads its heads' whole K and V, so fewer, taller blocks
    move less memory, and their GEMMs are larger. Measured against blocks of all heads x few rows (same
    size): 1.26x -> 1.16x SDPA at L=1024 and 1.46x -> 1.22x at L=2048, forward on one thread."""
    rows = max(1, min(length, BLOCK_ELEMENTS // length))
    group = max(1, min(heads, BLOCK_ELEMENTS // (rows * length)))
    return _slices(length, rows), _slices(heads, group)


# One pool per thread count, made on first use. A forked child (e.g. a DataLoader worker) inherits the pool
# objects but not their threads, so it starts without pools.
_sample_pools: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_sample_pools.clear)


def for_each_sample(work: Callable[[int], None], batch: int, device: torch.device) -> None:
    """work(sample) for every sample, without gradient recording.

    On CPU with several torch threads and samples, whole samples run in parallel, one per thread, each
    thread's ops on 1 intra-op thread (samples outnumbering threads queue). Why: a block's ops are short,
    and splitting each across threads costs a barrier per op, which waits for a descheduled thread on a busy
    machine. Measured on the 2 cores here, L=1024, 8 heads, batch 2: forward 2.0x SDPA with per-op threads
    vs 1.25x with per-sample threads when idle; fwd+bwd 4.7-6x vs 1.2-1.6x at load ~5. Otherwise (one
    sample, one thread, or a GPU, whose kernels are asynchronous anyway): a plain loop.
    """
    threads = torch.get_num_threads()
    if threads == 1 or batch == 1 or device.type != "cpu":
        for sample in range(batch):
            work(sample)
        return
    pool = _sample_pools.get(threads)
    if pool is None:
        pool = _sample_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="lam-blocked")

    def run(sample: int) -> None:
        torch.set_num_threads(1)  # this pool thread's OpenMP team size
        with torch.no_grad():
            work(sample)

    torch.set_num_threads(1)  # and MKL's, process-wide, while the calling thread waits for the pool
    try:
        list(pool.map(run, range(batch)))
    finally:
        torch.set_num_threads(threads)


def _padding_bias_per_sample(key_padding: Tensor | None, batch: int, dtype: torch.dtype) -> list[Tensor | None]:
    """Each sample's (1, 1, L) additive padding bias (-inf at padded keys, 0 elsewhere), or None where it has no
    padding. Adding it is exact for finite scores (x + 0 = x, x - inf = -inf), as the eager reference's -inf
    fill is, and broadcast over a block it is several times faster on CPU than masked_fill_ with a broadcast
    boolean mask. (Only a score that overflowed to +inf at a padded key would differ: nan instead of -inf.)"""
    if key_padding is None:
        return [None] * batch
    bias = torch.zeros(key_padding.shape, dtype=dtype, device=key_padding.device)
    bias.masked_fill_(key_padding, float("-inf"))
    return [row[None, None] if has_padding else None for row, has_padding in zip(bias, key_padding.any(1).tolist())]


def _combine(scores: Tensor, values: Tensor, combine: str, pad: Tensor | None, in_place: bool) -> Tensor:
    """T = S (*|+) M with padded keys at -inf; in S's buffer when in_place (else S is kept for the backward)."""
    if combine == "mul":
        # values * scores, not scores * values: the same product, 2x faster on CPU when values broadcasts.
        combined = scores.mul_(values) if in_place else values * scores
    else:
        combined = scores.add_(values) if in_place else values + scores
    return combined if pad is None else combined.add_(pad)


def _head_mask(mask: LAMMask, sample: int, rows: slice, heads: slice = slice(None)) -> tuple[Tensor, Tensor]:
    """(z, M) of these rows and mask heads."""
    logits = mask.logits_rows(sample, rows, heads)
    return logits, mask_values(logits, mask.combine, mask.gate)


def _shared_mask(mask: LAMMask, sample: int, rows: slice) -> tuple[Tensor, Tensor] | None:
    """(z, M) of a mask shared by all heads for these rows, computed once for every head group; else None."""
    return None if mask.heads > 1 else _head_mask(mask, sample, rows)


def _blocked_forward(scaled_q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, pads: list[Tensor | None]) -> Tensor:
    batch, heads, length, _ = scaled_q.shape
    out = torch.empty_like(v)
    row_blocks, head_groups = blocks(heads, length)

    def attend(sample: int) -> None:
        for rows in row_blocks:
            shared = _shared_mask(mask, sample, rows)
            for group in head_groups:
                _, values = shared or _head_mask(mask, sample, rows, group)
                scores = scaled_q[sample, group, rows] @ k[sample, group].transpose(-1, -2)
                combined = _combine(scores, values, mask.combine, pads[sample], in_place=True)
                torch.bmm(combined.softmax(dim=-1), v[sample, group], out=out[sample, group, rows])

    for_each_sample(attend, batch, scaled_q.device)
    return out


def _sdpa_forward(scaled_q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None,
                  pads: list[Tensor | None]) -> Tensor:
    """combine="add": SDPA with M as a float mask, padding folded in as -inf (SDPA's fused CPU kernel never
    forms the scores). A mask shared by the heads goes in whole, B x 1 x L x L (the size of the fixed
    generator's logits, 1/H of the scores): one call over the batch measured 1.0-1.2x SDPA at L=470-1024 on
    2 threads, per-sample calls 1.3-1.6x. Per-head masks go in per sample, in blocks of query rows."""
    if mask.heads == 1:
        bias = mask.values().detach()  # detached: SDPA takes its materialising math path for a mask with grad
        if key_padding is not None:
            bias = bias.masked_fill(key_padding[:, None, None, :], float("-inf"))
        return F.scaled_dot_product_attention(scaled_q, k, v, attn_mask=bias, scale=1.0)
    batch, heads, length, _ = scaled_q.shape
    out = torch.empty_like(v)
    row_blocks = _slices(length, max(1, BLOCK_ELEMENTS // (heads * length)))

    def attend(sample: int) -> None:
        for rows in row_blocks:
            bias = mask_values(mask.logits_rows(sample, rows), mask.combine, mask.gate).detach()
            if pads[sample] is not None:
                bias = bias + pads[sample]
            out[sample, :, rows] = F.scaled_dot_product_attention(
                scaled_q[sample, None, :, rows], k[sample, None], v[sample, None], attn_mask=bias[None], scale=1.0
            )[0]

    for_each_sample(attend, batch, scaled_q.device)
    return out


class BlockedLAMAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) (*|+) M) v with padded keys at -inf; M from dense logits or low-rank u, w."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, logits: Tensor | None, u: Tensor | None, w: Tensor | None,
                key_padding: Tensor | None, combine: str, gate: str) -> Tensor:
        mask = LAMMask(combine, gate, logits=logits, u=u, v=w)
        pads = _padding_bias_per_sample(key_padding, q.shape[0], q.dtype)
        scaled_q = q * q.shape[-1] ** -0.5
        if combine == "add":
            out = _sdpa_forward(scaled_q, k, v, mask, key_padding, pads)
        else:
            out = _blocked_forward(scaled_q, k, v, mask, pads)
        ctx.save_for_backward(q, k, v, logits, u, w, key_padding, out)
        ctx.combine, ctx.gate = combine, gate
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, logits, u, w, key_padding, out = ctx.saved_tensors
        mask = LAMMask(ctx.combine, ctx.gate, logits=logits, u=u, v=w)
        mul = mask.combine == "mul"
        batch, heads, length, head_dim = q.shape
        scale = head_dim**-0.5
        pads = _padding_bias_per_sample(key_padding, batch, q.dtype)
        scaled_q, scaled_k = q * scale, k * scale
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        grad_logits = None if logits is None else torch.empty_like(logits)
        grad_u = None if u is None else torch.empty_like(u)
        grad_w = None if w is None else torch.zeros_like(w)
        # rowsum(P * dP) = rowsum(dO * O): the softmax backward's correction, without keeping P.
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        row_blocks, head_groups = blocks(heads, length)

        def to_generator(sample: int, rows: slice, mask_heads: slice, z: Tensor, grad_values: Tensor) -> None:
            """Chain d(loss)/dM of a block through the gate into the logits, or into u and w."""
            grad_z = mask_values_vjp(z, grad_values, mask.combine, mask.gate)
            if logits is not None:
                grad_logits[sample, mask_heads, rows] = grad_z
            else:
                torch.bmm(grad_z, w[sample, mask_heads], out=grad_u[sample, mask_heads, rows])
                grad_w[sample, mask_heads].baddbmm_(grad_z.transpose(-1, -2), u[sample, mask_heads, rows])

        def backpropagate(sample: int) -> None:
            for rows in row_blocks:
                shared = _shared_mask(mask, sample, rows)
                grad_shared = None  # d(loss)/dM of a shared mask, summed over the head groups
                for group in head_groups:
                    z, values = shared or _head_mask(mask, sample, rows, group)
                    scores = scaled_q[sample, group, rows] @ k[sample, group].transpose(-1, -2)
                    probs = _combine(scores, values, mask.combine, pads[sample], in_place=not mul).softmax(dim=-1)
                    grad_rows = grad_out[sample, group, rows]
                    grad_v[sample, group].baddbmm_(probs.transpose(-1, -2), grad_rows)
                    # d(loss)/dT = P * (dP - delta), in the dP buffer; padded keys get 0 (P = 0 there).
                    grad_combined = grad_rows @ v[sample, group].transpose(-1, -2)
                    grad_combined.sub_(delta[sample, group, rows]).mul_(probs)
                    grad_values = grad_combined * scores if mul else grad_combined
                    grad_scores = grad_combined.mul_(values) if mul else grad_combined
                    torch.bmm(grad_scores, scaled_k[sample, group], out=grad_q[sample, group, rows])
                    grad_k[sample, group].baddbmm_(grad_scores.transpose(-1, -2), scaled_q[sample, group, rows])
                    if shared is None:
                        to_generator(sample, rows, group, z, grad_values)
                    else:
                        summed = grad_values.sum(dim=0, keepdim=True)
                        grad_shared = summed if grad_shared is None else grad_shared.add_(summed)
                if shared is not None:
                    to_generator(sample, rows, slice(0, 1), shared[0], grad_shared)

        for_each_sample(backpropagate, batch, q.device)
        return grad_q, grad_k, grad_v, grad_logits, grad_u, grad_w, None, None, None


def blocked_lam_attention(q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None) -> Tensor:
    """Exact LAM attention in blocks of query rows (forward and backward); see the module docstring."""
    return BlockedLAMAttention.apply(q, k, v, mask.logits, mask.u, mask.v, key_padding, mask.combine, mask.gate)

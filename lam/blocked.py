"""Exact LAM attention that never materialises the B x H x L x L scores, with a hand-written backward.

The eager reference builds the scores of every sample and head at once, and autograd keeps several such
tensors alive for the backward. Here one sample's query rows are processed in blocks of about
BLOCK_ELEMENTS scores (all heads together: 32 rows at L=1024 and 8 heads): for each block,
S = (q / sqrt(d)) k^T, M for the same rows only (a slice of the fixed generator's logits, or u_rows v^T
for the low-rank one), S (*|+)= M and the -inf padding fill in place, softmax, @ v. The backward recomputes
each block's probabilities from q, k, v and the mask tensors instead of saving them (FlashAttention's
recompute idea, in plain torch ops), so working memory is a few blocks per thread whatever B and L.
With several torch threads, samples run in parallel, one per thread (see for_each_sample).

For combine="add" the forward instead hands each block's M to SDPA as a float mask (padding folded in as
-inf): CPU SDPA's fused kernel tiles the scores itself and is faster than the loop. SDPA cannot give the
mask its gradient without falling back to its materialising math path, so the backward is the blocked
one for both combine rules.

Memory beyond the inputs and outputs: a few blocks of at most BLOCK_ELEMENTS per thread, plus the gradient
of the fixed generator's logits (the same size as those logits, B x Hm x L x L, which that generator makes).
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

# Scores per block (all heads of one sample): 2**18 fp32 = 1 MiB, the per-core L2 cache of the 2-core x86
# VM it was tuned on; each thread has a few such buffers live. Fwd+bwd on one thread (L=350-1024): 2**17 to
# 2**19 within 5% of each other, 2**20 up to 1.2x slower. Read at call time, so tests can shrink it to
# exercise many blocks on small inputs.
BLOCK_ELEMENTS = 2**18


def row_blocks(heads: int, length: int) -> list[slice]:
    """One sample's query rows in blocks of at most BLOCK_ELEMENTS scores each (at least one row)."""
    rows = max(1, BLOCK_ELEMENTS // (heads * length))
    return [slice(start, min(start + rows, length)) for start in range(0, length, rows)]


# One pool per thread count, made on first use. A forked child (e.g. a DataLoader worker) inherits the pool
# objects but not their threads, so it starts without pools.
_sample_pools: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_sample_pools.clear)


def for_each_sample(work: Callable[[int], None], batch: int) -> None:
    """work(sample) for every sample, without gradient recording.

    With several torch threads and samples, whole samples run in parallel, one per thread, each thread's ops
    on 1 intra-op thread (samples outnumbering threads queue). Why: a block's ops are short, and splitting
    each across threads costs a barrier per op; on a busy machine every barrier waits for a descheduled
    thread. Measured on the 2 shared cores at load ~5: fwd+bwd at L=1024, 8 heads, batch 2, 4.7-6x SDPA
    with per-op threads, 1.2-1.6x with per-sample threads. With one sample or one thread: a plain loop.
    """
    threads = torch.get_num_threads()
    if threads == 1 or batch == 1:
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
    bias = torch.zeros(key_padding.shape, dtype=dtype, device=key_padding.device).masked_fill_(key_padding, float("-inf"))
    return [row[None, None] if has_padding else None for row, has_padding in zip(bias, key_padding.any(1).tolist())]


def _block_scores(scaled_q: Tensor, k: Tensor, mask: LAMMask, pad: Tensor | None, sample: int, rows: slice,
                  keep_raw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One block (H, rows, L): the raw scores S, the logits z, M, and T = S (*|+) M with padded keys at -inf.

    T is computed in S's buffer unless keep_raw (the backward of "mul" needs S itself)."""
    scores = scaled_q[sample, :, rows] @ k[sample].transpose(-1, -2)
    logits = mask.logits_rows(sample, rows)
    values = mask_values(logits, mask.combine, mask.gate)
    if mask.combine == "mul":
        # values * scores, not scores * values: the same product, and 2x faster on CPU when values broadcasts.
        combined = values * scores if keep_raw else scores.mul_(values)
    else:
        combined = values + scores if keep_raw else scores.add_(values)
    if pad is not None:
        combined.add_(pad)
    return scores, logits, values, combined


def _blocked_forward(scaled_q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, pads: list[Tensor | None]) -> Tensor:
    batch, heads, length, _ = scaled_q.shape
    out = torch.empty_like(v)
    blocks = row_blocks(heads, length)

    def attend(sample: int) -> None:
        for rows in blocks:
            combined = _block_scores(scaled_q, k, mask, pads[sample], sample, rows, keep_raw=False)[-1]
            torch.bmm(combined.softmax(dim=-1), v[sample], out=out[sample, :, rows])

    for_each_sample(attend, batch)
    return out


def _sdpa_forward(scaled_q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, pads: list[Tensor | None]) -> Tensor:
    """combine="add": SDPA with M as a float mask, per block of query rows. SDPA never forms the scores, so
    the block budget counts the mask's heads (1 when shared), not the attention heads."""
    batch, _, length, _ = scaled_q.shape
    out = torch.empty_like(v)
    blocks = row_blocks(mask.heads, length)

    def attend(sample: int) -> None:
        for rows in blocks:
            # Detached: SDPA takes its materialising math path for a mask that requires grad, even under no_grad.
            bias = mask_values(mask.logits_rows(sample, rows), mask.combine, mask.gate).detach()
            if pads[sample] is not None:
                bias = bias + pads[sample]
            out[sample, :, rows] = F.scaled_dot_product_attention(
                scaled_q[sample, None, :, rows], k[sample, None], v[sample, None], attn_mask=bias[None], scale=1.0
            )[0]

    for_each_sample(attend, batch)
    return out


class BlockedLAMAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) (*|+) M) v with padded keys at -inf; M from dense logits or low-rank u, w."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, logits: Tensor | None, u: Tensor | None, w: Tensor | None,
                key_padding: Tensor | None, combine: str, gate: str) -> Tensor:
        mask = LAMMask(combine, gate, logits=logits, u=u, v=w)
        pads = _padding_bias_per_sample(key_padding, q.shape[0], q.dtype)
        scaled_q = q * q.shape[-1] ** -0.5
        out = (_sdpa_forward if combine == "add" else _blocked_forward)(scaled_q, k, v, mask, pads)
        ctx.save_for_backward(q, k, v, logits, u, w, key_padding, out)
        ctx.combine, ctx.gate = combine, gate
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, logits, u, w, key_padding, out = ctx.saved_tensors
        mask = LAMMask(ctx.combine, ctx.gate, logits=logits, u=u, v=w)
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
        blocks = row_blocks(heads, length)

        def backpropagate(sample: int) -> None:
            for rows in blocks:
                scores, z, values, combined = _block_scores(
                    scaled_q, k, mask, pads[sample], sample, rows, keep_raw=mask.combine == "mul"
                )
                probs = combined.softmax(dim=-1)
                grad_rows = grad_out[sample, :, rows]
                grad_v[sample].baddbmm_(probs.transpose(-1, -2), grad_rows)
                # d(loss)/dT = P * (dP - delta), computed in the dP buffer; padded keys get 0 (P = 0 there).
                grad_combined = (grad_rows @ v[sample].transpose(-1, -2)).sub_(delta[sample, :, rows]).mul_(probs)
                if mask.combine == "mul":
                    grad_values = grad_combined * scores
                    grad_scores = grad_combined.mul_(values)
                else:
                    grad_values = grad_scores = grad_combined
                if mask.heads == 1 and heads > 1:  # one mask shared by all heads
                    grad_values = grad_values.sum(dim=0, keepdim=True)
                grad_z = mask_values_vjp(z, grad_values, mask.combine, mask.gate)
                torch.bmm(grad_scores, scaled_k[sample], out=grad_q[sample, :, rows])
                grad_k[sample].baddbmm_(grad_scores.transpose(-1, -2), scaled_q[sample, :, rows])
                if logits is not None:
                    grad_logits[sample, :, rows] = grad_z
                else:
                    torch.bmm(grad_z, w[sample], out=grad_u[sample, :, rows])
                    grad_w[sample].baddbmm_(grad_z.transpose(-1, -2), u[sample, :, rows])

        for_each_sample(backpropagate, batch)
        return grad_q, grad_k, grad_v, grad_logits, grad_u, grad_w, None, None, None


def blocked_lam_attention(q: Tensor, k: Tensor, v: Tensor, mask: LAMMask, key_padding: Tensor | None) -> Tensor:
    """Exact LAM attention in blocks of query rows (forward and backward); see the module docstring."""
    return BlockedLAMAttention.apply(q, k, v, mask.logits, mask.u, mask.v, key_padding, mask.combine, mask.gate)

"""Mask generators: tokens -> the mask M that regulates one layer's attention scores.

Both generators output *logits* z that are zero at initialisation; M = mask_values(z) maps z = 0 to the
identity of the combine rule (mul: M = 1, add: M = 0), so a fresh LAM encoder equals vanilla attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamflow.lam.config import LOWRANK_SDPA_NEEDS, LAMConfig

LN2 = math.log(2.0)


def log_softplus_gate(z: Tensor) -> Tensor:
    """log(softplus(z) / ln 2), finite with a finite gradient for every finite z.

    Computed naively it is -inf once softplus(z) underflows (z below about -104 in fp32). Where exp(z) is
    below the dtype's smallest normal number, softplus(z) = exp(z) (1 - exp(z)/2 + ...) equals exp(z) to
    working precision, so the log is z itself. The other branch sees z clamped to that threshold, so its
    gradient is finite too (torch.where would otherwise multiply a 0/0 = nan gradient by 0).
    """
    threshold = math.log(torch.finfo(z.dtype).tiny)
    safe = torch.log(F.softplus(z.clamp(min=threshold)) / LN2)
    return torch.where(z < threshold, z - math.log(LN2), safe)


def mask_values(z: Tensor, combine: str, gate: str) -> Tensor:
    """M from logits z, elementwise; finite (with finite gradients) for every finite z.

    The gates are positive factors g(z) with g(0) = 1 (sigmoid: 2*sigmoid(z) in (0, 2); softplus:
    softplus(z)/ln 2 > 0). "add" uses log g(z): adding it to the scores multiplies the unnormalised
    attention weights by g, the additive counterpart of gating the scores. Both logs are computed stably
    (logsigmoid, log_softplus_gate): a gate that underflows would otherwise give -inf, and nan for a whole row.
    """
    if gate == "none":
        return 1.0 + z if combine == "mul" else z
    if gate == "sigmoid":
        return 2.0 * torch.sigmoid(z) if combine == "mul" else F.logsigmoid(z) + LN2
    return F.softplus(z) / LN2 if combine == "mul" else log_softplus_gate(z)


def mask_values_vjp(z: Tensor, grad_values: Tensor, combine: str, gate: str) -> Tensor:
    """The gradient with respect to z of <mask_values(z), grad_values> (for hand-written backwards)."""
    if gate == "none":  # M = 1 + z or M = z
        return grad_values
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(mask_values(z, combine, gate), z, grad_values)[0]


@dataclass
class LAMMask:
    """One layer's mask in the cheapest form the attention backends can use.

    Either dense logits (fixed generator) or low-rank factors with logits = u @ v^T (dynamic generator,
    1/sqrt(rank) already folded into u), which the fused path for additive masks uses without ever
    forming the L x L tensor. Head dim is 1 (shared by all heads) or heads (one mask per head).
    """

    combine: str
    gate: str
    logits: Tensor | None = None  # (B, Hm, L, L)
    u: Tensor | None = None  # (B, Hm, L, r)
    v: Tensor | None = None  # (B, Hm, L, r)

    def values(self) -> Tensor:
        """M as a dense (B, Hm, L, L) tensor."""
        logits = self.logits if self.logits is not None else self.u @ self.v.transpose(-1, -2)
        return mask_values(logits, self.combine, self.gate)

    @property
    def heads(self) -> int:
        """Distinct masks per sample: 1 (shared by all attention heads) or one per head."""
        return (self.logits if self.logits is not None else self.u).shape[1]

    def logits_rows(self, sample: int, rows: slice, heads: slice = slice(None)) -> Tensor:
        """The logits of one sample's query rows (and mask heads), (heads, rows, L), forming nothing else."""
        if self.logits is not None:
            return self.logits[sample, heads, rows]
        return self.u[sample, heads, rows] @ self.v[sample, heads].transpose(-1, -2)

    @property
    def lowrank_additive(self) -> bool:
        """The mask attention="lowrank-sdpa" can fold into q and k (LOWRANK_SDPA_NEEDS: low-rank = dynamic)."""
        return (self.u is not None and self.combine == LOWRANK_SDPA_NEEDS["combine"]
                and self.gate == LOWRANK_SDPA_NEEDS["mask_gate"])

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.logits, self.u, self.v) if t is not None]


def _trunk(cfg: LAMConfig) -> tuple[nn.Sequential, int]:
    """The per-token Linear+ReLU stack shared by both generators; returns it and its output width.

    It starts with a LayerNorm because the residual stream's scale grows with depth: without it the
    generators of deeper layers would see inputs of a very different magnitude.
    """
    layers: list[nn.Module] = [nn.LayerNorm(cfg.dim)]
    width = cfg.dim
    for _ in range(cfg.generator_layers - 1):
        layers += [nn.Linear(width, cfg.generator_hidden), nn.ReLU()]
        width = cfg.generator_hidden
    return nn.Sequential(*layers), width


class FixedMaskGenerator(nn.Module):
    """The paper's generator: row i of M comes from token i through an MLP whose last layer is max_len
    (x heads) wide; column j < L of that row is M[i, j]. Inputs longer than max_len have no mask."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk, width = _trunk(cfg)
        self.out = nn.Linear(width, cfg.mask_heads * cfg.max_len)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> LAMMask:
        batch, length, _ = x.shape
        heads, max_len = self.cfg.mask_heads, self.cfg.max_len
        if length > max_len:
            raise ValueError(
                f"input length {length} exceeds the fixed mask generator's max_len={max_len}: "
                f"raise LAMConfig.max_len to at least {length}, or use generator='dynamic' (any length)"
            )
        # Only the first `length` output columns are used: slice the weight instead of the output.
        weight = self.out.weight.view(heads, max_len, -1)[:, :length].reshape(heads * length, -1)
        bias = self.out.bias.view(heads, max_len)[:, :length].reshape(-1)
        z = F.linear(self.trunk(x), weight, bias).view(batch, length, heads, length).transpose(1, 2)
        return LAMMask(self.cfg.combine, self.cfg.mask_gate, logits=z)


class DynamicMaskGenerator(nn.Module):
    """Length-agnostic generator: logits = U V^T / sqrt(rank), U and V per-token projections, so M is
    defined for any sequence length. V starts at zero, which makes M the identity at initialisation."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk, width = _trunk(cfg)
        self.u = nn.Linear(width, cfg.mask_heads * cfg.generator_rank)
        self.v = nn.Linear(width, cfg.mask_heads * cfg.generator_rank)
        nn.init.zeros_(self.v.weight)
        nn.init.zeros_(self.v.bias)

    def forward(self, x: Tensor) -> LAMMask:
        batch, length, _ = x.shape
        shape = (batch, length, self.cfg.mask_heads, self.cfg.generator_rank)
        h = self.trunk(x)
        u = self.u(h).view(shape).transpose(1, 2) * self.cfg.generator_rank**-0.5
        v = self.v(h).view(shape).transpose(1, 2)
        return LAMMask(self.cfg.combine, self.cfg.mask_gate, u=u, v=v)


def build_generator(cfg: LAMConfig) -> nn.Module:
    return FixedMaskGenerator(cfg) if cfg.generator == "fixed" else DynamicMaskGenerator(cfg)

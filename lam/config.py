"""LAMConfig: every knob of the LAM encoder, validated at construction (see LAM_SPEC.md)."""
from __future__ import annotations

from dataclasses import dataclass

CHOICES = {
    "mask": ("none", "single", "multi"),
    "combine": ("mul", "add"),
    "generator": ("fixed", "dynamic"),
    "generator_input": ("hidden", "input"),
    "mask_gate": ("none", "sigmoid", "softplus"),
    "attention": ("auto", "eager", "flex", "blocked", "lowrank-sdpa"),
}
POSITIVE_INTS = ("dim", "depth", "heads", "max_len", "generator_hidden", "generator_layers", "generator_rank")


@dataclass
class LAMConfig:
    """A BERT-like pre-norm encoder whose attention scores are regulated by a learnable mask M.

    mask: "none" = vanilla attention, "single" = one mask from the input used by every layer,
      "multi" = one generator per layer. combine: softmax(S * M) ("mul") or softmax(S + M) ("add").
    generator: "fixed" = the paper's per-token MLP whose last layer is max_len wide (inputs longer than
      max_len are an error); "dynamic" = low-rank M = 1 + U V^T / sqrt(generator_rank) (add: U V^T / sqrt(r)),
      defined for any length.
    generator_input (multi only): the hidden states entering each layer, or the encoder input.
    mask_gate: optional squashing of M ("sigmoid": M in (0, 2) for mul; "softplus": M > 0), chosen so
      that M is still the identity of `combine` at initialisation.
    attention: the path computing LAM attention, all exact: "eager" (the materialised reference), "flex"
      (fused FlexAttention; forward-only on CPU), "blocked" (query-row blocks with a recomputing backward,
      never B x H x L x L; any device), "lowrank-sdpa" (one fused SDPA call; only for combine="add",
      generator="dynamic", mask_gate="none") or "auto" (the fastest that can run here and, when gradients
      are needed, train; see lamflow.lam.attention.choose_backend).
    """

    dim: int = 256
    depth: int = 4
    heads: int = 8
    max_len: int = 512
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    mask: str = "multi"
    combine: str = "mul"
    generator: str = "fixed"
    generator_hidden: int = 256
    generator_layers: int = 2
    generator_rank: int = 16
    generator_input: str = "hidden"
    mask_per_head: bool = False
    mask_gate: str = "none"
    attention: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"LAMConfig.{name}={value!r} is not valid; allowed values: {', '.join(allowed)}")
        for name in POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LAMConfig.{name}={value!r} is not valid; allowed values: integers >= 1")
        if self.dim % self.heads:
            raise ValueError(
                f"LAMConfig.dim={self.dim} is not valid with heads={self.heads}; allowed values: multiples of heads"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"LAMConfig.mlp_ratio={self.mlp_ratio!r} is not valid; allowed values: numbers > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LAMConfig.dropout={self.dropout!r} is not valid; allowed values: 0 <= dropout < 1")
        lowrank_additive = (self.combine, self.generator, self.mask_gate) == ("add", "dynamic", "none")
        if self.attention == "lowrank-sdpa" and not lowrank_additive:
            raise ValueError(
                f"LAMConfig.attention='lowrank-sdpa' is not valid with combine={self.combine!r}, "
                f"generator={self.generator!r}, mask_gate={self.mask_gate!r}: it needs combine='add', "
                "generator='dynamic', mask_gate='none'; allowed values otherwise: auto, eager, flex, blocked"
            )
        if not isinstance(self.mask_per_head, bool):
            raise ValueError(f"LAMConfig.mask_per_head={self.mask_per_head!r} is not valid; allowed values: True, False")

    @property
    def mask_heads(self) -> int:
        """Number of distinct masks per layer: one per head, or one shared by all heads."""
        return self.heads if self.mask_per_head else 1

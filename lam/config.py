"""LAMConfig: every knob of the LAM encoder, validated at construction (see docs/LAM_SPEC.md, "Configuration")."""
from __future__ import annotations

from dataclasses import dataclass

from lamflow.errors import FieldError

CHOICES = {
    "mask": ("none", "single", "multi"),
    "combine": ("mul", "add"),
    "generator": ("fixed", "dynamic"),
    "generator_input": ("hidden", "input"),
    "mask_gate": ("none", "sigmoid", "softplus"),
    "attention": ("auto", "eager", "flex", "blocked", "lowrank-sdpa"),
}
# Fields that shape the learnable mask and mean nothing with mask="none" (vanilla attention): ablations
# collapse the vanilla variants that differ only in these.
MASK_FIELDS = ("combine", "generator", "generator_hidden", "generator_layers", "generator_rank", "generator_input",
               "mask_per_head", "mask_gate")
# What attention="lowrank-sdpa" needs: an additive mask that is low-rank (the dynamic generator's U V^T, which
# it folds into q and k) and ungated (a gate is not low-rank). LAMConfig checks it; lam_attention per call.
LOWRANK_SDPA_NEEDS = {"combine": "add", "generator": "dynamic", "mask_gate": "none"}
POSITIVE_INTS = ("dim", "depth", "heads", "max_len", "generator_hidden", "generator_layers", "generator_rank")


@dataclass
class LAMConfig:
    """A BERT-like pre-norm encoder whose attention scores are regulated by a learnable mask M.

    mask: "none" = vanilla attention, "single" = one mask from the input used by every layer,
      "multi" = one generator per layer. combine: softmax(S * M) ("mul") or softmax(S + M) ("add").
    generator: "fixed" = the paper's per-token MLP whose last layer is max_len wide (inputs longer than
      max_len are an error; column j is absolute position j, so it needs inputs laid out at fixed positions);
      "dynamic" (the default: defined for any length and layout) = low-rank M = 1 + U V^T / sqrt(generator_rank)
      (add: U V^T / sqrt(r)); not the paper's generator.
    generator_input (multi only): the hidden states entering each layer, or the encoder input.
    mask_gate: squashing of M ("sigmoid", the default: M in (0, 2) for mul, so no score changes sign;
      "softplus": M > 0; "none": M = 1 + z, unbounded), chosen so that M is still the identity of
      `combine` at initialisation.
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
    generator: str = "dynamic"
    generator_hidden: int = 256
    generator_layers: int = 2
    generator_rank: int = 16
    generator_input: str = "hidden"
    mask_per_head: bool = False
    # The default by evidence (README, "Choosing the defaults"): no gate, gate or generator separated from
    # another on the demo task over 3 seeds; the sigmoid gate keeps M in (0, 2), so no score changes sign.
    mask_gate: str = "sigmoid"
    attention: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`FieldError` naming the first field whose value is not allowed (also after edits)."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise FieldError("LAMConfig", name, value, ", ".join(allowed))
        for name in POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FieldError("LAMConfig", name, value, "integers >= 1")
        if self.dim % self.heads:
            raise FieldError("LAMConfig", "dim", self.dim, f"multiples of heads ({self.heads})")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise FieldError("LAMConfig", "mlp_ratio", self.mlp_ratio, "numbers > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise FieldError("LAMConfig", "dropout", self.dropout, "0 <= dropout < 1")
        if self.attention == "lowrank-sdpa" and any(getattr(self, f) != v for f, v in LOWRANK_SDPA_NEEDS.items()):
            needs = ", ".join(f"{f}={v!r}" for f, v in LOWRANK_SDPA_NEEDS.items())
            has = ", ".join(f"{f}={getattr(self, f)!r}" for f in LOWRANK_SDPA_NEEDS)
            raise FieldError("LAMConfig", "attention", self.attention,
                             f"auto, eager, flex, blocked (lowrank-sdpa needs {needs}; this config has {has})")
        if not isinstance(self.mask_per_head, bool):
            raise FieldError("LAMConfig", "mask_per_head", self.mask_per_head, "True, False")

    @property
    def mask_heads(self) -> int:
        """Number of distinct masks per layer: one per head, or one shared by all heads."""
        return self.heads if self.mask_per_head else 1

"""Learning-rate schedule: linear warm-up, then a cosine decay to a floor."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WarmupCosine:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    A dataclass rather than a closure so ``LambdaLR.state_dict()`` stores its fields as plain numbers
    (a checkpoint then loads with ``torch.load(weights_only=True)``).
    """

    warmup_steps: int
    max_steps: int
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # (step + 1) so the very first update already moves the weights.
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :class:`WarmupCosine`; call ``.step()`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, max_steps, min_ratio))

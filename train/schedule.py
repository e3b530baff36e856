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


def resume_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict, peak_lr: float) -> None:
    """Continue a checkpoint's schedule from its position (``state["last_epoch"]``) with the current
    config's shape (warm-up, max_steps) and peak learning rate, which may all change on resume: the
    learning rate of the next step and every later one follows them (the optimizer's param groups
    are set too, since their stored ``lr`` is the checkpoint's). Unchanged, every value is the one the
    uninterrupted run would have used."""
    lrs = [peak_lr * schedule(state["last_epoch"]) for schedule in scheduler.lr_lambdas]
    scheduler.load_state_dict({**state, "base_lrs": [peak_lr] * len(lrs), "_last_lr": lrs,
                               "lr_lambdas": [None] * len(lrs)})
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["initial_lr"], group["lr"] = peak_lr, lr

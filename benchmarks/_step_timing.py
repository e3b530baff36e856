"""Shared by benchmarks/train_step.py and benchmarks/loader.py: the default model's config and the wall time
of one training step as the trainer runs it (forward, task loss, backward, AdamW update).

Not a script: the benchmarks import it as ``_step_timing`` (a script's own folder is on ``sys.path``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lamflow.train.config import TrainConfig
from lamflow.train.distributed import autocast
from lamflow.train.losses import TASK_LOSSES

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "qvhighlights_lam.yaml"


def train_step_seconds(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], config: TrainConfig,
    device: torch.device,
) -> float:
    """Seconds of one step on ``batch`` (already on ``device``), with the config's task loss and autocast."""
    if device.type == "cuda":  # time the kernels, not their launch
        torch.cuda.synchronize()
    started = time.perf_counter()
    with autocast(device, config.run.amp):
        loss = TASK_LOSSES[config.data.task](model(batch), batch, config.model)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started

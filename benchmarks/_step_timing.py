"""Shared by the benchmarks: the default model's config, the clock they time with, their --json files, and the
time of one training step as the trainer runs it (forward, task loss, backward, AdamW update).

Not a script: the benchmarks import it as ``_step_timing`` (a script's own folder is on ``sys.path``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lamflow.train.config import TrainConfig
from lamflow.train.distributed import autocast
from lamflow.train.tasks import get_task

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "qvhighlights_lam.yaml"


CPU_TIME_HELP = (
    "time with the CPU time of torch on 1 thread instead of wall time: every CPU kernel (backward included) then "
    "runs on the calling thread, so other processes on a shared machine cannot inflate it"
)


def write_rows_json(path: Path, args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]]) -> None:
    """A benchmark's --json file: its rows with the device, torch version, threads and every setting."""
    settings = {name: value for name, value in vars(args).items() if name != "json"}
    info = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(), settings=settings)
    path.write_text(json.dumps(dict(info, rows=rows), indent=2, default=str))


def benchmark_clock(cpu_time: bool) -> Callable[[], float]:
    """The clock of --cpu-time (see CPU_TIME_HELP; sets torch to 1 thread) or wall time."""
    if not cpu_time:
        return time.perf_counter
    torch.set_num_threads(1)
    return time.thread_time


def train_step_seconds(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], config: TrainConfig,
    device: torch.device, clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds of one step on ``batch`` (already on ``device``), with the config's task loss and autocast."""
    if device.type == "cuda":  # time the kernels, not their launch
        torch.cuda.synchronize()
    started = clock()
    with autocast(device, config.run.amp):
        loss = get_task(config.data.task).loss(model(batch), batch, config.model)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - started

"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

Launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) this joins a process group: NCCL when the
run uses CUDA, gloo on CPU. Started as a plain process it runs alone and every collective is a no-op, so
the trainer has a single code path.

A job reports one failure, by the rank that failed first (:func:`claim_failure`): the others, failing with
it or because of it (a collective whose peer is gone), stay quiet.
"""
from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from lamflow.devices import require_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group if launched by torchrun; pick this rank's device.

    ``device``: "auto" (the local GPU when CUDA is available, else CPU), "cpu" or "cuda"; "cuda" where
    it cannot run (no GPU, or fewer GPUs than torchrun's local ranks) raises DeviceError.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        require_device("cuda", "run.device")  # DeviceError saying why, before any data or model is touched
        torch_device = require_device(f"cuda:{local_rank}", f"run.device (torchrun LOCAL_RANK={local_rank})")
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=torch_device if use_cuda else None)
    return DistContext(rank, world_size, local_rank, local_world_size, torch_device)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistContext]:
    """:func:`init_distributed` for the duration of a block, then :func:`shutdown`. A failure in the block is
    claimed (:func:`claim_failure`) and the group left to the process's exit: the peers notice the failure
    only then, after it is claimed and reported, so each knows that it fails because of another rank's (and
    a reporting rank is not killed by torchrun, which stops the others once one exits, before it reports)."""
    ctx = init_distributed(device)
    try:
        yield ctx
    except BaseException:
        claim_failure()
        raise
    shutdown()


# Whether this process failed first in its job (claim_failure's answer, asked once).
_failed_first: bool | None = None


def claim_failure() -> bool:
    """Record that this process fails; True if it is the first of its torchrun job (attempt) to do so, and
    so the one to report the error. Counted in the job's store (torchrun's, at MASTER_ADDR:MASTER_PORT),
    once per process. True outside torchrun, and when the store cannot be reached: a duplicate line is
    better than none."""
    global _failed_first
    if _failed_first is None:
        distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
        _failed_first = not distributed or _count_failure() in (None, 1)
        if distributed and _failed_first:
            # torchrun stops the other ranks with SIGTERM as soon as one exits: a rank failing after this one
            # (quietly) must not get this one stopped before it has reported.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return _failed_first


def _count_failure() -> int | None:
    """How many processes of the job have failed, this one included (None: the store is out of reach)."""
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=10))
        # A restarted job (torchrun --max-restarts) keeps its store: count per attempt.
        key = f"lamflow/failures/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        return int(store.add(key, 1))
    except (KeyError, ValueError, RuntimeError):  # no torchrun address, or nothing listening there
        return None


def shutdown() -> None:
    """Leave the process group (torchrun expects every rank to do so before exiting)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable python data, e.g. prediction dicts), ordered by rank."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor of statistics (e.g. loss components) over all ranks."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Add up per-rank counters (e.g. the loader's skipped samples) over all ranks; every rank gets the sums."""
    if not dist.is_initialized():
        return dict(counts)
    names = sorted(counts)
    values = torch.tensor([counts[name] for name in names], dtype=torch.int64, device=_reduce_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return dict(zip(names, values.tolist()))


def any_over_ranks(flags: Sequence[bool]) -> list[bool]:
    """Element-wise "on any rank" of per-rank flags (e.g. "got a stop signal", "has batches left"); every
    rank gets the result. A collective: every rank calls it at the same point."""
    if not dist.is_initialized():
        return list(flags)
    values = torch.tensor([int(flag) for flag in flags], dtype=torch.int64, device=_reduce_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def _reduce_device() -> torch.device:
    """Where python numbers are put to be reduced: NCCL reduces GPU tensors only, gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """bf16 autocast on GPU for amp "auto" (full precision on CPU, where bf16 matmuls are slow); "bf16"
    forces it on any device; "off" disables it."""
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch (nested in dicts and lists) to ``device``."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(batch)

"""Can this machine run a torch device? One check, shared by extraction and training, made before any work.

A device that cannot run (``cuda`` without a GPU or a CUDA build, ``cuda:3`` on a one-GPU machine, ``mps``
off Apple silicon) is a :class:`~lamflow.errors.DeviceError` naming the setting and the devices that do
run here, instead of a traceback from deep inside the first model load.

torch is imported inside the functions, so importing this module (e.g. for ``lamflow --help``) stays cheap.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lamflow.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_KINDS = ("cpu", "cuda", "cuda:N", "mps")


def available_devices() -> list[str]:
    """The devices torch can run here, e.g. ['cpu', 'cuda:0', 'cuda:1']."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def _why_no_cuda() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"no CUDA GPU is visible (CUDA_VISIBLE_DEVICES={visible!r})"
    return "no CUDA GPU or driver was found"


def require_device(name: str, setting: str) -> "torch.device":
    """``name`` as a torch.device when this machine can run it; else DeviceError.

    ``setting`` is how the user chose the device (``--device``, ``run.device``): the message names it.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{setting}: {name!r} is not a device; use one of {', '.join(DEVICE_KINDS)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = _why_no_cuda()
        elif device.index is not None and device.index >= torch.cuda.device_count():
            reason = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
        else:
            return device
    elif device.type == "mps":
        if torch.backends.mps.is_available():
            return device
        reason = "MPS (Apple silicon) is not available"
    else:
        reason = f"lamflow runs on {', '.join(DEVICE_KINDS)}"
    raise DeviceError(f"{setting}: {name!r} cannot run here ({reason}); devices here: {', '.join(available_devices())}")

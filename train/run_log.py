"""The run's metric log: ``metrics.jsonl`` (one JSON object per line) mirrored to TensorBoard if installed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    """Appends ``{"step": ..., "split": "train"|"val", ...numbers}`` records; only rank 0 should own one."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tensorboard = _open_tensorboard(Path(out_dir) / "tensorboard")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (by a run that died after its last checkpoint), so a resumed
        run continues one loss curve instead of repeating steps."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            split = record.get("split", "train")
            for name, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                    self._tensorboard.add_scalar(f"{split}/{name}", value, record["step"])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _open_tensorboard(folder: Path) -> Any:
    try:  # tensorboard is optional: torch.utils.tensorboard raises ImportError without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))

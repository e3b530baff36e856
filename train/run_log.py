"""The run's metric log: ``metrics.jsonl`` (one JSON object per line) mirrored to TensorBoard if installed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamflow.fileio import parse_jsonl, read_jsonl, write_jsonl_atomic


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
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a run killed while appending a line: that line is cut off
            text = text[: text.rfind("\n") + 1]
        kept = [record for _, record in parse_jsonl(text, str(self.path)) if record["step"] <= step]
        write_jsonl_atomic(self.path, kept)

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
    return read_jsonl(path, "metrics.jsonl of a training run")


def _open_tensorboard(folder: Path) -> Any:
    try:  # tensorboard is optional: torch.utils.tensorboard raises ImportError without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))

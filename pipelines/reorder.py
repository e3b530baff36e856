"""Finished inputs that wait for an earlier, slower one, kept on disk until they are written.

The client writes samples in input order (so the same inputs give the same shards however workers
finish), which holds a finished sample back while an earlier input is still running. Each such sample is
also written to ``OUT/.reorder/`` as a one-sample tar (``<input index>.tar``, renamed into place once
complete) and deleted once it is in a shard. A killed client leaves them there; the next open of the output
directory puts those whose input is not in a shard yet into a shard (:func:`spilled_samples`), so a kill
loses only the inputs in flight, never finished ones.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lamflow.contract import read_samples
from lamflow.pipelines.shards import UnwritableSampleError, sample_tar

if TYPE_CHECKING:  # the worker module imports the encoders; opening an output directory needs none of them
    from lamflow.pipelines.worker import VideoOutcome

SPILL_DIR = ".reorder"


class ReorderBuffer:
    """Outcomes by input index, released in index order (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self._dir = Path(root) / SPILL_DIR
        self._waiting: dict[int, VideoOutcome] = {}
        self._next = 0

    def put(self, index: int, outcome: VideoOutcome) -> None:
        self._waiting[index] = outcome
        if index != self._next and outcome.sample is not None:
            self._spill(index, outcome.sample)

    def ready(self) -> Iterator[tuple[int, VideoOutcome]]:
        """The outcomes whose earlier inputs are all released, in order (delete each one's spill after
        the caller wrote it: the next call does)."""
        while self._next in self._waiting:
            index = self._next
            yield index, self._waiting.pop(index)
            self._unspill(index)
            self._next += 1

    def drain(self) -> Iterator[tuple[int, VideoOutcome]]:
        """Every waiting outcome, in index order, gaps and all (for a run that stops early)."""
        for index in sorted(self._waiting):
            yield index, self._waiting.pop(index)
            self._unspill(index)

    def __len__(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        if self._dir.is_dir() and not any(self._dir.iterdir()):
            self._dir.rmdir()

    def _path(self, index: int) -> Path:
        return self._dir / f"{index}.tar"

    def _spill(self, index: int, sample: dict[str, Any]) -> None:
        try:
            data = sample_tar(sample)
        except UnwritableSampleError:
            return  # nothing to keep: writing it in its turn records it as that input's failure
        self._dir.mkdir(exist_ok=True)
        partial = self._dir / f".{index}.tar.part"
        partial.write_bytes(data)
        os.replace(partial, self._path(index))  # flushed, not fsynced: a kill, not an OS crash, is the case

    def _unspill(self, index: int) -> None:
        self._path(index).unlink(missing_ok=True)


def spilled_samples(root: Path) -> Iterator[dict[str, Any]]:
    """The complete samples a killed run left in ``root``'s spill folder, in input order; the folder is
    removed by :func:`clear_spill` once they are safe."""
    folder = Path(root) / SPILL_DIR
    if not folder.is_dir():
        return
    spilled = sorted((p for p in folder.iterdir() if p.suffix == ".tar" and p.stem.isdigit()), key=lambda p: int(p.stem))
    for path in spilled:
        yield from read_samples(path)


def clear_spill(root: Path) -> None:
    shutil.rmtree(Path(root) / SPILL_DIR, ignore_errors=True)

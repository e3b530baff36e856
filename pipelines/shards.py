"""Atomic WebDataset shard writing.

Shards are written by webdataset's ``ShardWriter`` under a temporary name (``shard-000007.tar.tmp``)
and only renamed to ``shard-000007.tar`` once closed, flushed to disk and committed (the caller's
``on_commit`` appends the manifest records). So a final ``.tar`` name always means "complete and
recorded"; a killed run leaves at most one ``.tmp`` file, which the next run deletes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import webdataset as wds

from lamflow.contract import SHARD_PATTERN, encode_sample
from lamflow.fileio import fsync_dir

TEMP_SUFFIX = ".tmp"
DEFAULT_SHARD_SAMPLES = 1000
DEFAULT_SHARD_BYTES = 1_000_000_000

Record = TypeVar("Record")


def remove_temp_shards(shards_dir: Path) -> list[Path]:
    """Delete shards left half-written by a killed run; returns what was deleted."""
    if not shards_dir.is_dir():
        return []
    leftovers = [p for p in shards_dir.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    for path in leftovers:
        path.unlink()
    return leftovers


class ShardSink(Generic[Record]):
    """Writes samples into numbered shards and commits each shard with the records of its samples.

    ``on_commit(shard_name, records)`` runs after a shard is closed and fsynced but before it is renamed
    to its final name: if the process dies between the two, the next run sees records pointing at a
    missing shard and drops them (see manifest.py), so "a final shard exists" implies "all its samples
    are recorded". Rolls over after ``max_samples`` samples or once ``max_bytes`` is reached (a shard may
    exceed ``max_bytes`` by its last sample).

    Used as a context manager: a normal exit commits the open shard, an exception (Ctrl-C included)
    goes through :meth:`close_after_error`, so finished samples survive an interrupted run.
    """

    def __init__(
        self,
        shards_dir: Path,
        start_index: int,
        max_samples: int,
        max_bytes: int,
        on_commit: Callable[[str, list[Record]], None],
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"shard_samples must be >= 1, got {max_samples}")
        if max_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1, got {max_bytes}")
        self.shards_dir = Path(shards_dir)
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.start_index = start_index
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.on_commit = on_commit
        self.committed: list[str] = []
        self._writer: wds.ShardWriter | None = None  # opened on the first sample: no empty shard files
        self._file: Any = None
        self._pending: list[Record] = []
        self._torn = False  # True while a sample is half-written into the open shard

    def _open(self, temp_name: str) -> Any:
        self._file = open(temp_name, "wb")
        return self._file

    def _commit(self, temp_name: str) -> None:
        """ShardWriter's ``post`` hook: called after the TarWriter of ``temp_name`` is closed."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        temp = Path(temp_name)
        records, self._pending = self._pending, []
        if not records:
            temp.unlink()
            return
        final = temp.with_name(temp.name[: -len(TEMP_SUFFIX)])
        self.on_commit(final.name, records)
        os.replace(temp, final)
        fsync_dir(self.shards_dir)
        self.committed.append(final.name)

    def write(self, sample: dict[str, Any], record: Record) -> None:
        """Add one sample; ``record`` is handed to ``on_commit`` with its shard."""
        encoded = encode_sample(sample)
        if self._writer is None:
            self._writer = wds.ShardWriter(
                str(self.shards_dir / (SHARD_PATTERN + TEMP_SUFFIX)),
                maxcount=self.max_samples,
                maxsize=self.max_bytes,
                post=self._commit,
                start_shard=self.start_index,
                verbose=0,
                opener=self._open,
                encoder=False,
            )
        self._torn = True
        self._writer.write(encoded)  # may first roll over, committing the previous shard
        self._pending.append(record)
        self._torn = False

    def __enter__(self) -> "ShardSink[Record]":
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: Any) -> None:
        if error_type is None:
            self.close()
        else:
            self.close_after_error()

    def close(self) -> None:
        """Commit the open shard (every sample in it is complete)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close_after_error(self) -> None:
        """On an interrupted run: keep the complete samples of the open shard (commit it) unless the
        interruption hit in the middle of writing a sample, in which case drop the shard."""
        if self._torn:
            self.abort()
        else:
            self.close()

    def abort(self) -> None:
        """Drop the open shard without committing it."""
        if self._file is not None and not self._file.closed:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
        self._writer = None
        self._pending = []

"""Atomic WebDataset shard writing that never loses a finished sample.

A shard is written under a temporary name (``shard-000007.tar.tmp``) and only renamed to
``shard-000007.tar`` once closed, fsynced and committed (the caller's ``on_commit`` appends the manifest
records). So a final ``.tar`` name always means "complete and recorded".

Inside the open shard, the unit of durability is the sample: each sample's tar members are written with
its ``meta.json`` last and handed to the operating system (flushed) before the next sample starts. A
process killed at any moment (kill -9, walltime, Ctrl-C, a lost node) therefore leaves a ``.tmp`` that
holds every sample it finished, followed by at most one cut-off sample; :func:`salvage_temp_shard` keeps
the complete ones, so a restart re-extracts only the videos that were in flight. (Flushing is not
fsyncing: if the machine itself crashes, what its page cache held is lost and only committed shards are
guaranteed. A fsync per sample would cost more than the sample on network file systems.)
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Generic, Iterator, TypeVar

import numpy as np

from lamflow.fileio import fsync_dir

SHARD_PATTERN = "shard-%06d.tar"
TEMP_SUFFIX = ".tmp"
DEFAULT_SHARD_SAMPLES = 1000
DEFAULT_SHARD_BYTES = 1_000_000_000
META_FIELD = "meta.json"  # written last in every sample: a whole meta.json means a whole sample
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.tar$")
_BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = tarfile.NUL * (2 * _BLOCK)

Record = TypeVar("Record")


def shard_index(name: str) -> int | None:
    """The number of a final shard file name, or None for anything else."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


def final_shards(shards_dir: Path) -> list[Path]:
    """Final (complete) shard files in ``shards_dir``, in shard-number order."""
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if shard_index(p.name) is not None]
    return sorted(found, key=lambda p: shard_index(p.name))


def temp_shards(shards_dir: Path) -> list[Path]:
    """Shards left unfinished by an interrupted run (see :func:`salvage_temp_shard`), oldest first."""
    if not shards_dir.is_dir():
        return []
    return sorted(p for p in shards_dir.iterdir() if p.name.endswith(TEMP_SUFFIX))


def encode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Encode a sample's fields to bytes: ``.npy`` via ``np.save(allow_pickle=False)``, ``.json`` as UTF-8.

    Encoding here (instead of webdataset's default encoder) guarantees no pickle ever enters a shard:
    an object array fails loudly at write time, naming the field.
    """
    key = sample.get("__key__")
    if not key or "." in key:
        raise ValueError(f"sample key must be a non-empty string without dots, got {key!r}")
    encoded: dict[str, Any] = {"__key__": key}
    for name, value in sample.items():
        if name == "__key__":
            continue
        if name.endswith(".npy"):
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"sample {key!r}: field {name!r} has dtype object; store numeric arrays only")
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            encoded[name] = buffer.getvalue()
        elif name.endswith(".json"):
            encoded[name] = json.dumps(value, sort_keys=True, allow_nan=False).encode("utf-8")
        else:
            raise ValueError(f"sample {key!r}: field {name!r} is neither .npy nor .json; the shard contract has no such field")
    return encoded


def _tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One ustar member: header, data, zero padding to the next 512-byte block (what tarfile writes)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    info.uname = info.gname = "bigdata"  # webdataset's TarWriter defaults, so shards look the same as before
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + data + tarfile.NUL * (-len(data) % _BLOCK)


def _sample_bytes(encoded: dict[str, Any]) -> bytes:
    """A sample's tar members in field order, ``meta.json`` last (the completeness mark, see the module doc)."""
    key, mtime = encoded["__key__"], int(time.time())
    fields = sorted((f for f in encoded if f != "__key__"), key=lambda f: (f == META_FIELD, f))
    return b"".join(_tar_member(f"{key}.{field}", encoded[field], mtime) for field in fields)


def _end_tar(handle: IO[bytes], end: int) -> None:
    """Make ``handle`` a complete tar ending after byte ``end`` (a sample boundary): cut what follows,
    write the end-of-archive blocks and pad to tar's record size, as ``tarfile`` does on close; fsync."""
    handle.seek(end)
    handle.truncate()
    handle.write(_END_OF_ARCHIVE)
    handle.write(tarfile.NUL * (-(end + len(_END_OF_ARCHIVE)) % tarfile.RECORDSIZE))
    handle.flush()
    os.fsync(handle.fileno())


class ShardSink(Generic[Record]):
    """Writes samples into numbered shards and commits each shard with the records of its samples.

    ``on_commit(shard_name, records)`` runs after a shard is closed and fsynced but before it is renamed
    to its final name: if the process dies between the two, the next run sees records pointing at a
    missing shard and replaces them by the salvaged shard's (see manifest.py), so "a final shard exists"
    implies "all its samples are recorded". Rolls over after ``max_samples`` samples or once
    ``max_bytes`` is reached (a shard may exceed ``max_bytes`` by its last sample).

    Used as a context manager: any exit, an exception or Ctrl-C included, commits the complete samples
    of the open shard (a sample cut off by the exception is left out).
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
        self.next_index = start_index
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.on_commit = on_commit
        self.committed: list[str] = []
        self._file: IO[bytes] | None = None  # opened on the first sample: no empty shard files
        self._pending: list[Record] = []
        self._end = 0  # bytes of complete samples in the open shard

    def write(self, sample: dict[str, Any], record: Record) -> None:
        """Add one sample (durable against a killed process once this returns); ``record`` is handed to
        ``on_commit`` with its shard."""
        data = _sample_bytes(encode_sample(sample))
        if self._file is not None and (len(self._pending) >= self.max_samples or self._end >= self.max_bytes):
            self._commit()
        if self._file is None:
            self._file = open(self.shards_dir / (SHARD_PATTERN % self.next_index + TEMP_SUFFIX), "wb")
            self.next_index += 1
        self._file.write(data)
        self._file.flush()
        self._end += len(data)
        self._pending.append(record)

    def _commit(self) -> None:
        handle, records = self._file, self._pending
        self._file, self._pending, end, self._end = None, [], self._end, 0
        with handle:
            _end_tar(handle, end)
        temp = Path(handle.name)
        if not records:
            temp.unlink()
            return
        final = temp.with_name(temp.name[: -len(TEMP_SUFFIX)])
        self.on_commit(final.name, records)
        os.replace(temp, final)
        fsync_dir(self.shards_dir)
        self.committed.append(final.name)

    def __enter__(self) -> "ShardSink[Record]":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        """Commit the open shard's complete samples."""
        if self._file is not None:
            self._commit()


def complete_samples(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The complete samples at the start of a shard written by :class:`ShardSink`, finished or not.

    Reads the tar members in order and stops at the first one that is cut off, malformed or out of
    place; a sample counts as complete once its ``meta.json`` (always its last member) is whole and
    parses. Returns ``(key, meta)`` of those samples in tar order and the byte offset where they end.
    """
    samples: list[tuple[str, dict[str, Any]]] = []
    end = 0
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        offset, key = 0, None  # key: the sample being read (None between samples)
        while offset + _BLOCK <= size:
            try:
                info = tarfile.TarInfo.frombuf(handle.read(_BLOCK), "utf-8", "surrogateescape")
            except tarfile.HeaderError:  # zero block (end of archive), or a header cut off or garbled
                break
            data_start = offset + _BLOCK
            if not info.isfile() or data_start + info.size > size:
                break
            member_key, _, field = info.name.partition(".")
            if key is not None and member_key != key:
                break  # a sample whose members stop before its meta.json: not written by ShardSink
            key = member_key
            offset = data_start + info.size + (-info.size % _BLOCK)
            if field == META_FIELD:
                try:
                    meta = json.loads(handle.read(info.size))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not isinstance(meta, dict):
                    break
                samples.append((key, meta))
                key, end = None, offset
            handle.seek(offset)
    return samples, end


def salvage_temp_shard(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Turn an unfinished shard into a complete one holding its :func:`complete_samples`: truncate
    after the last complete sample, end the tar, fsync. Returns ``(key, meta)`` of the kept samples;
    ``[]`` (nothing complete) leaves the file untouched."""
    samples, end = complete_samples(path)
    if samples:
        with open(path, "r+b") as handle:
            _end_tar(handle, end)
    return samples


def iter_shard(path: str | Path, fields: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Read a shard back as samples: ``.npy`` fields as arrays (never unpickled), ``.json`` as objects.

    ``fields`` limits what is read (e.g. ``{"meta.json"}``); the others are skipped unread.
    """
    sample: dict[str, Any] | None = None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, field = member.name.partition(".")
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key}
            if fields is not None and field not in fields:
                continue
            data = tar.extractfile(member).read()
            if field.endswith(".npy"):
                sample[field] = np.load(io.BytesIO(data), allow_pickle=False)
            elif field.endswith(".json"):
                sample[field] = json.loads(data)
            else:
                sample[field] = data
    if sample is not None:
        yield sample

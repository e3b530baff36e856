"""Atomic WebDataset shard writing that never loses a finished sample.

A shard is written under a temporary name (``.shard-000007.tar.tmp``, lamflow.fileio's scheme) and only renamed to
``shard-000007.tar`` once closed, fsynced and committed (the caller's ``on_commit`` appends the manifest
records); the rename is then synced into the directory. So a final ``.tar`` name always means "complete
and recorded", after a machine crash too.

Members are written in pax format, so a key of any allowed length fits (see :func:`_tar_member`).

Inside the open shard, the unit of durability is the sample: each sample's tar members are written with
its ``meta.json`` last and handed to the operating system (flushed) before the next sample starts. A
process killed at any moment (kill -9, walltime, Ctrl-C, a lost node) therefore leaves a temporary shard that
holds every sample it finished, followed by at most one cut-off sample; :func:`salvage_temp_shard` keeps
the complete ones, so a restart re-extracts only the videos that were in flight. (Flushing is not
fsyncing: if the machine itself crashes, what its page cache held is lost and only committed shards are
guaranteed. A fsync per sample would cost more than the sample on network file systems.)
"""
from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Generic, Iterator, TypeVar

from lamflow.contract import (
    META,
    SHARD_PATTERN,
    ContractError,
    array_width,
    decode_meta,
    encode_sample,
    is_token_field,
    npy_header,
    shard_index,
    split_member,
)
from lamflow.errors import ConfigError
from lamflow.fileio import commit_temp, final_path, mkdir_durable, temp_path

# A shard is closed at whichever comes first (the --shard-samples / --shard-bytes defaults of every command).
DEFAULT_SHARD_SAMPLES = 1000
DEFAULT_SHARD_BYTES = 1_000_000_000
_BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = tarfile.NUL * (2 * _BLOCK)

Record = TypeVar("Record")


class UnwritableSampleError(ContractError):
    """A sample that cannot be encoded into a shard (a NaN in its meta.json, an object array, a bad key ...).

    Raised by :meth:`ShardSink.write` before any byte of the sample is written, so the open shard is intact
    and the caller records the input as failed and goes on."""


def temp_shards(shards_dir: Path) -> list[Path]:
    """Shards left unfinished by an interrupted run (see :func:`salvage_temp_shard`), oldest first: the
    :func:`lamflow.fileio.temp_path` of a shard name (``.shard-000007.tar.tmp``)."""
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if (final := final_path(p)) is not None and shard_index(final.name) is not None]
    return sorted(found, key=lambda p: shard_index(final_path(p).name))


def _tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One member as tarfile writes it in POSIX.1-2001 (pax) format: header, data, zero padding to the next
    512-byte block. A name that fits ustar's 100-byte field gets a plain ustar header, byte for byte what
    shards held before; a longer one (a 120-character key plus ``.text_pooled.npy``) is preceded by a pax
    ``x`` header carrying the full name, which tarfile, GNU tar and webdataset read."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    info.uname = info.gname = "bigdata"  # webdataset's TarWriter defaults, so shards look the same as before
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + tarfile.NUL * (-len(data) % _BLOCK)


def _sample_bytes(sample: dict[str, Any]) -> bytes:
    """A sample's tar members in field order, ``meta.json`` last (the completeness mark, see the module doc);
    :class:`UnwritableSampleError` if it cannot be encoded."""
    try:
        encoded = encode_sample(sample)
        key, mtime = encoded["__key__"], int(time.time())
        fields = sorted((f for f in encoded if f != "__key__"), key=lambda f: (f == META, f))
        return b"".join(_tar_member(f"{key}.{field}", encoded[field], mtime) for field in fields)
    except (ValueError, TypeError) as error:  # ContractError, NaN or a non-JSON value in meta.json, ...
        raise UnwritableSampleError(f"sample {sample.get('__key__')!r} cannot be written to a shard: {error}") from None


def sample_tar(sample: dict[str, Any]) -> bytes:
    """A complete tar holding just ``sample``, written as a shard writes it (see :func:`_sample_bytes`)."""
    data = _sample_bytes(sample)
    return data + _END_OF_ARCHIVE + tarfile.NUL * (-(len(data) + len(_END_OF_ARCHIVE)) % tarfile.RECORDSIZE)


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
            raise ConfigError(f"--shard-samples must be >= 1, got {max_samples}")
        if max_bytes < 1:
            raise ConfigError(f"--shard-bytes must be >= 1, got {max_bytes}")
        self.shards_dir = mkdir_durable(shards_dir)
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
        ``on_commit`` with its shard. A sample that cannot be encoded raises :class:`UnwritableSampleError`
        and leaves the sink as it was."""
        data = _sample_bytes(sample)
        if self._file is not None and (len(self._pending) >= self.max_samples or self._end >= self.max_bytes):
            self._commit()
        if self._file is None:
            self._file = open(temp_path(self.shards_dir / (SHARD_PATTERN % self.next_index)), "wb")
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
        final = final_path(temp)
        self.on_commit(final.name, records)
        commit_temp(final)
        self.committed.append(final.name)

    def __enter__(self) -> "ShardSink[Record]":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        """Commit the open shard's complete samples."""
        if self._file is not None:
            self._commit()


Kept = tuple[str, dict[str, Any], dict[str, int]]  # (key, meta.json, feature width per stream)


def _whole_members(tar: tarfile.TarFile, size: int) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` (``size`` bytes on disk) in order, up to the first that is cut off, garbled or
    not a regular file. tarfile reads pax headers itself and ends quietly at a garbled or zero header; a
    cut-off header, or a pax header whose member is cut off, is its ReadError."""
    while True:
        try:
            info = tar.next()
        except tarfile.ReadError:
            return
        if info is None or not info.isfile() or info.offset_data + info.size > size:
            return
        yield info


def complete_samples(path: Path) -> tuple[list[Kept], int]:
    """The complete samples at the start of a shard written by :class:`ShardSink`, finished or not.

    Reads the tar members in order and stops at the first one that is cut off, malformed or out of
    place; a sample counts as complete once its ``meta.json`` (always its last member) is whole and
    parses. Returns ``(key, meta, widths)`` of those samples in tar order (widths from the ``.npy``
    headers, as the manifest records them) and the byte offset where they end.
    """
    samples: list[Kept] = []
    end = 0
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError:  # not even one whole header
        return samples, end
    with tar:
        key, widths = None, {}  # key: the sample being read (None between samples)
        for info in _whole_members(tar, os.fstat(tar.fileobj.fileno()).st_size):
            member_key, field = split_member(info.name)
            if key is not None and member_key != key:
                break  # a sample whose members stop before its meta.json: not written by ShardSink
            key = member_key
            if field == META:
                try:
                    meta = decode_meta(tar.extractfile(info).read(), info.name)
                except ContractError:
                    break
                samples.append((key, meta, widths))
                key, end, widths = None, info.offset_data + info.size + (-info.size % _BLOCK), {}
            elif field and is_token_field(field):
                try:
                    width = array_width(npy_header(tar.extractfile(info).read(4096))[0])
                except ValueError:
                    break
                if width is not None:
                    widths[field[: -len(".npy")]] = width
    return samples, end


def salvage_temp_shard(path: Path) -> list[Kept]:
    """Turn an unfinished shard into a complete one holding its :func:`complete_samples`: truncate
    after the last complete sample, end the tar, fsync. Returns ``(key, meta, widths)`` of the kept
    samples; ``[]`` (nothing complete) leaves the file untouched."""
    samples, end = complete_samples(path)
    if samples:
        with open(path, "r+b") as handle:
            _end_tar(handle, end)
    return samples

"""The latest manifest record of every input, as arrays: what a resume needs, at 10^7 inputs.

A resume must know, for each input, whether it is done, failed or new, which key it holds and which shard
holds its sample. Parsing ``manifest.jsonl`` into one Python object per record costs ~2 GiB and a minute
per 10^6 records, so an output directory keeps this index beside its manifest instead
(``.manifest-index.npz``, written atomically; numeric arrays only, read with ``allow_pickle=False``):

    source_hash, key_hash   uint64   64-bit BLAKE2b of the source path and of the key (sorted by source)
    status                  uint8    OK or ERROR
    shard                   int32    position in ``shards`` (the shard file names), -1 for a failure
    line                    int64    0-based manifest line of the record (the latest of its source)

29 bytes per input. The manifest stays the truth: the index records how many bytes of it it covers, the
file's inode and its last bytes there, so appends made after it (a killed run, a newer version's
records) are read from that offset on and anything else (a rewritten or edited manifest) rebuilds it from
the manifest. An output directory written before the index existed gets it on first open.

64-bit hashes: two different inputs of one 10^7-input directory share a hash with probability ~3e-6;
such a pair would make one of them look done. :func:`stable_hash` is the one hash, also used to partition.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lamflow.contract import Record
from lamflow.errors import DataFileError
from lamflow.fileio import write_bytes_atomic

INDEX_FILE = ".manifest-index.npz"
INDEX_VERSION = 1
OK, ERROR = 1, 2
_STATUS = {"ok": OK, "error": ERROR}
_TAIL_BYTES = 64  # the manifest's bytes before the covered offset, to tell an append from a rewrite
_READ_BLOCK = 16 << 20


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and Python version (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def stable_hashes(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((stable_hash(t) for t in texts), dtype=np.uint64)


def sorted_positions(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each of ``values`` in the sorted, unique ``table`` (-1 where it is not there)."""
    if not len(table):
        return np.full(len(values), -1, np.int64)
    positions = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return np.where(table[positions] == values, positions, -1)


@dataclass
class RecordIndex:
    """The latest record of every input of one manifest (see the module docstring)."""

    source_hash: np.ndarray
    key_hash: np.ndarray
    status: np.ndarray
    shard: np.ndarray
    line: np.ndarray
    shards: list[str]
    lines: int = 0  # manifest lines covered, superseded records included
    covered: int = 0  # manifest bytes covered

    @classmethod
    def empty(cls) -> "RecordIndex":
        return cls(*(np.zeros(0, dtype) for dtype in (np.uint64, np.uint64, np.uint8, np.int32, np.int64)), shards=[])

    def __len__(self) -> int:
        return len(self.source_hash)

    @property
    def superseded(self) -> int:
        """Manifest lines that are not the latest record of their input (a compaction drops them)."""
        return self.lines - len(self)

    def lookup(self, source_hashes: np.ndarray) -> np.ndarray:
        """Position in the index of each of ``source_hashes`` (-1 where the input has no record)."""
        return sorted_positions(self.source_hash, source_hashes)

    def at(self, positions: np.ndarray, column: str, missing: int) -> np.ndarray:
        """``column`` at ``positions`` from :meth:`lookup`, ``missing`` where there is no record."""
        values = getattr(self, column)
        if not len(values):
            return np.full(len(positions), missing, values.dtype)
        return np.where(positions >= 0, values[np.maximum(positions, 0)], np.array(missing).astype(values.dtype))

    def without(self, mask: np.ndarray) -> "RecordIndex":
        """This index less the records where ``mask`` is True (their manifest lines stay until compaction)."""
        keep = ~mask
        return dataclasses.replace(self, source_hash=self.source_hash[keep], key_hash=self.key_hash[keep],
                                   status=self.status[keep], shard=self.shard[keep], line=self.line[keep])

    # -- growing ------------------------------------------------------------------------------------------
    def merged(self, new: "_Lines") -> "RecordIndex":
        """This index with the records of ``new`` (later manifest lines) applied: the latest per input wins."""
        shard_of = {name: i for i, name in enumerate(self.shards)}
        shards = list(self.shards)
        new_shard = np.empty(len(new.shard_names), np.int32)
        for i, name in enumerate(new.shard_names):
            if name is None:
                new_shard[i] = -1
                continue
            if name not in shard_of:
                shard_of[name] = len(shards)
                shards.append(name)
            new_shard[i] = shard_of[name]
        columns = [np.concatenate([old, np.frombuffer(fresh, dtype)]) for old, fresh, dtype in (
            (self.source_hash, new.source_hash, np.uint64), (self.key_hash, new.key_hash, np.uint64),
            (self.status, new.status, np.uint8), (self.line, new.line, np.int64))]
        source_hash, key_hash, status, line = columns
        shard = np.concatenate([self.shard, new_shard])
        order = np.lexsort((line, source_hash))  # by input, then by line: the last of each group is the latest
        source_hash = source_hash[order]
        latest = np.ones(len(order), bool)
        latest[:-1] = source_hash[1:] != source_hash[:-1]
        keep = order[latest]
        return RecordIndex(source_hash[latest], key_hash[keep], status[keep], shard[keep], line[keep], shards,
                           lines=self.lines + new.lines_read, covered=self.covered + new.bytes_read)

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, manifest: Path) -> None:
        """Write the index beside ``manifest`` (atomically), tied to the manifest's current state."""
        meta = {"version": INDEX_VERSION, "lines": self.lines, "covered": self.covered, "shards": self.shards,
                **_fingerprint(manifest, self.covered)}
        buffer = io.BytesIO()
        np.savez(buffer, source_hash=self.source_hash, key_hash=self.key_hash, status=self.status, shard=self.shard,
                 line=self.line, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        write_bytes_atomic(manifest.parent / INDEX_FILE, buffer.getvalue())


@dataclass
class _Lines:
    """Per-line columns of a stretch of manifest, in compact stdlib arrays while they grow."""

    source_hash: array = dataclasses.field(default_factory=lambda: array("Q"))
    key_hash: array = dataclasses.field(default_factory=lambda: array("Q"))
    status: array = dataclasses.field(default_factory=lambda: array("B"))
    line: array = dataclasses.field(default_factory=lambda: array("q"))
    shard_names: list[str | None] = dataclasses.field(default_factory=list)
    lines_read: int = 0  # blank lines included: they are lines of the file, but no record
    bytes_read: int = 0

    def add(self, source: str, key: str, status: str, shard: str | None, line: int) -> None:
        self.source_hash.append(stable_hash(source))
        self.key_hash.append(stable_hash(key))
        self.status.append(_STATUS.get(status, ERROR))
        self.line.append(line)
        # interned: a shard's name is one object for its 1000 records
        self.shard_names.append(None if status != "ok" or not shard else _intern(shard))

    def add_line(self, line: bytes, manifest: Path, number: int) -> None:
        """One manifest line, reading only the four fields the index keeps (no Record: 10^7 lines)."""
        try:
            data = json.loads(line)
            self.add(data["source"], data["key"], data["status"], data.get("shard"), number)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as error:
            raise DataFileError(f"{manifest}:{number + 1}: not a valid manifest record ({type(error).__name__}: "
                                f"{error}); fix the line or re-run the extraction with --overwrite") from None


_interned: dict[str, str] = {}


def _intern(name: str) -> str:
    return _interned.setdefault(name, name)


def _fingerprint(manifest: Path, covered: int) -> dict[str, object]:
    """What ties an index to the manifest it was made from: inode, and the bytes just before ``covered``."""
    try:
        stat = manifest.stat()
    except FileNotFoundError:
        return {"inode": None, "tail": ""}
    with open(manifest, "rb") as handle:
        start = max(0, covered - _TAIL_BYTES)
        handle.seek(start)
        tail = handle.read(covered - start)
    return {"inode": stat.st_ino, "tail": tail.hex()}


def manifest_lines(manifest: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of each complete line of ``manifest`` from byte ``start``;
    a last line without a newline (torn by a killed writer) is not yielded."""
    with open(manifest, "rb") as handle:
        handle.seek(start)
        offset, rest = start, b""
        while block := handle.read(_READ_BLOCK):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield offset, line
                offset += len(line) + 1


def parse_line(line: bytes, manifest: Path, number: int) -> Record:
    try:
        return Record.from_json(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
        raise DataFileError(f"{manifest}:{number}: not a valid manifest record ({error}); fix the line or "
                            "re-run the extraction with --overwrite") from None


def read_index(manifest: Path) -> tuple[RecordIndex, bool]:
    """(the index of ``manifest``, torn): the saved index if it still describes the manifest, brought up to
    date with the lines appended since; else rebuilt from the manifest. ``torn``: the manifest ends in a
    line cut off by a killed writer (left out)."""
    index = _load_saved(manifest)
    if not manifest.exists():
        return RecordIndex.empty(), False
    size = manifest.stat().st_size
    lines = _Lines()
    for offset, line in manifest_lines(manifest, index.covered):
        number = index.lines + lines.lines_read
        lines.lines_read += 1
        lines.bytes_read = offset + len(line) + 1 - index.covered
        if line.strip():
            lines.add_line(line, manifest, number)
    updated = index.merged(lines)
    return updated, updated.covered < size


def _load_saved(manifest: Path) -> RecordIndex:
    """The saved index of ``manifest`` if it still describes a prefix of it, else an empty one."""
    path = manifest.parent / INDEX_FILE
    if not path.exists() or not manifest.exists():
        return RecordIndex.empty()
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(saved["meta"].tobytes())
            arrays = {name: saved[name] for name in ("source_hash", "key_hash", "status", "shard", "line")}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return RecordIndex.empty()  # damaged or foreign: the manifest rebuilds it
    if (meta.get("version") != INDEX_VERSION or manifest.stat().st_size < meta["covered"]
            or _fingerprint(manifest, meta["covered"]) != {"inode": meta.get("inode"), "tail": meta.get("tail")}):
        return RecordIndex.empty()
    return RecordIndex(**arrays, shards=list(meta["shards"]), lines=meta["lines"], covered=meta["covered"])


def latest_lines(manifest: Path, index: RecordIndex) -> Iterator[tuple[int, bytes]]:
    """(0-based line number, line) of the latest record of every input of ``manifest`` (as ``index`` names
    them), in manifest order, streamed."""
    if not len(index):
        return
    latest = np.zeros(index.lines, bool)
    latest[index.line] = True
    for number, (_, line) in enumerate(manifest_lines(manifest)):
        if number < len(latest) and latest[number]:
            yield number, line


def latest_records(manifest: Path, index: RecordIndex) -> Iterator[Record]:
    """The latest record of every input of ``manifest``, parsed (see :func:`latest_lines`)."""
    for number, line in latest_lines(manifest, index):
        yield parse_line(line, manifest, number + 1)


class GrowingIndex:
    """An index and the records appended to its manifest since, merged into it when it is asked for: an
    append costs its own records, not a sort of every input (a run appends once per shard and per failure)."""

    def __init__(self, index: RecordIndex) -> None:
        self._index = index
        self._new = _Lines()

    @property
    def lines(self) -> int:
        return self._index.lines + self._new.lines_read

    def add(self, records: list[Record], size_after: int) -> None:
        """``records`` were appended to the manifest, which is now ``size_after`` bytes long."""
        for record in records:
            self._new.add(record.source, record.key, record.status, record.shard, self.lines)
            self._new.lines_read += 1
        self._new.bytes_read = size_after - self._index.covered

    @property
    def current(self) -> RecordIndex:
        if self._new.lines_read:
            self._index, self._new = self._index.merged(self._new), _Lines()
        return self._index


def find_records(manifest: Path, source_hashes: Iterable[int]) -> dict[int, Record]:
    """The latest records of the inputs with ``source_hashes``, read from the manifest (a full scan: for
    the few records a plan needs in full, e.g. the keys of failed inputs to retry)."""
    wanted = set(int(h) for h in source_hashes)
    found: dict[int, Record] = {}
    if not wanted or not manifest.exists():
        return found
    for number, (_, line) in enumerate(manifest_lines(manifest), start=1):
        if line.strip():
            record = parse_line(line, manifest, number)
            if (h := stable_hash(record.source)) in wanted:
                found[h] = record
    return found

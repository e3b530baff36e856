"""The sample index of an output directory: every sample's key, recorded name, shard and feature widths as
memory-mapped arrays, so a training rank plans an epoch over 10^7 samples without a Python object per sample,
and the ranks of a node (or of a job, on a shared file system) share one copy through the page cache.

It holds what readers took from ``manifest.jsonl`` + ``sizes.json`` before: the ``ok`` record of each input's
latest attempt, per shard of ``sizes.json`` (in name order) in manifest order; a shard whose records disagree
with ``sizes.json`` is listed from its tar headers (names = keys, widths not recorded). It is built once, by the
extractor at the end of a run (:func:`build_index`) or by the first reader that finds it missing or stale
(:func:`open_index`): an flock makes the other ranks wait for that build, then they map it. It is stale when
``manifest.jsonl`` changed size or mtime, or ``sizes.json`` its content, since it was built (``rsync -a`` keeps
them).

``DIR/sample_index/`` (a folder of the user's cache when ``DIR`` is not writable) holds, for S shards, N samples
(positions: in shard order, tar order inside) and M rows (one per ``ok`` record read; N <= M)::

    index.json                      format, the files it was built from, shard names, the dims table (written last)
    shard_starts.npy      int64     [S+1] shard s holds positions shard_starts[s] .. shard_starts[s+1]-1
    rows.npy              uint32    [N] the row of each position
    keys.bin, names.bin   bytes     UTF-8 keys and recorded names (original_name, else the key) of the rows
    key_offsets.npy, name_offsets.npy  int64 [M+1] row r's string is bytes offsets[r] .. offsets[r+1]-1
    dims.npy              uint32    [M] each row's entry of index.json "dims" (entry 0 is {}: widths not recorded)
    shard_dims.npy        int64     [S, len(dims)] samples per (shard, dims entry)
    VIEW_hashes.npy       uint32    [N] sorted CRC-32 of each position's VIEW string (see VIEWS)
    VIEW_positions.npy    uint32    [N] the position of each hash

About 110 bytes per sample with 25-byte keys and names. Annotations are joined by looking their names up in the
VIEW tables and handing the few samples found to :func:`lamflow.contract.join_names`, which decides
(:func:`annotated_lookups` lists the strings its rules compare, so nothing it could match is missed; a CRC
collision only adds a sample it then rejects).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np

from lamflow.contract import MANIFEST, SAMPLE_INDEX, SHARDS_DIR, SIZES, Record, iter_members, safe_key
from lamflow.errors import DataFileError
from lamflow.fileio import atomic_open, commit_temp, read_json, temp_path, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "lamflow-sample-index/1"
HEADER = "index.json"
_LOCK = ".lock"
# The strings of a sample that join_names compares annotated names with: its name, key, the name's last path
# component, the key less its last "_" suffix (a media extension, for rule 5).
VIEWS = ("name", "key", "last", "key_stem")
_BLOCK = 16 << 20  # manifest bytes parsed at a time
_PART = 64 << 20  # manifest bytes worth a process of their own
_MAX_READERS = 8
_ENCODING = ("utf-8", "surrogatepass")  # JSON may carry lone surrogates; they round-trip


class _BadLine(Exception):
    """A manifest line that is not a record, at a byte offset (turned into ``file:line`` by :func:`_scan`)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset, self.reason = offset, reason


# ---- reading the manifest ---------------------------------------------------------------------------------------
# A line as OutputDir writes it (json.dumps(record, sort_keys=True)) with no backslash in it holds its last fields
# in a fixed order, nothing escaped: counting quotes back from its end finds them, and the field names around
# them, checked on every line, prove the count right. numpy does this for a block of lines at once and Python
# only slices the strings out; any other line (escapes, other fields, a blank line) is decoded by json.
_OK_END, _ERROR_END = b'", "status": "ok"}', b'", "status": "error"}'  # from the source's closing quote
_SOURCE_MARK = b'", "source": "'  # from the shard's closing quote to the source's opening one
_SHARD_MARK = b', "shard": "'  # to the shard's opening quote
_KEY_MARK = b', "key": "'  # to the key's opening quote
_NULL_NAME = b'", "original_name": null, "seconds": '  # from the key's closing quote
_NAME_MARK, _NAME_END = b'", "original_name": "', b'", "seconds": '  # from the key's / the name's closing quote
_DIMS, _DURATION = b'}, "dims": {', b'}, "duration": '  # from the first and the second "}" of the line


@functools.lru_cache(maxsize=None)
def _pieces(literal: bytes) -> tuple[tuple[int, np.uint64], ...]:
    """``literal`` (8 bytes or more) as 8-byte integers at their offsets, the last one ending where it ends."""
    return tuple((offset, np.frombuffer(literal[offset: offset + 8], np.uint64)[0])
                 for offset in sorted({*range(0, len(literal) - 7, 8), len(literal) - 8}))


def _words(buf: np.ndarray) -> np.ndarray:
    """``words[i]``: the 8 bytes of ``buf`` from byte i as one integer (a view, no copy)."""
    if len(buf) < 8:
        return np.zeros(0, np.uint64)
    return np.lib.stride_tricks.sliding_window_view(buf, 8).view(np.uint64)[:, 0]


def _matches(words: np.ndarray, at: np.ndarray, literal: bytes) -> np.ndarray:
    """Whether ``literal`` is the text at ``a``, for each ``a`` of ``at`` (``words``: see :func:`_words`)."""
    top = len(words) - 1 - (len(literal) - 8)  # the last start at which the literal fits
    if top < 0:
        return np.zeros(len(at), bool)
    inside = np.clip(at, 0, top)
    found = inside == at
    for offset, piece in _pieces(literal):
        found &= words[inside + offset] == piece
    return found


def _ending_at(words: np.ndarray, end: np.ndarray, literal: bytes) -> np.ndarray:
    """Whether ``literal`` is the text ending at (and including) byte ``e``, for each ``e`` of ``end``."""
    return _matches(words, end - len(literal) + 1, literal)


def _decoded(line: bytes, offset: int) -> tuple | None:
    """(ok, source, key, name, shard, dims text) of a line through ``json`` and :class:`Record` (the dims as a
    canonical line holds them); None for a blank line."""
    if not line.strip():
        return None
    try:
        record = Record.from_json(json.loads(line))
        source, key, name = (value.encode(*_ENCODING) for value in (record.source, record.key, record.name))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
        raise _BadLine(offset, f"not a valid manifest record ({error})") from None
    shard = record.shard.encode(*_ENCODING) if isinstance(record.shard, str) and record.shard else None
    dims = json.dumps(record.dims, sort_keys=True)
    return record.status == "ok", source, key, name, shard, (dims[1:-1] if isinstance(record.dims, dict) else dims).encode()


class _Lines:
    """A block of whole manifest lines, with the positions of the bytes that structure them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        buf = np.frombuffer(data, np.uint8)
        self.words = _words(buf)
        self.ends, self.quotes, self.braces = (np.flatnonzero(buf == ord(c)) for c in '\n"}')
        self.starts = np.concatenate([[0], self.ends[:-1] + 1]).astype(np.int64)
        self.plain = np.ones(len(self.ends), bool)  # no backslash: nothing escaped
        if b"\\" in data:
            self.plain[np.searchsorted(self.ends, np.flatnonzero(buf == ord("\\")))] = False
        self.last = np.searchsorted(self.quotes, self.ends) - 1  # each line's last quote
        self.quoted = self.last + 1 - np.searchsorted(self.quotes, self.starts)

    def quote(self, lines: np.ndarray, back: int | np.ndarray) -> np.ndarray:
        """The position of the ``back``-th quote before the last one of each of ``lines``."""
        return self.quotes[self.last[lines] - back]

    def ending_with(self, tail: bytes, quotes: int) -> np.ndarray:
        """The lines without escapes that end with ``tail`` and hold at least ``quotes`` quotes."""
        return np.flatnonzero(self.plain & (self.quoted >= quotes) & _ending_at(self.words, self.ends - 1, tail))

    def slices(self, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
        return [self.data[start:end] for start, end in zip(starts.tolist(), ends.tolist())]


def _error_lines(lines: _Lines) -> tuple[np.ndarray, list[bytes]]:
    """The canonical lines of failed inputs, and their sources."""
    error = lines.ending_with(_ERROR_END, 6)
    error = error[_ending_at(lines.words, lines.quote(error, 5), _SOURCE_MARK)]
    return error, lines.slices(lines.quote(error, 5) + 1, lines.ends[error] - len(_ERROR_END))


def _ok_lines(lines: _Lines) -> tuple[np.ndarray, list[list[bytes]]]:
    """The canonical lines of inputs in a shard, and their sources, keys, names, shards and dims texts. From the
    end: status, source, shard, seconds, then the name (a string: two quotes, or null), the key; the dims are
    between the line's first two "}"."""
    ok = lines.ending_with(_OK_END, 22)
    words, quote = lines.words, functools.partial(lines.quote, ok)
    null = _matches(words, quote(16), _NULL_NAME)
    shift = np.where(null, 0, 2)  # a name string is two more quotes
    key_open = quote(17 + shift)
    valid = ((null | (_matches(words, quote(18), _NAME_MARK) & _matches(words, quote(14), _NAME_END)))
             & _ending_at(words, quote(5), _SOURCE_MARK) & _ending_at(words, quote(9), _SHARD_MARK)
             & _ending_at(words, key_open, _KEY_MARK) & (len(lines.braces) >= 2))
    brace = np.minimum(np.searchsorted(lines.braces, lines.starts[ok]), max(len(lines.braces) - 2, 0))
    if len(lines.braces) >= 2:
        counts_end, dims_end = lines.braces[brace], lines.braces[brace + 1]
        valid &= _matches(words, counts_end, _DIMS) & _matches(words, dims_end, _DURATION) & (dims_end < key_open)
    ok, shift, brace = ok[valid], shift[valid], brace[valid]
    quote = functools.partial(lines.quote, ok)
    keys = lines.slices(quote(17 + shift) + 1, quote(16 + shift))
    names = lines.slices(quote(15) + 1, np.where(shift, quote(14), quote(15) + 1))  # null: empty
    return ok, [lines.slices(quote(5) + 1, lines.ends[ok] - len(_OK_END)), keys,
                [name or key for name, key in zip(names, keys)],  # Record.name: the original name, else the key
                lines.slices(quote(9) + 1, quote(8)),
                lines.slices(lines.braces[brace] + len(_DIMS), lines.braces[brace + 1])]


class _Block:
    """The records of a block of manifest lines, as columns: every record's line offset and source; the rows
    (records ``ok`` in a shard) also have their line offset, key, name (Record.name), shard and dims text."""

    def __init__(self) -> None:
        self.offsets: list[np.ndarray] = []
        self.sources: list[bytes] = []
        self.rows: list[np.ndarray] = []  # the record of each row
        self.keys: list[bytes] = []
        self.names: list[bytes] = []
        self.shards: list[bytes] = []
        self.dims: list[bytes] = []

    def add(self, offsets: np.ndarray, sources: list[bytes], rows: np.ndarray, *columns: list[bytes]) -> None:
        """Records at ``offsets`` with ``sources``; ``rows`` (indexes into them) have the other columns."""
        self.rows.append(rows + len(self.sources))
        self.offsets.append(offsets)
        self.sources += sources
        for column, values in zip((self.keys, self.names, self.shards, self.dims), columns):
            column += values


def _parse_block(data: bytes, base: int) -> _Block:
    """The records of ``data``, whole lines from byte ``base`` of the manifest."""
    lines = _Lines(data)
    block = _Block()
    error, sources = _error_lines(lines)
    block.add(base + lines.starts[error], sources, np.zeros(0, np.int64))
    ok, (sources, *columns) = _ok_lines(lines)
    block.add(base + lines.starts[ok], sources, np.arange(len(ok)), *columns)
    other = np.ones(len(lines.ends), bool)
    other[ok] = other[error] = False
    offsets = base + lines.starts[other]
    decoded = [(offset, fields) for offset, line in zip(offsets.tolist(), lines.slices(lines.starts[other], lines.ends[other]))
               if (fields := _decoded(line, offset))]  # blank lines give no fields
    rows = [n for n, (_, (ok, _, _, _, shard, _)) in enumerate(decoded) if ok and shard]
    keys, names, shards, dims = ([decoded[n][1][column] for n in rows] for column in range(2, 6))
    block.add(np.asarray([offset for offset, _ in decoded], np.int64), [fields[1] for _, fields in decoded],
              np.asarray(rows, np.int64), keys, names, shards, dims)
    return block


def _blocks(manifest: Path, start: int, stop: int) -> Iterator[_Block]:
    """The records of bytes ``start`` .. ``stop`` of ``manifest`` (both at line starts), a block at a time. A last
    line without its newline (cut off by a killed writer) is left out, as ``parse_manifest`` does."""
    with open(manifest, "rb") as handle:
        handle.seek(start)
        base, rest = start, b""
        while base + len(rest) < stop and (chunk := handle.read(min(_BLOCK, stop - base - len(rest)))):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            if data:
                yield _parse_block(data, base)
                base += len(data)


class _DimsTable:
    """The distinct ``dims`` of the records, numbered; entry 0 is {} (widths not recorded)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, int]] = [{}]
        self._numbers: dict[tuple, int] = {(): 0}
        self.known: dict[bytes, int] = {}  # dims text (inside the braces) -> number

    def number(self, text: bytes, offset: int) -> int:
        """The number of the dims ``text`` of the line at ``offset``."""
        try:
            dims = json.loads(b"{" + text + b"}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            dims = None
        if not isinstance(dims, dict) or not all(isinstance(w, int) and not isinstance(w, bool) for w in dims.values()):
            raise _BadLine(offset, f"dims {{{text.decode(*_ENCODING)}}} is not {{stream: width}}")
        entry = tuple(sorted(dims.items()))
        self.known[text] = self._numbers.setdefault(entry, len(self._numbers))
        if self.known[text] == len(self.entries):
            self.entries.append(dict(entry))
        return self.known[text]

    def numbers(self, texts: list[bytes], offsets: Sequence[int]) -> list[int]:
        """:meth:`number` of each of ``texts`` (of the lines at ``offsets``)."""
        found = list(map(self.known.get, texts))
        if None in found:
            for text, offset in zip(texts, offsets):
                if text not in self.known:
                    self.number(text, offset)
            found = list(map(self.known.get, texts))
        return found


# ---- the columns of an index being built ------------------------------------------------------------------------
def _last_component(name: bytes) -> bytes:
    return name.replace(b"\\", b"/").rpartition(b"/")[2]


def _crc32(strings: Iterable[bytes], count: int) -> np.ndarray:
    return np.fromiter(map(zlib.crc32, strings), np.uint32, count)


class _Column:
    """An array appended to a block at a time, in one allocation that doubles as it fills: untouched capacity costs
    no memory, and no small pieces are left to fragment the heap."""

    def __init__(self, dtype: type) -> None:
        self._data = np.empty(0, dtype)
        self.size = 0

    def append(self, values: Sequence) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            grown = np.empty(max(end, 2 * len(self._data), 1 << 16), self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size: end] = values
        self.size = end

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.size]


class _Rows:
    """Per-row columns, appended a block at a time; the strings go straight to two files (or buffers)."""

    # VIEW: CRC-32 of that string; offset: of the record's line; source: hash of the record's source
    COLUMNS = {"key_lengths": np.uint32, "name_lengths": np.uint32, "shard": np.int32, "dims": np.int32,
               "offset": np.int64, "source": np.int64, **{view: np.uint32 for view in VIEWS}}

    def __init__(self, keys: BinaryIO, names: BinaryIO) -> None:
        self.files = {"key": keys, "name": names}
        self.count = 0
        self._columns = {name: _Column(dtype) for name, dtype in self.COLUMNS.items()}

    def add(self, keys: list[bytes], names: list[bytes], shards: Sequence[int], dims: Sequence[int],
            offsets: Sequence[int], sources: Sequence[int]) -> None:
        joined_names = b"".join(names)
        self.files["key"].write(b"".join(keys))
        self.files["name"].write(joined_names)
        count = len(keys)
        columns = {"key_lengths": np.fromiter(map(len, keys), np.uint32, count),
                   "name_lengths": np.fromiter(map(len, names), np.uint32, count), "shard": shards, "dims": dims,
                   "offset": offsets, "source": sources, "name": _crc32(names, count), "key": _crc32(keys, count),
                   "key_stem": _crc32([key.rpartition(b"_")[0] or key for key in keys], count)}
        # Most names hold no path separator: their last component is the name itself.
        text = np.frombuffer(joined_names, np.uint8)
        split = np.searchsorted(np.cumsum(columns["name_lengths"], dtype=np.int64),
                                np.flatnonzero((text == ord("/")) | (text == ord("\\"))), "right")
        split = split[np.r_[True, split[1:] != split[:-1]]] if len(split) else split  # a name with two separators once
        columns["last"] = columns["name"].copy()
        columns["last"][split] = _crc32((_last_component(names[i]) for i in split.tolist()), len(split))
        self._append(columns)

    def _append(self, columns: dict[str, Sequence]) -> None:
        for name, column in self._columns.items():
            column.append(columns[name])
        self.count += len(columns["key_lengths"])

    def save(self, folder: Path) -> None:
        """Write the columns into ``folder`` (the strings went to the files given)."""
        for name in self.COLUMNS:
            np.save(folder / f"{name}.npy", self.column(name), allow_pickle=False)

    def append_saved(self, folder: Path, keys: Path, names: Path, dims: np.ndarray) -> None:
        """Append the rows :meth:`save` wrote into ``folder``, their strings in ``keys`` and ``names``, with their
        dims renumbered by ``dims`` (indexed by their numbers there)."""
        for path, name in ((keys, "key"), (names, "name")):
            with open(path, "rb") as handle:
                shutil.copyfileobj(handle, self.files[name], 16 << 20)
        columns = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in self.COLUMNS}
        columns["dims"] = dims[columns["dims"]]
        self._append(columns)

    def column(self, name: str) -> np.ndarray:
        return self._columns[name].values

    def pop(self, name: str) -> np.ndarray:
        """A column given up by the rows (its memory goes with the last reference); rows added later do without it."""
        return self._columns.pop(name).values


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _arrays(rows: _Rows, segments: list[np.ndarray], dims_entries: int) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, array) of an index whose shard s holds the rows ``segments[s]``, in order; one at a time, each
    column of ``rows`` given up once used, so a build holds few arrays at once."""
    lengths = np.fromiter(map(len, segments), np.int64, len(segments))
    positions = np.concatenate(segments).astype(np.uint32) if segments else np.zeros(0, np.uint32)
    del segments[:]
    yield "shard_starts", _offsets(lengths)
    yield "rows", positions
    yield "key_offsets", _offsets(rows.pop("key_lengths"))
    yield "name_offsets", _offsets(rows.pop("name_lengths"))
    dims = rows.pop("dims").astype(np.uint32)
    yield "dims", dims
    shard_of_position = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    yield "shard_dims", np.bincount(shard_of_position * dims_entries + dims[positions],
                                    minlength=len(lengths) * dims_entries).reshape(len(lengths), dims_entries)
    del shard_of_position, dims
    for view in VIEWS:
        hashes = rows.pop(view)[positions]
        order = np.argsort(hashes)  # equal hashes in any order: a lookup takes them all
        yield f"{view}_hashes", hashes[order]
        yield f"{view}_positions", order.astype(np.uint32)


# ---- scanning the manifest, in parallel where it is large ----------------------------------------------------------
def _scan_range(manifest: Path, start: int, stop: int, shard_of: dict[bytes, int], dims: _DimsTable,
                rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Read the records of bytes ``start`` .. ``stop``; those ``ok`` in a shard of ``shard_of`` become ``rows``.
    Returns (the hash of the source, the line's offset) of the other records. The hash is Python's: it only has
    to agree within this process and the processes it forks."""
    hashes, offsets = [], []
    for block in _blocks(manifest, start, stop):
        shards = list(map(shard_of.get, block.shards))
        if None in shards:  # a shard named with a folder, or one sizes.json does not list (not in the dataset)
            shards = [_shard_named(shard_of, text) if number is None else number for number, text in zip(shards, block.shards)]
        record_offsets = np.concatenate(block.offsets)
        sources = np.fromiter(map(hash, block.sources), np.int64, len(block.sources))
        row_records = np.concatenate(block.rows)
        if min(shards, default=0) < 0:
            keep = [number >= 0 for number in shards]
            row_records = row_records[keep]
            block.keys, block.names, shards, block.dims = ([value for value, kept in zip(column, keep) if kept]
                                                           for column in (block.keys, block.names, shards, block.dims))
        row_offsets = record_offsets[row_records]
        rows.add(block.keys, block.names, shards, dims.numbers(block.dims, row_offsets), row_offsets, sources[row_records])
        others = np.ones(len(sources), bool)
        others[row_records] = False
        hashes.append(sources[others])
        offsets.append(record_offsets[others])
    return tuple(np.concatenate(parts) if parts else np.zeros(0, np.int64) for parts in (hashes, offsets))


def _shard_named(shard_of: dict[bytes, int], text: bytes) -> int:
    """The shard a record's shard text names (its file name, as readers always took it); -1 for none."""
    shard_of[text] = shard_of.get(Path(text.decode(*_ENCODING)).name.encode(*_ENCODING), -1)
    return shard_of[text]


def _ranges(manifest: Path, readers: int | None) -> list[tuple[int, int]]:
    """Byte ranges of ``manifest``, cut at line starts, one per process that reads it: ``readers``, or one per core
    (at most :data:`_MAX_READERS`; a build runs while the node's other ranks wait) with :data:`_PART` bytes each."""
    size = manifest.stat().st_size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if multiprocessing.current_process().daemon:  # e.g. a DataLoader worker: it may not start processes
        cores = 1
    count = max(1, readers or min(cores, _MAX_READERS, size // _PART))
    cuts = [0]
    with open(manifest, "rb") as handle:
        for part in range(1, count):
            handle.seek(size * part // count)
            handle.readline()  # to the next line start
            cuts.append(max(cuts[-1], handle.tell()))
    return list(zip(cuts, [*cuts[1:], size]))


def _scan_part(manifest: Path, start: int, stop: int, shard_of: dict[bytes, int], folder: Path) -> None:
    """A reading process: :func:`_scan_range` into files in ``folder`` (a bad line: its offset and reason)."""
    try:
        with open(folder / "keys.bin", "wb") as keys, open(folder / "names.bin", "wb") as names:
            rows, dims = _Rows(keys, names), _DimsTable()
            hashes, offsets = _scan_range(manifest, start, stop, shard_of, dims, rows)
        rows.save(folder)
        np.save(folder / "hashes.npy", hashes, allow_pickle=False)
        np.save(folder / "offsets.npy", offsets, allow_pickle=False)
        (folder / "dims.json").write_text(json.dumps([[text.decode(*_ENCODING), number] for text, number in dims.known.items()]))
    except _BadLine as error:
        (folder / "bad_line.json").write_text(json.dumps({"offset": error.offset, "reason": error.reason}))


def _scan(manifest: Path, shard_of: dict[bytes, int], dims: _DimsTable, rows: _Rows, scratch: Path,
          readers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_scan_range` over the whole manifest, by forked processes (one per range of :func:`_ranges`, writing
    into ``scratch``) where there are several. A bad line is a :class:`DataFileError` naming ``file:line``."""
    ranges = _ranges(manifest, readers)
    try:
        if len(ranges) == 1:
            return _scan_range(manifest, 0, ranges[0][1], shard_of, dims, rows)
        return _scan_in_processes(manifest, ranges, shard_of, dims, rows, scratch)
    except _BadLine as error:
        with open(manifest, "rb") as handle:
            number = 1 + handle.read(error.offset).count(b"\n")
        raise DataFileError(f"{manifest}:{number}: {error.reason}; fix the line or re-run the extraction with "
                            "--overwrite") from None


def _scan_in_processes(manifest: Path, ranges: list[tuple[int, int]], shard_of: dict[bytes, int], dims: _DimsTable,
                       rows: _Rows, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    fork = multiprocessing.get_context("fork")  # the children inherit their arguments: nothing is pickled
    folders = [scratch / f"part-{number}" for number in range(len(ranges))]
    processes = []
    for folder, (start, stop) in zip(folders, ranges):
        folder.mkdir()
        processes.append(fork.Process(target=_scan_part, args=(manifest, start, stop, shard_of, folder), daemon=True))
        processes[-1].start()
    for process in processes:
        process.join()
    hashes, offsets = [], []
    for folder, process in zip(folders, processes):
        if (folder / "bad_line.json").exists():
            bad = json.loads((folder / "bad_line.json").read_text())
            raise _BadLine(bad["offset"], bad["reason"])
        if process.exitcode:
            raise RuntimeError(f"a process reading {manifest} failed (exit code {process.exitcode}); see its traceback above")
        numbers = json.loads((folder / "dims.json").read_text())
        renumbered = np.zeros(max((number for _, number in numbers), default=0) + 1, np.int32)
        for text, number in numbers:
            renumbered[number] = dims.number(text.encode(*_ENCODING), 0)  # checked by the process already
        rows.append_saved(folder, folder / "keys.bin", folder / "names.bin", renumbered)
        hashes.append(np.load(folder / "hashes.npy", allow_pickle=False))
        offsets.append(np.load(folder / "offsets.npy", allow_pickle=False))
        shutil.rmtree(folder)
    return np.concatenate(hashes), np.concatenate(offsets)


def _superseded(hashes: np.ndarray, offsets: np.ndarray, manifest: Path) -> np.ndarray:
    """The line offsets of the records that are not their input's latest (a later line has the same source), as
    ``latest_records`` drops them, from each record's source hash and line offset; usually none (a finished run
    leaves one line per input)."""
    ordered = np.sort(hashes)
    if not np.any(ordered[1:] == ordered[:-1]):
        return np.zeros(0, np.int64)
    order = np.lexsort((offsets, hashes))  # by hash, then line
    same = hashes[order][1:] == hashes[order][:-1]
    shared = np.zeros(len(hashes), bool)
    shared[:-1] |= same
    shared[1:] |= same
    candidates = offsets[order[shared]]
    # Equal hashes are one input retried, unless two sources collide: compare the sources themselves.
    last_of: dict[bytes, int] = {}
    with open(manifest, "rb") as handle:
        for offset in candidates.tolist():
            handle.seek(offset)
            last_of[_decoded(handle.readline(), offset)[1]] = offset
    return np.setdiff1d(candidates, np.fromiter(last_of.values(), np.int64, len(last_of)))


def _kept_rows(manifest: Path, shard_of: dict[bytes, int], dims: _DimsTable, rows: _Rows, scratch: Path,
               readers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``manifest`` into ``rows``; returns the rows that are their input's latest record, by shard, in
    manifest order inside a shard, and the shard of each. The rows give up the columns only this needs."""
    if not manifest.is_file():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    other_hashes, other_offsets = _scan(manifest, shard_of, dims, rows, scratch, readers)
    offsets, sources = rows.pop("offset"), rows.pop("source")
    superseded = _superseded(np.concatenate([sources, other_hashes]), np.concatenate([offsets, other_offsets]), manifest)
    del sources
    shards = rows.pop("shard")
    if len(superseded):
        kept = np.flatnonzero(~np.isin(offsets, superseded))
        offsets, shards = offsets[kept], shards[kept]
    else:
        kept = np.arange(len(offsets))
    if not np.all(offsets[1:] > offsets[:-1]):  # a block lists its decoded lines after its canonical ones
        order = np.lexsort((offsets, shards))
    elif np.all(shards[1:] >= shards[:-1]):  # as a finished run writes them
        return kept, shards
    else:
        order = np.argsort(shards, kind="stable")
    return kept[order], shards[order]


# ---- building from an output directory -------------------------------------------------------------------------
def read_tar_keys(url: str) -> list[str]:
    """Sample keys of one tar, in order, reading headers only (a local file is seeked, not read)."""
    keys: list[str] = []
    try:
        for key, _, _, _ in iter_members(url):
            if not keys or keys[-1] != key:
                keys.append(key)
    except (OSError, tarfile.TarError, EOFError) as error:
        # An unreadable shard is counted and skipped while streaming; here it contributes the keys
        # read before the damage so the epoch plan stays usable.
        log.warning("shard %s: cannot list all members (%s); using the %d keys read so far", url, error, len(keys))
    return keys


def read_sizes(out_dir: Path) -> dict[str, int]:
    """``sizes.json`` of an output directory: {shard file name: samples}."""
    path = out_dir / SIZES
    sizes = read_json(path)
    if not isinstance(sizes, dict) or not all(isinstance(n, int) and n >= 0 for n in sizes.values()):
        raise DataFileError(f"{path}: expected {{shard file name: number of samples}}")
    return sizes


def shard_urls(out_dir: Path, names: Sequence[str]) -> list[str]:
    """The files of the shards ``sizes.json`` lists; a missing one is a :class:`DataFileError`."""
    urls = [str(out_dir / SHARDS_DIR / Path(name).name) for name in names]
    for name, url in zip(names, urls):
        if not os.path.isfile(url):
            raise DataFileError(f"{out_dir / SIZES} lists {name} but {url} does not exist; re-run the extraction")
    return urls


def _sources(out_dir: Path) -> dict[str, object]:
    """What an index is built from: the manifest's size and mtime (appends and rewrites change them; it is too
    large to read on every open) and sizes.json's digest (None: absent)."""
    try:
        stat = (out_dir / MANIFEST).stat()
        manifest = [stat.st_size, stat.st_mtime_ns]
    except FileNotFoundError:
        manifest = None
    try:
        sizes = hashlib.sha256((out_dir / SIZES).read_bytes()).hexdigest()
    except FileNotFoundError:
        sizes = None
    return {MANIFEST: manifest, SIZES: sizes}


class _StringFiles:
    """keys.bin and names.bin, written as the build goes (temporary names until :meth:`commit`)."""

    def __init__(self, home: Path) -> None:
        self.paths = [home / "keys.bin", home / "names.bin"]
        self.files = [open(temp_path(path), "wb") for path in self.paths]

    def commit(self) -> None:
        for handle in self.files:
            handle.close()
        for path in self.paths:
            commit_temp(path)

    def close(self) -> None:
        for handle, path in zip(self.files, self.paths):
            handle.close()
            temp_path(path).unlink(missing_ok=True)


def _build(out_dir: Path, home: Path, sources: dict, readers: int | None) -> None:
    """Write the index of ``out_dir`` into ``home`` (the caller holds the exclusive lock)."""
    sizes = read_sizes(out_dir)
    shard_names = sorted(sizes)
    urls = shard_urls(out_dir, shard_names)
    shard_of: dict[bytes, int] = {}
    for number, name in enumerate(shard_names):
        shard_of.setdefault(Path(name).name.encode(*_ENCODING), number)
    (home / HEADER).unlink(missing_ok=True)  # arrays and header change together: a crash leaves no header
    strings = _StringFiles(home)
    try:
        rows, dims = _Rows(*strings.files), _DimsTable()
        with tempfile.TemporaryDirectory(dir=home, prefix=".build-") as scratch:
            by_shard, shards = _kept_rows(out_dir / MANIFEST, shard_of, dims, rows, Path(scratch), readers)
        bounds = _offsets(np.bincount(shards, minlength=len(shard_names)))
        del shards
        segments = []
        for number, (name, url) in enumerate(zip(shard_names, urls)):
            if bounds[number + 1] - bounds[number] == sizes[name]:
                segments.append(by_shard[bounds[number]: bounds[number + 1]])
            else:  # the manifest is missing or disagrees with sizes.json: the tar itself is the truth
                keys = [key.encode(*_ENCODING) for key in read_tar_keys(url)]
                first = rows.count
                rows.add(keys, keys, [number] * len(keys), [0] * len(keys), [-1] * len(keys), [0] * len(keys))
                segments.append(np.arange(first, rows.count))
        strings.commit()
        for name, array in _arrays(rows, segments, len(dims.entries)):
            with atomic_open(home / f"{name}.npy", "wb") as handle:
                np.save(handle, array, allow_pickle=False)
    finally:
        strings.close()
    write_json_atomic(home / HEADER, {"format": FORMAT, "sources": sources, "shards": shard_names,
                                      "dims": dims.entries})


# ---- where it lives, and who builds it -------------------------------------------------------------------------
def _cache_home(out_dir: Path) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lamflow" / SAMPLE_INDEX / hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:20]


def _writable(home: Path) -> bool:
    try:
        home.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(home, os.W_OK)


@contextlib.contextmanager
def _locked(home: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``home``'s lock: shared to read an index, exclusive to build one. Reading a folder where no lock can
    be opened (someone else's read-only index) goes without: nobody can rebuild it from here either."""
    try:
        fd = os.open(home / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the flock


def _header(home: Path, sources: dict) -> dict | None:
    """The header of the index in ``home`` if it was built from ``sources`` by this format, else None."""
    try:
        header = read_json(home / HEADER)
    except DataFileError:
        return None
    return header if isinstance(header, dict) and header.get("format") == FORMAT and header.get("sources") == sources else None


def build_index(out_dir: str | Path, readers: int | None = None) -> Path:
    """Make the sample index of ``out_dir`` current: build it unless the one there was built from the present
    ``manifest.jsonl`` and ``sizes.json``. Returns its folder. The extractor calls this at the end of a run, so
    training opens a ready index; readers call it through :func:`open_index` when it is missing or stale.
    ``readers``: processes that read the manifest (default: one per core, up to 8, for each 64 MiB of it)."""
    out_dir = Path(out_dir)
    home = out_dir / SAMPLE_INDEX
    if not _writable(home):
        home = _cache_home(out_dir)
        home.mkdir(parents=True, exist_ok=True)
    sources = _sources(out_dir)
    with _locked(home, exclusive=True):
        if _header(home, sources) is None:
            _build(out_dir, home, sources, readers)
    return home


def _current(home: Path, out_dir: Path) -> "SampleIndex | None":
    """The index in ``home``, mapped, if it was built from ``out_dir`` as it is now."""
    if not (home / HEADER).exists():
        return None
    with _locked(home, exclusive=False):
        header = _header(home, _sources(out_dir))
        return SampleIndex.load(home, header) if header is not None else None


def open_index(out_dir: str | Path) -> "SampleIndex":
    """The sample index of ``out_dir``, memory-mapped; built first (once, whoever gets the lock first) when it is
    missing or stale."""
    out_dir = Path(out_dir)
    for home in dict.fromkeys((out_dir / SAMPLE_INDEX, _cache_home(out_dir))):
        if (index := _current(home, out_dir)) is not None:
            return index
    index = _current(build_index(out_dir), out_dir)
    if index is None:
        raise DataFileError(f"{out_dir}: its {MANIFEST} or {SIZES} changed while its sample index was built; "
                            "is an extraction still writing there?")
    return index


# ---- reading -----------------------------------------------------------------------------------------------------
def _take(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``array[indices]`` (1-D); from a memory-mapped file by positioned reads, one per run of neighbouring entries:
    touching scattered entries through the mapping would map most of a large file into this process (the kernel
    maps the pages around each one it faults in), and every rank would count the whole index as its own memory."""
    indices = np.asarray(indices, np.int64)
    if not isinstance(array, np.memmap) or not len(indices):
        return np.asarray(array[indices])
    order = np.argsort(indices, kind="stable")
    wanted = indices[order]
    cuts = np.flatnonzero(np.diff(wanted) > 1) + 1
    found = np.empty(len(indices), array.dtype)
    size = array.dtype.itemsize
    with open(array.filename, "rb") as handle:
        for start, end in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(wanted)].tolist()):
            first, last = int(wanted[start]), int(wanted[end - 1])
            run = np.frombuffer(os.pread(handle.fileno(), (last - first + 1) * size, array.offset + first * size), array.dtype)
            found[order[start:end]] = run[wanted[start:end] - first]
    return found


def _texts(blob: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The strings ``blob[s:e]``, read as :func:`_take` reads (one positioned read per run of adjacent strings)."""
    if not isinstance(blob, np.memmap) or not len(starts):
        return [blob[start:end].tobytes().decode(*_ENCODING) for start, end in zip(starts.tolist(), ends.tolist())]
    order = np.argsort(starts, kind="stable")
    cuts = np.flatnonzero(starts[order][1:] != ends[order][:-1]) + 1
    found: list[str] = [""] * len(starts)
    with open(blob.filename, "rb") as handle:
        for first, last in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist()):
            run = order[first:last]
            base = int(starts[run[0]])
            data = os.pread(handle.fileno(), int(ends[run[-1]]) - base, base)
            for i, start, end in zip(run.tolist(), (starts[run] - base).tolist(), (ends[run] - base).tolist()):
                found[i] = data[start:end].decode(*_ENCODING)
    return found


def annotated_lookups(annotated: Iterable[str]) -> set[str]:
    """The strings one of a sample's :data:`VIEWS` must equal for :func:`lamflow.contract.join_names` to let one of
    ``annotated`` name it: the name itself (rules 1-3), its safe key (rules 2 and 5: the key less its extension)
    and the name less its extension (rule 4 compares that with the last component)."""
    found = set()
    for name in annotated:
        stem, dot, _ = name.rpartition(".")
        found.update((name, safe_key(name), *((stem,) if dot else ())))
    return found


class SampleIndex:
    """The samples of one output directory (or of a list of tar urls) as arrays; see the module docstring."""

    def __init__(self, shard_names: Sequence[str], dims: Sequence[dict[str, int]], arrays: dict[str, np.ndarray],
                 keys: np.ndarray, names: np.ndarray) -> None:
        self.shard_names = list(shard_names)
        self.dims = [dict(entry) for entry in dims]
        self.arrays, self._keys, self._names = arrays, keys, names
        self.shard_starts = arrays["shard_starts"]
        self.shard_dims = arrays["shard_dims"]

    @classmethod
    def load(cls, home: Path, header: dict) -> "SampleIndex":
        names = ["shard_starts", "rows", "key_offsets", "name_offsets", "dims", "shard_dims",
                 *(f"{view}_{column}" for view in VIEWS for column in ("hashes", "positions"))]
        try:
            arrays = {name: np.load(home / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}
            blobs = [np.memmap(home / blob, np.uint8, "r") if (home / blob).stat().st_size else np.zeros(0, np.uint8)
                     for blob in ("keys.bin", "names.bin")]
        except (OSError, ValueError) as error:
            raise DataFileError(f"{home}: the sample index is damaged ({error}); delete the folder to rebuild it") from None
        return cls(header["shards"], header["dims"], arrays, *blobs)

    @classmethod
    def of_shards(cls, shard_names: Sequence[str], keys: Sequence[Sequence[str]]) -> "SampleIndex":
        """An index held in memory of shards known by their keys alone (tar urls): names are the keys, widths
        not recorded."""
        buffers = [io.BytesIO(), io.BytesIO()]
        rows = _Rows(*buffers)
        segments = []
        for number, shard_keys in enumerate(keys):
            encoded = [key.encode(*_ENCODING) for key in shard_keys]
            first = rows.count
            rows.add(encoded, encoded, [number] * len(encoded), [0] * len(encoded), [-1] * len(encoded), [0] * len(encoded))
            segments.append(np.arange(first, rows.count))
        arrays = dict(_arrays(rows, segments, 1))
        return cls(shard_names, [{}], arrays, *(np.frombuffer(buffer.getvalue(), np.uint8) for buffer in buffers))

    @property
    def num_samples(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def shard_sizes(self) -> np.ndarray:
        return np.diff(self.shard_starts)

    def shard_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.shard_starts, positions, side="right") - 1

    def shard_positions(self, shard: int) -> np.ndarray:
        return np.arange(self.shard_starts[shard], self.shard_starts[shard + 1])

    def _strings(self, blob: np.ndarray, offsets: np.ndarray, positions: np.ndarray) -> list[str]:
        rows = _take(self.arrays["rows"], positions).astype(np.int64)
        return _texts(blob, _take(offsets, rows), _take(offsets, rows + 1))

    def keys_at(self, positions: np.ndarray) -> list[str]:
        return self._strings(self._keys, self.arrays["key_offsets"], positions)

    def names_at(self, positions: np.ndarray) -> list[str]:
        return self._strings(self._names, self.arrays["name_offsets"], positions)

    def find(self, strings: Iterable[str]) -> np.ndarray:
        """Positions (sorted) of the samples one of whose :data:`VIEWS` is one of ``strings``, plus the rare sample
        whose string only shares a CRC-32 with one of them."""
        wanted = np.unique(_crc32((s.encode(*_ENCODING) for s in strings), -1))
        found = []
        for view in VIEWS:
            table = self.arrays[f"{view}_hashes"]
            low, high = np.searchsorted(table, wanted, "left"), np.searchsorted(table, wanted, "right")
            counts = high - low
            steps = np.repeat(low - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
            found.append(_take(self.arrays[f"{view}_positions"], steps))
        return np.unique(np.concatenate(found).astype(np.int64))

    def positions_with_dims(self, entries: Sequence[int], shards: np.ndarray) -> np.ndarray:
        """Positions, in order, of the samples of ``shards`` (a bool per shard) whose dims entry is in ``entries``."""
        found = []
        for shard in np.flatnonzero(shards):
            positions = self.shard_positions(int(shard))
            found.append(positions[np.isin(_take(self.arrays["dims"], _take(self.arrays["rows"], positions)), entries)])
        return np.concatenate(found) if found else np.zeros(0, np.int64)

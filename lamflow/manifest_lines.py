"""The manifest's lines read a block at a time, fast: 10^7 records in seconds, without a Python object per line.

A line as OutputDir writes it (json.dumps(record, sort_keys=True)) with no backslash in it holds its last fields
in a fixed order, nothing escaped: counting quotes back from its end finds them, and the field names around
them, checked on every line, prove the count right. numpy does this for a block of lines at once and Python
only slices the strings out; any other line (escapes, other fields, a blank line) is decoded by json
(:func:`decode_line`). The sample index build reads the manifest this way (:mod:`lamflow.manifest_scan`).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from lamflow.contract import Record

_BLOCK = 16 << 20  # manifest bytes parsed at a time
ENCODING = ("utf-8", "surrogatepass")  # JSON may carry lone surrogates; they round-trip


class BadLine(Exception):
    """A manifest line that is not a record, at a byte offset (:mod:`lamflow.manifest_scan` names its ``file:line``)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset, self.reason = offset, reason


# The literals around a canonical line's fields, each with where it starts or ends:
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


def decode_line(line: bytes, offset: int) -> tuple | None:
    """(ok, source, key, name, shard, dims text) of a line through ``json`` and :class:`Record` (the dims as a
    canonical line holds them); None for a blank line."""
    if not line.strip():
        return None
    try:
        record = Record.from_json(json.loads(line))
        source, key, name = (value.encode(*ENCODING) for value in (record.source, record.key, record.name))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
        raise BadLine(offset, f"not a valid manifest record ({error})") from None
    shard = record.shard.encode(*ENCODING) if isinstance(record.shard, str) and record.shard else None
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


class Block:
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


def _parse_block(data: bytes, base: int) -> Block:
    """The records of ``data``, whole lines from byte ``base`` of the manifest."""
    lines = _Lines(data)
    block = Block()
    error, sources = _error_lines(lines)
    block.add(base + lines.starts[error], sources, np.zeros(0, np.int64))
    ok, (sources, *columns) = _ok_lines(lines)
    block.add(base + lines.starts[ok], sources, np.arange(len(ok)), *columns)
    other = np.ones(len(lines.ends), bool)
    other[ok] = other[error] = False
    offsets = base + lines.starts[other]
    decoded = [(offset, fields) for offset, line in zip(offsets.tolist(), lines.slices(lines.starts[other], lines.ends[other]))
               if (fields := decode_line(line, offset))]  # blank lines give no fields
    rows = [n for n, (_, (ok, _, _, _, shard, _)) in enumerate(decoded) if ok and shard]
    keys, names, shards, dims = ([decoded[n][1][column] for n in rows] for column in range(2, 6))
    block.add(np.asarray([offset for offset, _ in decoded], np.int64), [fields[1] for _, fields in decoded],
              np.asarray(rows, np.int64), keys, names, shards, dims)
    return block


def manifest_blocks(manifest: Path, start: int, stop: int) -> Iterator[Block]:
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


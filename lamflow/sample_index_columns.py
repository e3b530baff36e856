"""The columns of a sample index being built, a block of manifest rows at a time, and the arrays they end as
(the files :mod:`lamflow.sample_index` lists)."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np

from lamflow.manifest_lines import ENCODING, BadLine

# The strings of a sample that join_names compares annotated names with: its name, key, the name's last path
# component, the key less its last "_" suffix (a media extension, for rule 5).
VIEWS = ("name", "key", "last", "key_stem")


class DimsTable:
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
            raise BadLine(offset, f"dims {{{text.decode(*ENCODING)}}} is not {{stream: width}}")
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



def _last_component(name: bytes) -> bytes:
    return name.replace(b"\\", b"/").rpartition(b"/")[2]


def crc32(strings: Iterable[bytes], count: int) -> np.ndarray:
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


class Rows:
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
                   "offset": offsets, "source": sources, "name": crc32(names, count), "key": crc32(keys, count),
                   "key_stem": crc32([key.rpartition(b"_")[0] or key for key in keys], count)}
        # Most names hold no path separator: their last component is the name itself.
        text = np.frombuffer(joined_names, np.uint8)
        split = np.searchsorted(np.cumsum(columns["name_lengths"], dtype=np.int64),
                                np.flatnonzero((text == ord("/")) | (text == ord("\\"))), "right")
        split = split[np.r_[True, split[1:] != split[:-1]]] if len(split) else split  # a name with two separators once
        columns["last"] = columns["name"].copy()
        columns["last"][split] = crc32((_last_component(names[i]) for i in split.tolist()), len(split))
        self._append(columns)

    def add_keys_only(self, keys: list[bytes], shard: int) -> np.ndarray:
        """Add the samples of a shard known by its keys alone (a tar's headers): names are the keys, widths not
        recorded. Returns their rows."""
        first, count = self.count, len(keys)
        self.add(keys, keys, [shard] * count, [0] * count, [-1] * count, [0] * count)
        return np.arange(first, self.count)

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


def cumulative_offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive pieces of ``lengths`` starts, and where the last one ends ([0, l0, l0 + l1, ...])."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def index_arrays(rows: Rows, segments: list[np.ndarray], dims_entries: int) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, array) of an index whose shard s holds the rows ``segments[s]``, in order; one at a time, each
    column of ``rows`` given up once used, so a build holds few arrays at once."""
    lengths = np.fromiter(map(len, segments), np.int64, len(segments))
    positions = np.concatenate(segments).astype(np.uint32) if segments else np.zeros(0, np.uint32)
    del segments[:]
    yield "shard_starts", cumulative_offsets(lengths)
    yield "rows", positions
    yield "key_offsets", cumulative_offsets(rows.pop("key_lengths"))
    yield "name_offsets", cumulative_offsets(rows.pop("name_lengths"))
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


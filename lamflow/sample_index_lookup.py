"""A sample index as readers use it: the memory-mapped arrays of :mod:`lamflow.sample_index` and the lookups
on them (keys and names at positions, samples by the names annotations give, samples by feature widths)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lamflow.contract import safe_key
from lamflow.errors import DataFileError
from lamflow.manifest_lines import ENCODING
from lamflow.sample_index_columns import VIEWS, Rows, crc32, index_arrays


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
        return [blob[start:end].tobytes().decode(*ENCODING) for start, end in zip(starts.tolist(), ends.tolist())]
    order = np.argsort(starts, kind="stable")
    cuts = np.flatnonzero(starts[order][1:] != ends[order][:-1]) + 1
    found: list[str] = [""] * len(starts)
    with open(blob.filename, "rb") as handle:
        for first, last in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist()):
            run = order[first:last]
            base = int(starts[run[0]])
            data = os.pread(handle.fileno(), int(ends[run[-1]]) - base, base)
            for i, start, end in zip(run.tolist(), (starts[run] - base).tolist(), (ends[run] - base).tolist()):
                found[i] = data[start:end].decode(*ENCODING)
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
    """The samples of one output directory (or of a list of tar urls) as arrays; :mod:`lamflow.sample_index` lists them."""

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
        rows = Rows(*buffers)
        segments = [rows.add_keys_only([key.encode(*ENCODING) for key in shard_keys], number)
                    for number, shard_keys in enumerate(keys)]
        arrays = dict(index_arrays(rows, segments, 1))
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
        wanted = np.unique(crc32((s.encode(*ENCODING) for s in strings), -1))
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

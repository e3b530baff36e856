"""The whole manifest read into the rows of a sample index: by forked processes, a byte range each, where it is
large; then the records that are not their input's latest dropped, as ``latest_records`` drops them."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np

from lamflow.errors import DataFileError
from lamflow.manifest_lines import ENCODING, BadLine, decode_line, manifest_blocks
from lamflow.sample_index_columns import DimsTable, Rows

_PART = 64 << 20  # manifest bytes worth a process of their own
_MAX_READERS = 8


def _scan_range(manifest: Path, start: int, stop: int, shard_of: dict[bytes, int], dims: DimsTable,
                rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Read the records of bytes ``start`` .. ``stop``; those ``ok`` in a shard of ``shard_of`` become ``rows``.
    Returns (the hash of the source, the line's offset) of the other records. The hash is Python's: it only has
    to agree within this process and the processes it forks."""
    hashes, offsets = [], []
    for block in manifest_blocks(manifest, start, stop):
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
    shard_of[text] = shard_of.get(Path(text.decode(*ENCODING)).name.encode(*ENCODING), -1)
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
            rows, dims = Rows(keys, names), DimsTable()
            hashes, offsets = _scan_range(manifest, start, stop, shard_of, dims, rows)
        rows.save(folder)
        np.save(folder / "hashes.npy", hashes, allow_pickle=False)
        np.save(folder / "offsets.npy", offsets, allow_pickle=False)
        (folder / "dims.json").write_text(json.dumps([[text.decode(*ENCODING), number] for text, number in dims.known.items()]))
    except BadLine as error:
        (folder / "bad_line.json").write_text(json.dumps({"offset": error.offset, "reason": error.reason}))


def _scan(manifest: Path, shard_of: dict[bytes, int], dims: DimsTable, rows: Rows, scratch: Path,
          readers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_scan_range` over the whole manifest, by forked processes (one per range of :func:`_ranges`, writing
    into ``scratch``) where there are several. A bad line is a :class:`DataFileError` naming ``file:line``."""
    ranges = _ranges(manifest, readers)
    try:
        if len(ranges) == 1:
            return _scan_range(manifest, 0, ranges[0][1], shard_of, dims, rows)
        return _scan_in_processes(manifest, ranges, shard_of, dims, rows, scratch)
    except BadLine as error:
        with open(manifest, "rb") as handle:
            number = 1 + handle.read(error.offset).count(b"\n")
        raise DataFileError(f"{manifest}:{number}: {error.reason}; fix the line or re-run the extraction with "
                            "--overwrite") from None


def _scan_in_processes(manifest: Path, ranges: list[tuple[int, int]], shard_of: dict[bytes, int], dims: DimsTable,
                       rows: Rows, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
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
            raise BadLine(bad["offset"], bad["reason"])
        if process.exitcode:
            raise RuntimeError(f"a process reading {manifest} failed (exit code {process.exitcode}); see its traceback above")
        numbers = json.loads((folder / "dims.json").read_text())
        renumbered = np.zeros(max((number for _, number in numbers), default=0) + 1, np.int32)
        for text, number in numbers:
            renumbered[number] = dims.number(text.encode(*ENCODING), 0)  # checked by the process already
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
            last_of[decode_line(handle.readline(), offset)[1]] = offset
    return np.setdiff1d(candidates, np.fromiter(last_of.values(), np.int64, len(last_of)))


def kept_rows(manifest: Path, shard_of: dict[bytes, int], dims: DimsTable, rows: Rows, scratch: Path,
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


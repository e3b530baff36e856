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
(:func:`lamflow.sample_index_lookup.annotated_lookups` lists the strings its rules compare, so nothing it could
match is missed; a CRC collision only adds a sample it then rejects).

This module builds an index and finds or opens it; the parts: :mod:`lamflow.manifest_lines` (the manifest parsed
a block at a time), :mod:`lamflow.manifest_scan` (the whole manifest, in parallel, latest records only),
:mod:`lamflow.sample_index_columns` (the columns being built, and the arrays above),
:mod:`lamflow.sample_index_lookup` (:class:`~lamflow.sample_index_lookup.SampleIndex`: the mapped arrays and
their lookups).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lamflow.contract import MANIFEST, SAMPLE_INDEX, SHARDS_DIR, SIZES, iter_members
from lamflow.errors import DataFileError
from lamflow.fileio import atomic_open, commit_temp, read_json, temp_path, write_json_atomic
from lamflow.manifest_lines import ENCODING
from lamflow.manifest_scan import kept_rows
from lamflow.sample_index_columns import DimsTable, Rows, cumulative_offsets, index_arrays
from lamflow.sample_index_lookup import SampleIndex

log = logging.getLogger(__name__)

FORMAT = "lamflow-sample-index/1"
HEADER = "index.json"
_LOCK = ".lock"


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
        shard_of.setdefault(Path(name).name.encode(*ENCODING), number)
    (home / HEADER).unlink(missing_ok=True)  # arrays and header change together: a crash leaves no header
    strings = _StringFiles(home)
    try:
        rows, dims = Rows(*strings.files), DimsTable()
        with tempfile.TemporaryDirectory(dir=home, prefix=".build-") as scratch:
            by_shard, shards = kept_rows(out_dir / MANIFEST, shard_of, dims, rows, Path(scratch), readers)
        bounds = cumulative_offsets(np.bincount(shards, minlength=len(shard_names)))
        del shards
        segments = []
        for number, (name, url) in enumerate(zip(shard_names, urls)):
            if bounds[number + 1] - bounds[number] == sizes[name]:
                segments.append(by_shard[bounds[number]: bounds[number + 1]])
            else:  # the manifest is missing or disagrees with sizes.json: the tar itself is the truth
                segments.append(rows.add_keys_only([key.encode(*ENCODING) for key in read_tar_keys(url)], number))
        strings.commit()
        for name, array in index_arrays(rows, segments, len(dims.entries)):
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


def _current(home: Path, out_dir: Path) -> SampleIndex | None:
    """The index in ``home``, mapped, if it was built from ``out_dir`` as it is now."""
    if not (home / HEADER).exists():
        return None
    with _locked(home, exclusive=False):
        header = _header(home, _sources(out_dir))
        return SampleIndex.load(home, header) if header is not None else None


def open_index(out_dir: str | Path) -> SampleIndex:
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


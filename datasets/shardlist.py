"""Resolve a shard specification into shard urls, their sample keys, names and feature widths.

A specification is one of:
- an extraction output DIR (holds ``sizes.json`` and ``shards/``): counts come from ``sizes.json``; keys,
  original names and feature widths from ``manifest.jsonl`` (records with status ``ok``), the index the
  pipeline writes;
- a brace pattern (``/data/shard-{000000..000009}.tar``), a single ``.tar`` path, or a list of them: keys
  are read from the tar headers (member names only, no payload is decoded); names are the keys.

The loader needs the keys of every shard before it streams anything: epoch sizes, the split of shards over
ranks and workers, the equal number of batches on every rank and the annotation join are all computed from
the index.
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import braceexpand

from lamflow.contract import (
    MANIFEST,
    SHARDS_DIR,
    SIZES,
    array_width,
    is_token_field,
    iter_members,
    latest_records,
    npy_header,
    parse_manifest,
)
from lamflow.errors import DataFileError
from lamflow.fileio import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    url: str
    keys: tuple[str, ...]  # sample keys in tar order
    # Names annotations join on, one per key: the manifest's original_name, else the key itself.
    names: tuple[str, ...] = ()
    # Feature width per stream, one mapping per key, from the manifest; () when the index does not say.
    dims: tuple[Mapping[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", self.keys)

    @property
    def num_samples(self) -> int:
        return len(self.keys)


def read_tar_keys(url: str) -> tuple[str, ...]:
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
    return tuple(keys)


def shards_from_dir(directory: Path) -> list[ShardInfo]:
    sizes_path = directory / SIZES
    if not sizes_path.is_file():
        raise DataFileError(
            f"{directory}: no {SIZES}; pass an extraction output DIR ({SHARDS_DIR}/ + {SIZES}), "
            f"a brace pattern like 'DIR/{SHARDS_DIR}/shard-{{000000..000009}}.tar' or a list of .tar paths"
        )
    sizes = read_json(sizes_path)
    if not isinstance(sizes, dict) or not all(isinstance(n, int) and n >= 0 for n in sizes.values()):
        raise DataFileError(f"{sizes_path}: expected {{shard file name: number of samples}}")
    manifest = directory / MANIFEST
    records = latest_records(parse_manifest(manifest)[0]).values() if manifest.is_file() else []
    by_shard: dict[str, list] = {}
    for record in records:
        if record.status == "ok" and record.shard:
            by_shard.setdefault(Path(record.shard).name, []).append(record)
    shards = []
    for name in sorted(sizes):
        url = str(directory / SHARDS_DIR / Path(name).name)
        if not os.path.isfile(url):
            raise DataFileError(f"{sizes_path} lists {name} but {url} does not exist; re-run the extraction")
        recorded = by_shard.get(Path(name).name, [])
        if len(recorded) == sizes[name]:
            shards.append(ShardInfo(url=url, keys=tuple(r.key for r in recorded), names=tuple(r.name for r in recorded),
                                    dims=tuple(r.dims for r in recorded) if all(r.dims for r in recorded) else ()))
        else:  # the manifest is missing or disagrees with sizes.json: the tar itself is the truth
            shards.append(ShardInfo(url=url, keys=read_tar_keys(url)))
    return shards


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else list(spec)
    return [url for pattern in patterns for url in braceexpand.braceexpand(str(pattern))]


def resolve_shards(spec: str | Path | Sequence[str]) -> list[ShardInfo]:
    """Shards of an extraction DIR, a brace pattern, a .tar path or a list of them (see module doc)."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        shards = shards_from_dir(Path(spec))
    else:
        urls = expand_urls(str(spec) if isinstance(spec, (str, Path)) else spec)
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
        if missing:
            raise DataFileError(
                f"shards: {len(missing)} shard file(s) not found, e.g. {missing[0]}; check the path or pattern"
            )
        shards = [ShardInfo(url=url, keys=read_tar_keys(url)) for url in urls]
    if not shards:
        raise DataFileError(f"shards: {spec!r} names no shard; expected a DIR with {SIZES} or .tar urls")
    return shards


def first_sample_dims(url: str) -> dict[str, int | None]:
    """{stream: feature width (None when the array is (0, 0))} of the first sample of a shard, from its
    ``.npy`` headers (for indexes that do not record widths: tar patterns, older manifests)."""
    dims: dict[str, int | None] = {}
    first = None
    try:
        for key, name, tar, member in iter_members(url):
            if first is not None and key != first:
                break
            first = key
            if is_token_field(name):
                shape, _ = npy_header(tar.extractfile(member).read(4096))
                dims[name[: -len(".npy")]] = array_width(shape)
    except (OSError, tarfile.TarError, EOFError, ValueError) as error:
        log.warning("shard %s: cannot read the first sample's array headers (%s)", url, error)
    return dims


def recorded_dims(shards: Sequence[ShardInfo], streams: Sequence[str]) -> dict[str, int]:
    """The feature width of each of ``streams`` that the shard index records (streams it does not record
    are left out). A stream recorded with two widths is a :class:`DataFileError` naming the keys that
    differ from the majority: such a set mixes features of two models and would fail mid-training."""
    widths: dict[str, Counter] = {}
    keys_by_width: dict[tuple[str, int], list[str]] = {}
    for shard in shards:
        for key, dims in zip(shard.keys, shard.dims):
            for stream in streams:
                if stream in dims:
                    widths.setdefault(stream, Counter())[dims[stream]] += 1
                    keys_by_width.setdefault((stream, dims[stream]), []).append(key)
    result = {}
    for stream, counts in widths.items():
        (width, _), *others = counts.most_common()
        if others:
            odd = [key for other, _ in others for key in keys_by_width[(stream, other)]]
            raise DataFileError(
                f"stream {stream!r} has width {width} in {counts[width]} samples but {', '.join(str(w) for w, _ in others)} "
                f"in {len(odd)} (keys {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}): the shard set mixes features "
                "of different models; re-extract those samples or leave them out"
            )
        result[stream] = width
    return result

"""Resolve a shard specification into its shards and the index of their samples (keys, names, feature widths).

A specification is one of:
- an extraction output DIR, or a partitioned tree of them (``DIR/partitions/part-K-of-N/``, see
  :func:`lamflow.contract.output_dirs`), read as one dataset: each output directory's sample index
  (:mod:`lamflow.sample_index`, built from ``manifest.jsonl`` + ``sizes.json`` on first open, then memory-mapped)
  gives its shards, their keys, original names and feature widths;
- a brace pattern (``/data/shard-{000000..000009}.tar``), a single ``.tar`` path, or a list of them: keys are read
  from the tar headers (member names only, no payload is decoded); names are the keys.

The loader needs the keys of every shard before it streams anything: epoch sizes, the split of shards over ranks
and workers, the equal number of batches on every rank and the annotation join are all computed from the index.
It is held as arrays: a Python object per sample would cost a rank ~2 GiB per 10^6 samples.
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, overload

import braceexpand
import numpy as np

from lamflow.contract import SHARDS_DIR, SIZES, array_width, is_token_field, iter_members, join_names, npy_header, output_dirs
from lamflow.errors import DataFileError
from lamflow.sample_index import open_index, read_tar_keys, shard_urls
from lamflow.sample_index_lookup import SampleIndex, annotated_lookups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_samples: int


class ShardSet(Sequence[ShardInfo]):
    """The shards of a specification, in order, and the index of their samples: one :class:`SampleIndex` per
    output directory (``parts``: the urls of its shards and its index)."""

    def __init__(self, parts: Sequence[tuple[Sequence[str], SampleIndex]]) -> None:
        self._parts = [index for _, index in parts]
        self._shards = [ShardInfo(url, size) for urls, index in parts
                        for url, size in zip(urls, index.shard_sizes.tolist())]
        self._first = np.cumsum([0] + [len(index.shard_names) for index in self._parts])  # each part's first shard

    def __len__(self) -> int:
        return len(self._shards)

    @overload
    def __getitem__(self, shard: int) -> ShardInfo: ...

    @overload
    def __getitem__(self, shard: slice) -> list[ShardInfo]: ...

    def __getitem__(self, shard):
        return self._shards[shard]

    @property
    def num_samples(self) -> int:
        return sum(index.num_samples for index in self._parts)

    def _part(self, shard: int) -> tuple[SampleIndex, int]:
        """The index holding ``shard``, and the shard's number in it."""
        part = int(np.searchsorted(self._first, shard, "right")) - 1
        return self._parts[part], shard - int(self._first[part])

    def keys(self, shard: int) -> list[str]:
        """The sample keys of ``shard``, in tar order (read from the index when asked)."""
        index, local = self._part(shard)
        return index.keys_at(index.shard_positions(local))

    def names(self, shard: int) -> list[str]:
        """The names annotations join on, one per key: the recorded original name, else the key."""
        index, local = self._part(shard)
        return index.names_at(index.shard_positions(local))

    def samples(self) -> Iterator[tuple[str, str]]:
        """(key, name) of every sample, shard after shard."""
        for shard in range(len(self)):
            yield from zip(self.keys(shard), self.names(shard))

    def first_keys(self, count: int) -> list[str]:
        """The first ``count`` keys of the set (for messages)."""
        found: list[str] = []
        for shard in range(len(self)):
            if len(found) >= count:
                break
            found += self.keys(shard)[: count - len(found)]
        return found

    def join(self, annotated: Iterable[str], what: str) -> list[tuple[int, str, str]]:
        """(shard, key, annotated name) of every sample one of ``annotated`` names, by the rules (and with the
        errors) of :func:`lamflow.contract.join_names`, which is given only the samples the index finds under
        the strings those rules compare (:func:`lamflow.sample_index_lookup.annotated_lookups`)."""
        annotated = list(dict.fromkeys(annotated))
        lookups = annotated_lookups(annotated)
        samples: list[tuple[str, str]] = []
        shard_of: dict[str, int] = {}
        for index, first in zip(self._parts, self._first.tolist()):
            positions = index.find(lookups)
            for key, name, shard in zip(index.keys_at(positions), index.names_at(positions),
                                        (index.shard_of(positions) + first).tolist()):
                samples.append((key, name))
                shard_of[key] = shard
        return [(shard_of[key], key, name) for key, name in join_names(annotated, samples, what=what).items()]

    def _recorded(self) -> Iterator[tuple[SampleIndex, np.ndarray, list[int]]]:
        """Per index: (it, whether each shard records every sample's widths, samples of those shards per dims
        entry). A shard with one sample of unknown widths records none (its samples are checked as they stream)."""
        for index in self._parts:
            whole = index.shard_dims[:, 0] == 0
            yield index, whole, index.shard_dims[whole].sum(axis=0).tolist()

    def recorded_streams(self) -> set[str]:
        """The streams whose widths the index records."""
        return {stream for index, _, counts in self._recorded() for entry, count in zip(index.dims, counts) if count
                for stream in entry}

    def recorded_dims(self, streams: Sequence[str]) -> dict[str, int]:
        """The feature width of each of ``streams`` that the index records (streams it does not record are left
        out). A stream recorded with two widths is a :class:`DataFileError` naming the keys that differ from the
        majority: such a set mixes features of two models and would fail mid-training."""
        widths: dict[str, Counter] = {}
        for index, _, counts in self._recorded():
            for entry, count in zip(index.dims, counts):
                for stream in streams:
                    if count and stream in entry:
                        widths.setdefault(stream, Counter())[entry[stream]] += count
        for stream, counts in widths.items():
            if len(counts) > 1:
                raise self._mixed(stream, counts)
        return {stream: next(iter(counts)) for stream, counts in widths.items()}

    def _mixed(self, stream: str, counts: Counter) -> DataFileError:
        """The error for a stream of several widths: the most common one (the first seen of equally common ones)
        is the set's, the others' keys are listed."""
        positions: dict[int, list[np.ndarray]] = {}  # width -> its samples' positions, per index
        for index, whole, _ in self._recorded():
            for width in counts:
                entries = [number for number, entry in enumerate(index.dims) if entry.get(stream) == width]
                positions.setdefault(width, []).append(index.positions_with_dims(entries, whole))
        first_seen = {width: next((part, int(found[0])) for part, found in enumerate(parts) if len(found))
                      for width, parts in positions.items()}
        width, *others = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
        odd: list[str] = []
        for other in others:
            for index, found in zip(self._parts, positions[other]):
                odd += index.keys_at(found[: 5 - len(odd)])
        total = sum(counts[other] for other in others)
        return DataFileError(
            f"stream {stream!r} has width {width} in {counts[width]} samples but {', '.join(map(str, others))} "
            f"in {total} (keys {', '.join(odd)}{' ...' if total > 5 else ''}): the shard set mixes features "
            "of different models; re-extract those samples or leave them out"
        )


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else list(spec)
    return [url for pattern in patterns for url in braceexpand.braceexpand(str(pattern))]


def _output_dir_part(directory: Path) -> tuple[list[str], SampleIndex]:
    if not (directory / SIZES).is_file():
        raise DataFileError(
            f"{directory}: no {SIZES}; pass an extraction output DIR ({SHARDS_DIR}/ + {SIZES}), "
            f"a brace pattern like 'DIR/{SHARDS_DIR}/shard-{{000000..000009}}.tar' or a list of .tar paths"
        )
    index = open_index(directory)
    return shard_urls(directory, index.shard_names), index


def resolve_shards(spec: str | Path | Sequence[str]) -> ShardSet:
    """Shards of an extraction DIR (or partitioned tree), a brace pattern, a .tar path or a list of them (see the
    module docstring)."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        shards = ShardSet([_output_dir_part(directory) for directory in output_dirs(spec)])
    else:
        urls = expand_urls(str(spec) if isinstance(spec, (str, Path)) else spec)
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
        if missing:
            raise DataFileError(
                f"shards: {len(missing)} shard file(s) not found, e.g. {missing[0]}; check the path or pattern"
            )
        shards = ShardSet([(urls, SampleIndex.of_shards(urls, [read_tar_keys(url) for url in urls]))])
    if not len(shards):
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

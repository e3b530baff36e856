"""Which inputs a run extracts, under which keys: decided in bounded memory, whatever the corpus size.

An input's key comes from its own name (:func:`input_key`: its path relative to the folder or list it came
from, extension included, or a list file's ``key`` column), never from the rest of the run, and so does its
partition (:class:`Partition`: a hash of the key), so the partitions of one input list never share a key.

The inputs are streamed twice and never held: the first pass (:func:`make_plan`) keeps two 64-bit hashes
per input of this partition (16 bytes; 160 MB at 10^7) and looks them up in the manifest's
:class:`~lamflow.pipelines.record_index.RecordIndex`; the second (:meth:`Plan.todo`) yields the inputs
to extract, in input order. Two inputs that would share a key (``a b.mp4`` and ``a_b.mp4``; a new input
and one already in a shard) do not stop the run: each new one is yielded with an error saying which
inputs clash, to be recorded as its failure, while the rest is extracted.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lamflow.contract import safe_key
from lamflow.errors import ConfigError
from lamflow.pipelines.record_index import (
    ERROR,
    OK,
    RecordIndex,
    find_records,
    sorted_positions,
    stable_hash,
    stable_hashes,
)
from lamflow.pipelines.sources import Source

CHUNK = 65_536  # inputs hashed and looked up at a time: numpy does the work, Python holds one chunk
_PARTITION = re.compile(r"^(\d+)/(\d+)$")
KEY_CLASH = "KeyClash"  # the reason recorded for an input refused because another input has its key


def input_key(source: Source) -> str:
    """The sample key of an input (see the module docstring)."""
    return safe_key(source.key_name)


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count`` (``--partition K/N``, K from 0): the inputs whose key hashes to it."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Partition":
        match = _PARTITION.match(text.strip())
        if not match or not int(match.group(1)) < int(match.group(2)):
            raise ConfigError(f"--partition expects K/N with 0 <= K < N (e.g. 3/16), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def mask(self, key_hashes: np.ndarray) -> np.ndarray:
        return key_hashes % np.uint64(self.count) == np.uint64(self.index)

    def holds(self, key: str) -> bool:
        return stable_hash(key) % self.count == self.index


@dataclass
class Plan:
    """The outcome of the first pass (see the module docstring)."""

    sources: Callable[[], Iterable[Source]]  # streams the inputs again, in the same order
    partition: Partition | None
    inputs: int  # distinct inputs of this partition
    skipped_done: int
    skipped_failed: int
    todo_count: int  # inputs the second pass yields (clashing ones included)
    _todo: np.ndarray  # sorted source hashes to yield
    _retry_keys: dict[int, str]  # source hash -> recorded key, for failed inputs tried again
    _clash_keys: np.ndarray  # sorted key hashes that two inputs would share
    clashes: dict[int, list[str]] = field(default_factory=dict)  # key hash -> every input having it
    text_candidates: list[tuple[str, str]] = field(default_factory=list)  # (key, name) an annotation may name

    def todo(self) -> Iterator[tuple[Source, str, str | None]]:
        """(input, key, None) for each input to extract, or (input, key, error) for one refused because
        its key clashes; in input order, each input once."""
        if not self.todo_count:
            return
        emitted = np.zeros(len(self._todo), bool)
        for chunk in _chunks(self.sources()):
            hashes = stable_hashes(s.path for s in chunk)
            positions = sorted_positions(self._todo, hashes)
            for i in np.flatnonzero(positions >= 0):
                if emitted[positions[i]]:  # the same path again (in this chunk or an earlier one)
                    continue
                emitted[positions[i]] = True
                source = chunk[i]
                key = self._retry_keys.get(int(hashes[i])) or input_key(source)
                yield source, key, self._clash_error(key)

    def _clash_error(self, key: str) -> str | None:
        others = self.clashes.get(stable_hash(key))
        if others is None:
            return None
        return (f"{KEY_CLASH}: key {key!r} would name {len(others)} inputs ({', '.join(others[:5])}); keys come from "
                "each input's own name: rename one of them, or list the inputs in a .csv/.jsonl with a distinct "
                "'key' column")


def _chunks(sources: Iterable[Source]) -> Iterator[list[Source]]:
    iterator = iter(sources)
    while chunk := list(itertools.islice(iterator, CHUNK)):
        yield chunk


def make_plan(sources: Callable[[], Iterable[Source]], index: RecordIndex, manifest: Path, retry_failed: bool,
              partition: Partition | None = None, text_names: set[str] | None = None) -> Plan:
    """The first pass over ``sources()`` against the records of ``index`` (see the module docstring).
    ``text_names``: the video names of ``--texts``; the inputs they may name are kept for the join."""
    source_chunks, key_chunks, retry_keys = [], [], {}
    wanted_keys = {k for name in text_names or () for k in (name, safe_key(name))}
    candidates: list[tuple[str, str]] = []
    for chunk in _chunks(sources()):
        source_hashes = stable_hashes(s.path for s in chunk)
        positions = index.lookup(source_hashes)
        # An input with a record keeps its recorded key (and is in this partition: its record is here); only
        # the others need their key made, and its hash decides their partition.
        new = np.flatnonzero(positions < 0)
        keys = {i: input_key(chunk[i]) for i in new}
        key_hashes = index.at(positions, "key_hash", 0)
        key_hashes[new] = stable_hashes(keys.values())
        if partition:
            mine = positions >= 0
            mine[new] = partition.mask(key_hashes[new])
            source_hashes, key_hashes, positions = source_hashes[mine], key_hashes[mine], positions[mine]
            chunk = [s for s, m in zip(chunk, mine) if m]
            keys = {j: keys[i] for j, i in enumerate(np.flatnonzero(mine)) if i in keys}
        source_chunks.append(source_hashes)
        key_chunks.append(key_hashes)
        if retry_failed:
            for i in np.flatnonzero(positions >= 0):
                if index.status[positions[i]] == ERROR:
                    retry_keys[int(source_hashes[i])] = _recorded_key(chunk[i], int(index.key_hash[positions[i]]))
        if text_names:
            for i, s in enumerate(chunk):
                key = keys.get(i) or input_key(s)
                if s.name in text_names or key in wanted_keys or s.name.rsplit("/", 1)[-1] in text_names:
                    candidates.append((key, s.name))
    source_hash = np.concatenate(source_chunks) if source_chunks else np.zeros(0, np.uint64)
    key_hash = np.concatenate(key_chunks) if key_chunks else np.zeros(0, np.uint64)
    source_hash, first = np.unique(source_hash, return_index=True)  # a path given twice is one input
    key_hash = key_hash[first]
    status = index.at(index.lookup(source_hash), "status", 0)
    todo = (status == 0) | ((status == ERROR) & retry_failed)
    unknown = [h for h, k in retry_keys.items() if k is None]
    if unknown:
        for h, record in find_records(manifest, unknown).items():
            retry_keys[h] = record.key
    # keys that two would-be samples share: among the samples in shards and the inputs to extract
    taken = np.concatenate([index.key_hash[index.status == OK], key_hash[todo]])
    values, counts = np.unique(taken, return_counts=True)
    clash_keys = values[counts > 1]
    plan = Plan(sources, partition, inputs=len(source_hash), skipped_done=int((status == OK).sum()),
                skipped_failed=int(((status == ERROR) & ~todo).sum()), todo_count=int(todo.sum()),
                _todo=np.sort(source_hash[todo]), _retry_keys={h: k for h, k in retry_keys.items() if k},
                _clash_keys=clash_keys, text_candidates=candidates)
    if len(clash_keys):
        plan.clashes = _clashing_inputs(plan, index, manifest)
    return plan


def _recorded_key(source: Source, key_hash: int) -> str | None:
    """The key recorded for ``source``, when today's rule or the previous one (the name without its
    extension) makes it; None when only the manifest can tell."""
    for key in (input_key(source), safe_key(source.name)):
        if stable_hash(key) == key_hash:
            return key
    return None


def _clashing_inputs(plan: Plan, index: RecordIndex, manifest: Path) -> dict[int, list[str]]:
    """key hash -> the inputs that would share it (a third pass, taken only when keys clash)."""
    clashes: dict[int, list[str]] = {}
    clash_set = set(int(h) for h in plan._clash_keys)
    recorded = index.source_hash[np.isin(index.key_hash, plan._clash_keys) & (index.status == OK)]
    for record in find_records(manifest, recorded).values():
        clashes.setdefault(stable_hash(record.key), []).append(record.source)
    for chunk in _chunks(plan.sources()):
        hashes = stable_hashes(s.path for s in chunk)
        for i in np.flatnonzero(sorted_positions(plan._todo, hashes) >= 0):
            key = plan._retry_keys.get(int(hashes[i])) or input_key(chunk[i])
            if (h := stable_hash(key)) in clash_set and chunk[i].path not in clashes.get(h, []):
                clashes.setdefault(h, []).append(chunk[i].path)
    return clashes

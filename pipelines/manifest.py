"""The records of an output directory: manifest.jsonl, extraction.json, stats.json, sizes.json.

``manifest.jsonl`` is append-only while a run is going (one fsynced write per committed shard, one per
failure) and compacted to one record per input (the latest) when it holds superseded records (a retry, a
repair). What a resume needs of it is kept as arrays in its record index (record_index.py). Opening an
output directory repairs what a killed run can leave behind:

- a torn last manifest line (killed mid-append) is dropped;
- ``ok`` records naming a shard that never got its final name (killed between commit and rename) are
  dropped;
- unfinished shards (``shards/.shard-*.tar.tmp``, killed mid-shard) are salvaged: their complete samples become a committed shard
  whose records are rebuilt from each sample's ``meta.json`` (key, source, counts, duration, original
  name); a ``.tmp`` without a complete sample is deleted;
- finished samples a killed run held back for input order (``.reorder/``, see reorder.py) go into a shard
  unless they reached one before the kill. So a kill loses only the inputs in flight.

After this, every final shard's samples are recorded exactly once and every ``ok`` record's shard
exists — which is what makes kill-and-resume produce the same samples as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from lamflow import __version__
from lamflow.contract import (
    EXTRACTION,
    FORMAT,
    MANIFEST,
    META,
    SAMPLE_INDEX,
    SHARDS_DIR,
    SIZES,
    STATS,
    Record,
    final_shards,
    sample_dims,
    shard_index,
)
from lamflow.errors import LamflowError
from lamflow.fileio import atomic_open, commit_temp, final_path, fsync_dir, mkdir_durable, read_json, write_json_atomic
from lamflow.pipelines.failures import FailureTally
from lamflow.pipelines.record_index import (
    INDEX_FILE,
    OK,
    GrowingIndex,
    RecordIndex,
    latest_lines,
    latest_records,
    read_index,
    stable_hash,
)
from lamflow.pipelines.reorder import ReorderBuffer, clear_spill, spilled_samples
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES, ShardSink, salvage_temp_shard, temp_shards
from lamflow.sample_index import build_index

LOCK = ".lamflow.lock"
SAVE_INDEX_EVERY = 100_000  # manifest lines appended between index saves: bounds what a killed run's next open re-reads
OUTPUT_FILES = (MANIFEST, INDEX_FILE, STATS, SIZES, EXTRACTION)  # deletion order matters, see _delete_previous_output


class SettingsMismatchError(LamflowError, ValueError):
    """The output directory was produced with other settings; mixing them would mix features."""


class OutputDirError(LamflowError, RuntimeError):
    """The output directory is in a state lamflow cannot repair by itself (message says what to do)."""


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            diffs.append(f"{prefix}{name}: {a!r} -> {b!r}")
    return diffs


def settings_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How two runs' extraction.json records differ in what decides the features (``lamflow_version`` and
    ``runtime`` may differ: they change how fast, not what)."""
    compared = [k for k in current if k not in ("lamflow_version", "runtime")]
    return _differences({k: previous.get(k) for k in compared}, {k: current[k] for k in compared})


class OutputDir:
    """An extraction output directory, opened for one run (holds an exclusive lock until ``close``)."""

    def __init__(self, root: Path, run_record: dict[str, Any], overwrite: bool = False) -> None:
        """Open ``root`` for a run described by ``run_record`` (what must match to resume: kind,
        feature-affecting settings, text inputs). Raises :class:`SettingsMismatchError` if ``root`` holds
        output of other settings and ``overwrite`` is False; with ``overwrite`` that output is deleted."""
        self.root = Path(root)
        self.shards_dir = self.root / SHARDS_DIR
        mkdir_durable(self.root)
        self._lock = open(self.root / LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputDirError(f"another lamflow process is writing to {self.root}; wait for it or use another --out") from None
        if overwrite:
            self._delete_previous_output()
        self._check_or_write_run_record(run_record)
        mkdir_durable(self.shards_dir)
        self.repairs: list[str] = []  # what was fixed after a killed run (for the user)
        self._recover()

    # -- opening -------------------------------------------------------------------------------------
    def _delete_previous_output(self) -> None:
        # Shards first, the settings record last: a kill part-way leaves records without shards (which
        # opening repairs), never shards without records.
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        shutil.rmtree(self.root / SAMPLE_INDEX, ignore_errors=True)
        for name in OUTPUT_FILES:
            (self.root / name).unlink(missing_ok=True)

    def _check_or_write_run_record(self, run_record: dict[str, Any]) -> None:
        path = self.root / EXTRACTION
        record = {"format": FORMAT, **run_record}
        if path.exists():
            diffs = settings_differences(read_json(path), record)
            if diffs and self._holds_output():
                raise SettingsMismatchError(
                    f"{self.root} was extracted with different settings ({'; '.join(diffs)}). Resuming would "
                    "mix features of both runs in one dataset. Use a new --out directory, or pass --overwrite "
                    "to delete the previous output and start again."
                )
            if not diffs:
                return
            # Other settings but nothing written yet (e.g. the previous run stopped on a model typo): no
            # features to mix, so the new settings simply replace the old record.
        elif self._holds_output():
            raise OutputDirError(
                f"{self.root} holds shards or a manifest but no {EXTRACTION}, so its settings are unknown; "
                "use a new --out directory or pass --overwrite"
            )
        write_json_atomic(path, {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _holds_output(self) -> bool:
        manifest = self.root / MANIFEST
        return (manifest.exists() and manifest.stat().st_size > 0) or bool(final_shards(self.shards_dir))

    def _recover(self) -> None:
        manifest = self.root / MANIFEST
        self.index, torn = read_index(manifest)
        self._saved_lines = self.index.lines if (self.root / INDEX_FILE).exists() else -1
        if torn:
            self.repairs.append("dropped a manifest line cut off by a killed run")
        existing = {p.name for p in final_shards(self.shards_dir)}
        missing = [i for i, name in enumerate(self.index.shards) if name not in existing]
        lost = (self.index.status == OK) & np.isin(self.index.shard, missing)
        if lost.any():
            per_shard = np.bincount(self.index.shard[lost], minlength=len(self.index.shards))
            for shard_id in np.flatnonzero(per_shard):
                self.repairs.append(f"{per_shard[shard_id]} record(s) name shard {self.index.shards[shard_id]}, which "
                                    "was never completed: their inputs are extracted again")
            self.index = self.index.without(lost)
        recorded = {self.index.shards[i] for i in np.unique(self.index.shard[self.index.status == OK])}
        unrecorded = sorted(existing - recorded)
        if unrecorded:
            raise OutputDirError(
                f"{self.shards_dir} holds shard(s) {unrecorded[:5]} whose samples are not in {MANIFEST} (was the "
                "manifest edited or deleted?); resuming would duplicate them. Delete those shards or rerun with --overwrite"
            )
        if torn or lost.any() or self.index.superseded:
            self.compact()
        elif self._saved_lines != self.index.lines:
            self._save_index()
        for temp in temp_shards(self.shards_dir):
            self._salvage(temp)
        self._recover_spill()

    def _recover_spill(self) -> None:
        """Put the finished samples a killed run held back for input order (reorder.py) into a shard,
        unless the run wrote them before it died."""
        kept = 0
        with self.shard_sink(DEFAULT_SHARD_SAMPLES, DEFAULT_SHARD_BYTES) as sink:
            for sample in spilled_samples(self.root):
                meta = sample.get(META)
                if not isinstance(meta, dict) or "source" not in meta or self._is_done(meta["source"]):
                    continue
                fields = {name: value for name, value in sample.items() if not name.startswith("__")}
                sink.write({"__key__": sample["__key__"], **fields},
                           Record.from_meta(sample["__key__"], meta, sample_dims(fields)))
                kept += 1
        clear_spill(self.root)
        if kept:
            self.repairs.append(f"kept {kept} finished sample(s) that were waiting for an earlier input when the run stopped")

    def _is_done(self, source: str) -> bool:
        position = self.index.lookup(np.array([stable_hash(source)], np.uint64))[0]
        return position >= 0 and self.index.status[position] == OK

    def _salvage(self, temp: Path) -> None:
        """Commit the complete samples of an unfinished shard (see the module docstring), in the order
        ShardSink commits: records durable first, then the final name."""
        final = final_path(temp)
        if shard_index(final.name) is None or final.exists():
            raise OutputDirError(f"{temp} is not an unfinished shard of this directory (or {final.name} exists "
                                 "too); move it away or rerun with --overwrite")
        kept = salvage_temp_shard(temp)
        if not kept:
            temp.unlink()
            self.repairs.append(f"deleted unfinished shard {temp.name}: no complete sample in it")
            return
        for key, meta, _ in kept:
            if "source" not in meta:
                raise OutputDirError(f"{temp}: sample {key!r} has no source in its meta.json; move the file away "
                                     "or rerun with --overwrite")
        self.append(Record.from_meta(key, meta, dims, shard=final.name) for key, meta, dims in kept)
        commit_temp(final)
        self.repairs.append(f"kept the {len(kept)} finished sample(s) of unfinished shard {temp.name} as {final.name}")

    # -- queries -------------------------------------------------------------------------------------
    @property
    def index(self) -> RecordIndex:
        """The latest record of every input, as arrays (record_index.py), appends included."""
        return self._records.current

    @index.setter
    def index(self, index: RecordIndex) -> None:
        self._records = GrowingIndex(index)

    def records(self) -> Iterator[Record]:
        """The latest record of every input, in manifest order (streamed from the manifest)."""
        return latest_records(self.root / MANIFEST, self.index)

    def done_sources(self) -> set[str]:
        """Sources in a shard (a set of every such path: for small directories and tests; a plan at scale
        looks hashes up in :attr:`index`)."""
        return {r.source for r in self.records() if r.status == "ok"}

    def failed_sources(self) -> set[str]:
        return {r.source for r in self.records() if r.status == "error"}

    def keys_by_source(self) -> dict[str, str]:
        """Keys fixed by earlier runs (ok or failed: a retried input keeps its key)."""
        return {r.source: r.key for r in self.records()}

    def next_shard_index(self) -> int:
        shards = final_shards(self.shards_dir)
        return shard_index(shards[-1].name) + 1 if shards else 0

    # -- writing -------------------------------------------------------------------------------------
    def shard_sink(self, max_samples: int, max_bytes: int) -> ShardSink[Record]:
        """A sink writing new shards after the existing ones; each committed shard's records are
        appended to the manifest with their shard name (see :class:`ShardSink` for the ordering)."""
        return ShardSink(
            self.shards_dir, self.next_shard_index(), max_samples, max_bytes,
            on_commit=lambda shard, records: self.append(dataclasses.replace(r, shard=shard) for r in records),
        )

    def reorder_buffer(self) -> ReorderBuffer:
        """Where finished samples wait for input order, spilled where the next open recovers them."""
        return ReorderBuffer(self.root)

    def append(self, records: Iterable[Record]) -> None:
        """Append records durably: one write, then fsync (a kill can tear only the last line)."""
        records = list(records)
        path = self.root / MANIFEST
        created = not path.exists()
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        if created:  # a new file's name is durable once its folder is synced: a crash must not lose it
            fsync_dir(self.root)
        self._records.add(records, size)
        if self._records.lines - self._saved_lines >= SAVE_INDEX_EVERY:
            self._save_index()

    def _save_index(self) -> None:
        self.index.save(self.root / MANIFEST)
        self._saved_lines = self.index.lines

    def compact(self) -> None:
        """Rewrite the manifest with one record (the latest) per input, atomically, streaming its lines."""
        manifest = self.root / MANIFEST
        with atomic_open(manifest, "wb") as handle:
            for _, line in latest_lines(manifest, self.index):
                handle.write(line + b"\n")
            size = handle.tell()
        # the kept lines keep their order: each one's new number is its rank among them
        line = np.searchsorted(np.sort(self.index.line), self.index.line)
        self.index = dataclasses.replace(self.index, line=line, lines=len(self.index), covered=size)
        self._save_index()

    def write_summaries(self, last_run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write sizes.json ({shard: samples}) and stats.json from the manifest (one streamed pass); returns the stats."""
        sizes: dict[str, int] = {}
        tokens: dict[str, int] = {}
        widths: dict[str, dict[str, int]] = {}  # stream -> {width: samples}: more than one width is a mixed set
        failures = FailureTally()
        inputs = ok = 0
        duration = 0.0
        for record in self.records():
            inputs += 1
            if record.status != "ok":
                failures.add(record.source, record.error)
                continue
            ok += 1
            sizes[record.shard] = sizes.get(record.shard, 0) + 1
            duration += record.duration or 0.0
            for stream, count in record.counts.items():
                tokens[stream] = tokens.get(stream, 0) + count
            for stream, dim in record.dims.items():
                widths.setdefault(stream, {}).setdefault(str(dim), 0)
                widths[stream][str(dim)] += 1
        stats = {
            "inputs": inputs,
            "ok": ok,
            "failed": inputs - ok,
            "shards": len(sizes),
            "duration_seconds": round(duration, 3),
            "tokens": tokens,
            "dims": widths,
            "failure_reasons": dict(failures.reasons.most_common()),
            "failures": failures.examples,  # the first few; all are in the manifest
            "lamflow_version": __version__,
        }
        if last_run is not None:
            stats["last_run"] = last_run
        write_json_atomic(self.root / SIZES, dict(sorted(sizes.items())))
        write_json_atomic(self.root / STATS, stats)
        build_index(self.root)  # the loader's index, so training ranks map it instead of building it
        return stats

    def close(self) -> None:
        self._lock.close()  # releases the flock

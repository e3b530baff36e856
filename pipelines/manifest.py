"""The records of an output directory: manifest.jsonl, extraction.json, stats.json, sizes.json.

``manifest.jsonl`` is append-only while a run is going (one fsynced write per committed shard, one per
failure) and compacted to one record per input (the latest) at the start and end of a run. Opening an
output directory repairs what a killed run can leave behind:

- a torn last manifest line (killed mid-append) is dropped;
- ``ok`` records naming a shard that never got its final name (killed between commit and rename) are
  dropped;
- unfinished shards (``shards/.shard-*.tar.tmp``, killed mid-shard) are salvaged: their complete samples become a committed shard
  whose records are rebuilt from each sample's ``meta.json`` (key, source, counts, duration, original
  name); a ``.tmp`` without a complete sample is deleted. So a kill loses only the inputs in flight.

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
from typing import Any, Iterable

from lamflow import __version__
from lamflow.contract import (
    EXTRACTION,
    FORMAT,
    MANIFEST,
    SHARDS_DIR,
    SIZES,
    STATS,
    Record,
    final_shards,
    parse_manifest,
    shard_index,
)
from lamflow.errors import LamflowError
from lamflow.fileio import commit_temp, final_path, read_json, write_json_atomic, write_jsonl_atomic
from lamflow.pipelines.shards import ShardSink, salvage_temp_shard, temp_shards

LOCK = ".lamflow.lock"
MAX_LISTED_FAILURES = 100  # stats.json stays small on huge corpora; manifest.jsonl has every failure
OUTPUT_FILES = (MANIFEST, STATS, SIZES, EXTRACTION)  # deletion order matters, see _delete_previous_output


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


class OutputDir:
    """An extraction output directory, opened for one run (holds an exclusive lock until ``close``)."""

    def __init__(self, root: Path, run_record: dict[str, Any], overwrite: bool = False) -> None:
        """Open ``root`` for a run described by ``run_record`` (what must match to resume: kind,
        feature-affecting settings, text inputs). Raises :class:`SettingsMismatchError` if ``root`` holds
        output of other settings and ``overwrite`` is False; with ``overwrite`` that output is deleted."""
        self.root = Path(root)
        self.shards_dir = self.root / SHARDS_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputDirError(f"another lamflow process is writing to {self.root}; wait for it or use another --out") from None
        if overwrite:
            self._delete_previous_output()
        self._check_or_write_run_record(run_record)
        self.shards_dir.mkdir(exist_ok=True)
        self.latest: dict[str, Record] = {}  # source -> latest record
        self.repairs: list[str] = []  # what was fixed after a killed run (for the user)
        self._recover()

    # -- opening -------------------------------------------------------------------------------------
    def _delete_previous_output(self) -> None:
        # Shards first, the settings record last: a kill part-way leaves records without shards (which
        # opening repairs), never shards without records.
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        for name in OUTPUT_FILES:
            (self.root / name).unlink(missing_ok=True)

    def _check_or_write_run_record(self, run_record: dict[str, Any]) -> None:
        path = self.root / EXTRACTION
        record = {"format": FORMAT, **run_record}
        if path.exists():
            previous = read_json(path)
            previous_run = {k: previous.get(k) for k in record if k not in ("lamflow_version", "runtime")}
            current_run = {k: record[k] for k in previous_run}
            diffs = _differences(previous_run, current_run)
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
        path = self.root / MANIFEST
        records, torn = parse_manifest(path) if path.exists() else ([], False)
        if torn:
            self.repairs.append("dropped a manifest line cut off by a killed run")
        existing = {p.name for p in final_shards(self.shards_dir)}
        for record in records:
            if record.status == "ok" and record.shard not in existing:
                self.repairs.append(f"{record.source}: its shard {record.shard} was never completed")
                continue
            self._set_latest(record)
        recorded = {r.shard for r in self.latest.values() if r.status == "ok"}
        unrecorded = sorted(existing - recorded)
        if unrecorded:
            raise OutputDirError(
                f"{self.shards_dir} holds shard(s) {unrecorded} whose samples are not in {MANIFEST} (was the "
                "manifest edited or deleted?); resuming would duplicate them. Delete those shards or rerun with --overwrite"
            )
        if torn or self.repairs or len(self.latest) != len(records):
            self.compact()
        for temp in temp_shards(self.shards_dir):
            self._salvage(temp)

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
        for key, meta, dims in kept:
            if "source" not in meta:
                raise OutputDirError(f"{temp}: sample {key!r} has no source in its meta.json; move the file away "
                                     "or rerun with --overwrite")
            self._set_latest(Record.from_meta(key, meta, dims, shard=final.name))
        self.compact()
        commit_temp(final)
        self.repairs.append(f"kept the {len(kept)} finished sample(s) of unfinished shard {temp.name} as {final.name}")

    # -- queries -------------------------------------------------------------------------------------
    def done_sources(self) -> set[str]:
        return {s for s, r in self.latest.items() if r.status == "ok"}

    def failed_sources(self) -> set[str]:
        return {s for s, r in self.latest.items() if r.status == "error"}

    def keys_by_source(self) -> dict[str, str]:
        """Keys fixed by earlier runs (ok or failed: a retried input keeps its key)."""
        return {s: r.key for s, r in self.latest.items()}

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

    def append(self, records: Iterable[Record]) -> None:
        """Append records durably: one write, then fsync (a kill can tear only the last line)."""
        records = list(records)
        with open(self.root / MANIFEST, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self._set_latest(record)

    def _set_latest(self, record: Record) -> None:
        # Re-insert at the end so the compacted manifest lists records in commit order: the records of
        # one shard stay together and in the shard's tar order (readers rely on it).
        self.latest.pop(record.source, None)
        self.latest[record.source] = record

    def compact(self) -> None:
        """Rewrite the manifest with one record (the latest) per input, atomically."""
        write_jsonl_atomic(self.root / MANIFEST, (r.to_json() for r in self.latest.values()), sort_keys=True)

    def write_summaries(self, last_run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write sizes.json ({shard: samples}) and stats.json from the manifest; returns the stats."""
        ok = [r for r in self.latest.values() if r.status == "ok"]
        failed = [r for r in self.latest.values() if r.status == "error"]
        sizes: dict[str, int] = {}
        for record in sorted(ok, key=lambda r: r.shard):
            sizes[record.shard] = sizes.get(record.shard, 0) + 1
        tokens: dict[str, int] = {}
        widths: dict[str, dict[str, int]] = {}  # stream -> {width: samples}: more than one width is a mixed set
        for record in ok:
            for stream, count in record.counts.items():
                tokens[stream] = tokens.get(stream, 0) + count
            for stream, dim in record.dims.items():
                widths.setdefault(stream, {}).setdefault(str(dim), 0)
                widths[stream][str(dim)] += 1
        stats = {
            "inputs": len(self.latest),
            "ok": len(ok),
            "failed": len(failed),
            "shards": len(sizes),
            "duration_seconds": round(sum(r.duration or 0.0 for r in ok), 3),
            "tokens": tokens,
            "dims": widths,
            "failures": {r.source: r.error for r in failed[:MAX_LISTED_FAILURES]},  # all are in the manifest
            "lamflow_version": __version__,
        }
        if last_run is not None:
            stats["last_run"] = last_run
        write_json_atomic(self.root / SIZES, sizes)
        write_json_atomic(self.root / STATS, stats)
        return stats

    def close(self) -> None:
        self._lock.close()  # releases the flock

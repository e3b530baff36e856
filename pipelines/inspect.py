"""Summarise an output directory (or shard files): shards, samples, streams, shapes, dtypes, failures,
and consistency problems (duplicate keys, sizes.json disagreeing with the shards, leftover temp shards).

Only ``.npy`` headers and ``meta.json`` are read, never array data, so inspecting a large dataset costs
one sequential read of its tar headers.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lamflow.contract import (
    EXTRACTION,
    MANIFEST,
    META,
    SHARDS_DIR,
    SIZES,
    decode_meta,
    final_shards,
    iter_members,
    npy_header,
    output_dirs,
)
from lamflow.errors import DataFileError
from lamflow.fileio import read_json
from lamflow.pipelines.failures import FailureTally, format_failures
from lamflow.pipelines.record_index import latest_records, read_index
from lamflow.pipelines.shards import temp_shards


@dataclass
class StreamSummary:
    """Shapes of one .npy field over all samples."""

    dtypes: Counter = field(default_factory=Counter)
    trailing_shapes: Counter = field(default_factory=Counter)  # shape without the first (time) axis
    lengths: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        lengths = self.lengths
        return {
            "samples": len(lengths),
            "dtypes": dict(self.dtypes),
            "trailing_shapes": {str(list(k)): v for k, v in self.trailing_shapes.items()},
            "length_min": min(lengths) if lengths else 0,
            "length_mean": round(float(np.mean(lengths)), 2) if lengths else 0.0,
            "length_max": max(lengths) if lengths else 0,
            "empty": sum(n == 0 for n in lengths),
        }


def _scan_shard(path: Path, streams: dict[str, StreamSummary], keys: Counter, notes: Counter,
                note_examples: dict[str, str], problems: list[str]) -> int:
    """Add one shard's samples to the running summaries; returns its sample count. Damage (a truncated
    tar, a member that is not what its name says) becomes a problem of the report, and the scan goes on."""
    seen: set[str] = set()
    try:
        for key, name, tar, member in iter_members(path):
            if key not in seen:
                seen.add(key)
                keys[key] += 1
            try:
                if name.endswith(".npy"):
                    # The header is in the first bytes; 4 KiB holds any header numpy writes for these arrays.
                    shape, dtype = npy_header(tar.extractfile(member).read(4096))
                    summary = streams.setdefault(name[: -len(".npy")], StreamSummary())
                    summary.dtypes[dtype] += 1
                    summary.trailing_shapes[tuple(shape[1:])] += 1
                    summary.lengths.append(shape[0] if shape else 0)
                elif name == META:
                    for note in decode_meta(tar.extractfile(member).read(), member.name).get("notes", []):
                        lead = note.split(":")[0]  # group notes by their lead, e.g. "no audio stream"
                        notes[lead] += 1
                        note_examples.setdefault(lead, note)  # the first one whole, for the printed report
            except ValueError as error:  # a bad npy header; a meta.json that is not a JSON object (ContractError)
                problems.append(f"{path.name}: member {member.name} is damaged ({type(error).__name__}: {error})")
    except (tarfile.TarError, OSError, EOFError) as error:
        problems.append(f"{path.name}: unreadable after {len(seen)} sample(s) ({type(error).__name__}: {error}); "
                        "re-extract or delete it")
    return len(seen)


def inspect_output(path: str | Path) -> dict[str, Any]:
    """Summarise an output directory (a partitioned tree as one dataset), or a single shard file, as a
    JSON-friendly dict."""
    path = Path(path)
    if path.is_file():
        shards, roots = [path], []
    elif path.is_dir():
        roots = output_dirs(path)
        shards = [shard for root in roots for shard in final_shards(root / SHARDS_DIR)]
    else:
        raise DataFileError(f"{path} does not exist; give an output directory of `lamflow extract` or a shard .tar")
    streams: dict[str, StreamSummary] = {}
    keys: Counter = Counter()
    notes: Counter = Counter()
    note_examples: dict[str, str] = {}
    damage: list[str] = []
    per_shard = {_shard_label(shard, path): _scan_shard(shard, streams, keys, notes, note_examples, damage)
                 for shard in shards}
    report: dict[str, Any] = {
        "path": str(path),
        "shards": len(shards),
        "bytes": sum(s.stat().st_size for s in shards),
        "samples": sum(per_shard.values()),
        "samples_per_shard": per_shard,
        "streams": {name: s.to_json() for name, s in sorted(streams.items())},
        "notes": dict(notes),
        "note_examples": note_examples,
        "problems": damage + [f"key {k!r} appears {n} times" for k, n in keys.items() if n > 1],
    }
    if roots:
        report["partitions"] = len(roots) if roots != [path] else 0
        failures = FailureTally()
        for root in roots:
            on_disk = {shard.name: per_shard[_shard_label(shard, path)] for shard in final_shards(root / SHARDS_DIR)}
            _add_records(root, on_disk, report, failures)
        if "inputs" in report:
            report["failures"] = failures.to_json()
    return report


def _shard_label(shard: Path, root: Path) -> str:
    """A shard's name in the report: its file name, or its path under a partitioned tree's root."""
    return shard.name if shard.parent.parent == root or root.is_file() else str(shard.relative_to(root))


def _add_records(root: Path, on_disk: dict[str, int], report: dict[str, Any], failures: FailureTally) -> None:
    """Add what ``root``'s records say (settings, inputs, failures) and their disagreements with ``on_disk``
    ({shard file name: samples found}) to the report."""
    if (root / EXTRACTION).is_file():
        extraction = read_json(root / EXTRACTION)
        report["kind"] = extraction.get("kind")
        report["settings"] = extraction.get("settings")
    if (root / MANIFEST).is_file():
        try:
            index, torn = read_index(root / MANIFEST)
            records = latest_records(root / MANIFEST, index)
            for name in ("inputs", "ok", "failed"):
                report.setdefault(name, 0)
            for record in records:
                report["inputs"] += 1
                if record.status == "error":
                    report["failed"] += 1
                    failures.add(record.source, record.error)
                else:
                    report["ok"] += 1
        except DataFileError as error:
            torn = False
            report["problems"].append(f"{error} (re-run extract to repair an interrupted run's manifest)")
        if torn:
            report["problems"].append(f"{root / MANIFEST}: the last line was cut off by an interrupted run (re-run "
                                      "extract to fix)")
    if (root / SIZES).is_file():
        if read_json(root / SIZES) != on_disk:
            report["problems"].append(f"{root / SIZES} disagrees with the shards on disk (an interrupted run? re-run "
                                      "extract to fix)")
    leftovers = [p.name for p in temp_shards(root / SHARDS_DIR)]
    if leftovers:
        report["problems"].append(f"unfinished shards from an interrupted run in {root}: {leftovers} (re-running the "
                                  "extraction keeps their finished samples)")


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text."""
    lines = [f"{report['path']}: {report['samples']} samples in {report['shards']} shards "
             f"({report['bytes'] / 1e6:.1f} MB)"]
    if "kind" in report:
        lines.append(f"kind: {report['kind']}  settings: {json.dumps(report['settings'], sort_keys=True)}")
    if "inputs" in report:
        lines.append(f"inputs: {report['inputs']}  ok: {report['ok']}  failed: {report['failed']}")
    lines.append("streams:")
    for name, s in report["streams"].items():
        shapes = ", ".join(f"(T, {k[1:-1]})" if k != "[]" else "(T,)" for k in s["trailing_shapes"])
        dtypes = ", ".join(s["dtypes"])
        lines.append(f"  {name:<14} {dtypes:<9} {shapes:<18} T min/mean/max {s['length_min']}/{s['length_mean']}/"
                     f"{s['length_max']}  empty in {s['empty']} of {s['samples']}")
    for lead, count in report["notes"].items():
        example = report["note_examples"][lead]  # whole: a note's colon is not its end
        lines.append(f"note ({count} samples): {example}" if count == 1 else f"note ({count} samples), e.g.: {example}")
    if report.get("failures"):
        where = f"{MANIFEST} (status error){' of each partition' if report.get('partitions') else ''}"
        lines += format_failures(report["failures"]["reasons"], report["failures"]["examples"], where)
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)

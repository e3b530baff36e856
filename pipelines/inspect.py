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
    final_shards,
    iter_members,
    latest_records,
    npy_header,
    parse_manifest,
)
from lamflow.errors import DataFileError
from lamflow.fileio import read_json
from lamflow.pipelines.manifest import MAX_LISTED_FAILURES
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
                    for note in json.loads(tar.extractfile(member).read()).get("notes", []):
                        lead = note.split(":")[0]  # group notes by their lead, e.g. "no audio stream"
                        notes[lead] += 1
                        note_examples.setdefault(lead, note)  # the first one whole, for the printed report
            except (ValueError, UnicodeDecodeError, AttributeError) as error:  # bad npy header / JSON / not an object
                problems.append(f"{path.name}: member {member.name} is damaged ({type(error).__name__}: {error})")
    except (tarfile.TarError, OSError, EOFError) as error:
        problems.append(f"{path.name}: unreadable after {len(seen)} sample(s) ({type(error).__name__}: {error}); "
                        "re-extract or delete it")
    return len(seen)


def inspect_output(path: str | Path) -> dict[str, Any]:
    """Summarise an output directory, or a single shard file, as a JSON-friendly dict."""
    path = Path(path)
    if path.is_file():
        shards, root = [path], None
    elif path.is_dir():
        shards, root = final_shards(path / SHARDS_DIR), path
    else:
        raise DataFileError(f"{path} does not exist; give an output directory of `lamflow extract` or a shard .tar")
    streams: dict[str, StreamSummary] = {}
    keys: Counter = Counter()
    notes: Counter = Counter()
    note_examples: dict[str, str] = {}
    damage: list[str] = []
    per_shard = {shard.name: _scan_shard(shard, streams, keys, notes, note_examples, damage) for shard in shards}
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
    if root is not None:
        _add_records(root, per_shard, report)
    return report


def _add_records(root: Path, per_shard: dict[str, int], report: dict[str, Any]) -> None:
    if (root / EXTRACTION).is_file():
        extraction = read_json(root / EXTRACTION)
        report["kind"] = extraction.get("kind")
        report["settings"] = extraction.get("settings")
    if (root / MANIFEST).is_file():
        try:
            records, torn = parse_manifest(root / MANIFEST)
        except DataFileError as error:
            records, torn = [], False
            report["problems"].append(f"{error} (re-run extract to repair an interrupted run's manifest)")
        if torn:
            report["problems"].append(f"{MANIFEST}: the last line was cut off by an interrupted run (re-run extract to fix)")
        latest = latest_records(records)
        failures = [r for r in latest.values() if r.status == "error"]
        report["inputs"] = len(latest)
        report["ok"] = len(latest) - len(failures)
        report["failed"] = len(failures)
        report["failures"] = {r.source: r.error for r in failures[:MAX_LISTED_FAILURES]}
    if (root / SIZES).is_file() and read_json(root / SIZES) != per_shard:
        report["problems"].append(f"{SIZES} disagrees with the shards on disk (an interrupted run? re-run extract to fix)")
    leftovers = [p.name for p in temp_shards(root / SHARDS_DIR)]
    if leftovers:
        report["problems"].append(f"unfinished shards from an interrupted run: {leftovers} (re-running the extraction "
                                  "keeps their finished samples)")


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
    for source, error in report.get("failures", {}).items():
        lines.append(f"failed: {source}: {error}")
    if report.get("failed", 0) > len(report.get("failures", {})):
        lines.append(f"... {report['failed'] - len(report['failures'])} more failures in {MANIFEST}")
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)

"""The loader's sample index at scale: what every training rank pays to open a shard set before its first batch.

For each ``--records`` N, writes a synthetic output directory in the format ``lamflow extract`` writes: one
manifest line per sample, made like the extractor's (``json.dumps(Record(...).to_json(), sort_keys=True)``,
QVHighlights-style names ``<11-char id>_<start>.0_<end>.0`` of ``.mp4`` inputs, keys with the extension, video,
audio and text widths), ``sizes.json`` and ``stats.json``; the shard files are empty placeholders (``--per-shard``
samples each), since opening reads the index, not the tars. Then, ``--ranks`` fresh processes at once open it as
a training rank does (``StreamingLoader`` with a classification task labelling ``--annotations`` of the samples:
the index, the annotation join, the width check and the per-shard item counts): the first open builds the index
(one rank builds, the others wait for it), a second round maps it. Per round: the slowest rank's seconds and the
largest peak RSS (VmHWM; the ranks share the index's pages through the page cache), the RSS a rank has before
opening (Python, torch and lamflow imported), and the largest peak RSS of the processes a building rank forks to
read the manifest (one per core, up to 8, for each 64 MiB; they inherit the rank's pages). Target at 10^7
samples: <= 60 s and <= 2 GiB per rank.

    python benchmarks/loader_index.py [--records 100000,1000000,10000000] [--ranks 1] [--annotations 10000]
                                      [--per-shard 1000] [--dir DIR] [--json]

``make_output_dir`` and ``measure_index`` are imported by other benchmarks.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lamflow.contract import MANIFEST, SHARD_PATTERN, SHARDS_DIR, SIZES, STATS, Record, safe_key
from lamflow.fileio import write_json_atomic

CLASSES = 10


def sample_name(number: int) -> str:
    """The recorded name of synthetic sample ``number``: a QVHighlights-style clip name, distinct per number."""
    vid = format(number * 0x9E3779B97F4A7C15 % (1 << 64), "016x")[:11]
    start = 2 * (number % 75)
    return f"{vid}_{start}.0_{start + 150}.0"


def _line_template() -> list[str]:
    """A manifest line as the extractor writes it, cut at its key, name, shard and source."""
    marks = ["@KEY@", "@NAME@", "@SHARD@", "@SOURCE@"]
    record = Record(marks[0], marks[3], "ok", shard=marks[2], counts={"audio": 1500, "text": 1, "video": 150},
                    dims={"audio": 64, "text": 512, "video": 512}, duration=150.0, original_name=marks[1], seconds=2.5)
    line = json.dumps(record.to_json(), sort_keys=True) + "\n"
    pieces = []
    for mark in marks:
        before, line = line.split(mark)
        pieces.append(before)
    return [*pieces, line]


def make_output_dir(path: Path, records: int, per_shard: int = 1000) -> Path:
    """An output directory of ``records`` samples in ``records / per_shard`` placeholder shards; returns ``path``."""
    path = Path(path)
    shards = path / SHARDS_DIR
    shards.mkdir(parents=True)
    template = _line_template()
    sizes = {}
    with open(path / MANIFEST, "w", encoding="utf-8") as manifest:
        for first in range(0, records, per_shard):
            shard = SHARD_PATTERN % (first // per_shard)
            (shards / shard).touch()
            sizes[shard] = min(per_shard, records - first)
            lines = []
            for number in range(first, first + sizes[shard]):
                name = sample_name(number)
                key = name.replace(".", "_") + "_mp4"  # safe_key(name + ".mp4") for these names, without its cost
                lines.append("".join((template[0], key, template[1], name, template[2], shard, template[3],
                                      f"/data/videos/{name}.mp4", template[4])))
            manifest.write("".join(lines))
    assert safe_key(sample_name(records - 1) + ".mp4") == key
    write_json_atomic(path / SIZES, sizes)
    write_json_atomic(path / STATS, {"inputs": records, "ok": records, "failed": 0, "shards": len(sizes)})
    return path


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def open_as_rank(path: Path, records: int, annotations: int, rank: int, ranks: int) -> dict:
    """What one training rank does before its first batch, timed, with its RSS before and after."""
    from lamflow.datasets.classification import ClassificationTask
    from lamflow.datasets.loader import LoaderConfig, StreamingLoader

    before = _peak_rss_mb()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # importing torch forks one
    started = time.perf_counter()
    step = max(1, records // annotations)
    labels = {sample_name(number): f"class{number % CLASSES}" for number in range(0, records, step)}
    loader = StreamingLoader(str(path), ClassificationTask(labels), LoaderConfig(streams=("video", "audio")),
                             rank=rank, world_size=ranks)
    # The build's reading processes, forked from this rank: holding its pages, they top what the import forked.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    readers = children if children > children_before else 0
    return {"seconds": time.perf_counter() - started, "rss_before_mb": before, "peak_rss_mb": _peak_rss_mb(),
            "readers_peak_rss_mb": readers, "items": sum(loader.shard_items), "batches": len(loader)}


def measure_index(path: Path, annotations: int = 10_000, ranks: int = 1) -> dict:
    """Open the shard set at ``path`` in ``ranks`` fresh processes at once (see the module docstring): the slowest
    rank's seconds, the largest peak RSS, the RSS before opening, and the items the ranks planned."""
    records = sum(json.loads((Path(path) / SIZES).read_text()).values())
    command = [sys.executable, __file__, "--open-as-rank", str(path), "--records", str(records),
               "--annotations", str(annotations), "--ranks", str(ranks)]
    processes = [subprocess.Popen([*command, "--rank", str(rank)], stdout=subprocess.PIPE, text=True)
                 for rank in range(ranks)]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"a rank failed (exit {process.returncode}); its output: {out}")
        results.append(json.loads(out))
    return {"seconds": round(max(r["seconds"] for r in results), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)),
            "rss_before_mb": round(max(r["rss_before_mb"] for r in results)),
            "readers_peak_rss_mb": round(max(r["readers_peak_rss_mb"] for r in results)),
            "items": results[0]["items"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="100000,1000000,10000000", help="comma-separated sample counts")
    parser.add_argument("--ranks", type=int, default=1, help="processes opening the shard set at once")
    parser.add_argument("--annotations", type=int, default=10_000, help="samples the task labels (joined by name)")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the output directories (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per N instead of lines")
    parser.add_argument("--open-as-rank", type=Path, help=argparse.SUPPRESS)  # one rank's open (a child process)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open_as_rank:
        print(json.dumps(open_as_rank(args.open_as_rank, int(args.records), args.annotations, args.rank, args.ranks)))
        return
    started = time.perf_counter()
    for records in (int(n) for n in args.records.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            written = time.perf_counter()
            path = make_output_dir(Path(folder) / "out", records, args.per_shard)
            manifest_gb = (path / MANIFEST).stat().st_size / 1e9
            write_seconds = time.perf_counter() - written
            first = measure_index(path, args.annotations, args.ranks)
            later = measure_index(path, args.annotations, args.ranks)
            index_mb = sum(p.stat().st_size for p in (path / "sample_index").iterdir()) / 1e6
            shutil.rmtree(path)
        result = {"records": records, "ranks": args.ranks, "manifest_gb": round(manifest_gb, 2),
                  "index_mb": round(index_mb), "write_s": round(write_seconds, 1),
                  **{f"first_{k}": v for k, v in first.items()}, **{f"later_{k}": v for k, v in later.items()}}
        print(json.dumps(result) if args.json else "  ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    print(f"wall time: {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

"""What a durable shard commit costs: the fsyncs of the tar, of its manifest records and of the shards folder.

Writes ``--shards`` shards of ``--samples`` samples (``--sample-kb`` KiB of float16 tokens each) through the
writer ``lamflow extract`` uses (OutputDir + ShardSink), in a folder on the disk to measure (``--dir``), and
times apart the sample writes (into the page cache, flushed per sample) and each commit: end the tar and fsync
it, append and fsync the records, sync the tar again (already clean), rename it, fsync the folder. Without
the fsyncs a commit is a truncate, a rename and a few KiB of writes, so most of its time is the price of
durability; that grows with what the page cache still holds of the shard: large shards pay for their bytes.

    python benchmarks/fsync_commit.py [--shards 10] [--samples 100] [--sample-kb 256] [--dir /path/on/the/disk] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lamflow.contract import Record
from lamflow.pipelines.manifest import OutputDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100, help="samples per shard")
    parser.add_argument("--sample-kb", type=int, default=256, help="KiB of tokens per sample")
    parser.add_argument("--dir", default=None, help="folder on the disk to measure (default: the temp folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    tokens = np.random.default_rng(0).standard_normal((args.sample_kb, 512)).astype(np.float16)  # 1 KiB a row
    write_ms, commit_ms = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        output = OutputDir(Path(folder) / "out", {"kind": "benchmark", "settings": {}, "texts": None})
        try:
            for shard in range(args.shards):
                sink = output.shard_sink(args.samples, 10**15)
                started = time.perf_counter()
                for index in range(args.samples):
                    key = f"s{shard:04d}_{index:05d}"
                    sample = {"__key__": key, "video.npy": tokens, "meta.json": {"source": key}}
                    sink.write(sample, Record(key, key, "ok"))
                write_ms.append(1000 * (time.perf_counter() - started))
                started = time.perf_counter()
                sink.close()
                commit_ms.append(1000 * (time.perf_counter() - started))
        finally:
            output.close()
    result = {
        "shards": args.shards, "samples_per_shard": args.samples, "shard_mb": round(args.samples * tokens.nbytes / 1e6, 1),
        "write_ms_per_shard": round(statistics.median(write_ms), 1),
        "commit_ms_median": round(statistics.median(commit_ms), 1), "commit_ms_max": round(max(commit_ms), 1),
        "commit_share": round(sum(commit_ms) / (sum(commit_ms) + sum(write_ms)), 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>20}: {value}")


if __name__ == "__main__":
    main()

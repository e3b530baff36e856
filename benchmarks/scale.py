"""Scale: what an output directory of 10^5-10^7 inputs costs before any work, and how fast clients can write.

For each ``--records`` N it writes a synthetic output directory in the format users have (one manifest line per
input as the extractor writes it, placeholder shards: benchmarks/loader_index.py's ``make_output_dir``), the
``extraction.json`` of a default ``lamflow extract`` run and a ``.txt`` list of the N inputs, then measures:

- **plan**: ``lamflow extract LIST --out DIR`` when every input is already done, as a user runs it (a fresh
  process: imports, opening the output, the plan over the list), wall seconds and peak RSS. "first" is the
  first open of a directory written before the record index existed (the index is built from the manifest);
  "later" is every open after it. Target (one partition of 10^7 inputs): <= 60 s, <= 2 GiB.
- **loader index**: a training rank opening the shard set (``StreamingLoader``, a task labelling 10^4 of the
  samples), first and later open, seconds and peak RSS per rank (benchmarks/loader_index.py's
  ``measure_index``). Target at 10^7: <= 60 s, <= 2 GiB per rank.
- **write ceiling** (once, not per N): samples/s and MB/s through ``ShardSink.write`` of a 150-s video's sample
  (1-fps 512-d video, 0.1-s 64-band audio, float16: ~0.48 MB), by 1 client and by 4 partitions' clients at once.

    python benchmarks/scale.py [--records 100000,1000000,10000000] [--dir DIR] [--write-samples 2000] [--json]

The 10^7 case needs ~4 GB of disk for its manifest and list (``--dir`` picks where; deleted afterwards).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loader_index import make_output_dir, measure_index, sample_name  # noqa: E402

from lamflow.contract import EXTRACTION, FORMAT, MANIFEST  # noqa: E402
from lamflow.fileio import write_json_atomic  # noqa: E402

VIDEO_SECONDS = 150


def write_inputs(path: Path, records: int) -> Path:
    """The list file naming the N inputs of ``make_output_dir``'s manifest (absolute paths, as users list them)."""
    with open(path, "w", encoding="utf-8") as handle:
        for first in range(0, records, 100_000):
            handle.write("".join(f"/data/videos/{sample_name(n)}.mp4\n" for n in range(first, min(first + 100_000, records))))
    return path


def write_run_record(out: Path) -> None:
    """The extraction.json of a default `lamflow extract` run, so the CLI resumes ``out`` as its own."""
    from lamflow.pipelines.extract import run_record
    from lamflow.pipelines.settings import ExtractSettings

    write_json_atomic(out / EXTRACTION, {"format": FORMAT, **run_record(ExtractSettings(), None)})


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall seconds and its own peak RSS (wait4's rusage: this child alone)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(command)} failed: {err.decode()[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "stdout": out.decode()}


def measure_plan(inputs: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "lamflow.cli", "extract", str(inputs), "--out", str(out), "--json", "--no-progress"]
    result = run_measured(command)
    summary = json.loads(result.pop("stdout"))
    assert summary["skipped_done"] == summary["inputs"] and summary["attempted"] == 0, summary
    return result | {"plan_s": summary["plan_seconds"]}


def _sample() -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    video = rng.standard_normal((VIDEO_SECONDS, 512)).astype(np.float16)
    audio = rng.standard_normal((VIDEO_SECONDS * 10, 64)).astype(np.float16)
    return {"video.npy": video, "video_ts.npy": np.arange(VIDEO_SECONDS, dtype=np.float32),
            "audio.npy": audio, "audio_ts.npy": np.arange(VIDEO_SECONDS * 10, dtype=np.float32) / 10,
            "meta.json": {"source": "/data/videos/x.mp4", "duration": float(VIDEO_SECONDS)}}


def write_client(folder: Path, samples: int) -> dict:
    """One client writing ``samples`` samples through ShardSink (what the extraction's client does per sample)."""
    from lamflow.pipelines.shards import ShardSink

    sample = _sample()
    committed = []
    started = time.perf_counter()
    with ShardSink(folder, 0, 1000, 10**9, on_commit=lambda shard, records: committed.append(shard)) as sink:
        for number in range(samples):
            sink.write({"__key__": f"s{number:08d}", **sample}, number)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"seconds": seconds, "bytes": size}


def measure_writes(folder: Path, clients: int, samples: int) -> dict:
    """``clients`` processes (partitions) writing at once: aggregate samples/s and MB/s."""
    command = [sys.executable, __file__, "--write-client"]
    processes = [subprocess.Popen([*command, str(folder / f"client{c}"), str(samples)], stdout=subprocess.PIPE, text=True)
                 for c in range(clients)]
    results = [json.loads(p.communicate()[0]) for p in processes]
    seconds = max(r["seconds"] for r in results)
    return {"clients": clients, "samples_per_s": round(clients * samples / seconds),
            "mb_per_s": round(sum(r["bytes"] for r in results) / seconds / 1e6),
            "sample_mb": round(results[0]["bytes"] / samples / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="100000,1000000,10000000", help="comma-separated input counts")
    parser.add_argument("--dir", type=Path, default=None, help="where the synthetic directories go (default: a temp dir)")
    parser.add_argument("--write-samples", type=int, default=2000, help="samples each writing client writes")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--write-client", nargs=2, help=argparse.SUPPRESS)  # one writing client (a child process)
    args = parser.parse_args()
    if args.write_client:
        folder = Path(args.write_client[0])
        folder.mkdir(parents=True)
        print(json.dumps(write_client(folder, int(args.write_client[1]))))
        return
    started = time.perf_counter()
    show = (lambda row: print(json.dumps(row), flush=True)) if args.json else \
        (lambda row: print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True))
    for records in (int(n) for n in args.records.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            made = time.perf_counter()
            out = make_output_dir(Path(folder) / "out", records)
            write_run_record(out)
            inputs = write_inputs(Path(folder) / "inputs.txt", records)
            row = {"records": records, "manifest_gb": round((out / MANIFEST).stat().st_size / 1e9, 2),
                   "made_s": round(time.perf_counter() - made)}
            for when in ("first", "later"):
                row |= {f"plan_{when}_{k}": v for k, v in measure_plan(inputs, out).items()}
            for when in ("first", "later"):
                row |= {f"index_{when}_{k}": v for k, v in measure_index(out).items() if k != "items"}
            show(row)
    for clients in (1, 4):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            show({"write": True, **measure_writes(Path(folder), clients, args.write_samples)})
    print(f"wall time: {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

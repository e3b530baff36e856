#!/usr/bin/env python
"""Extraction throughput: end to end through Dask (1 and 2 workers) vs a plain sequential loop, and the
bound set by the per-video decode+encode time.

    python benchmarks/extract.py                       # 12 x 20 s 320x240 videos, ViT-B-32-quickgelu
    python benchmarks/extract.py --clip-model lamflow-tiny --videos 8 --json

Figures (videos/s):
- bound: 1 / mean per-video featurize time, measured alone (one process, models loaded, torch on one
  thread like a Dask worker); W workers can at best reach W x bound;
- sequential: a plain loop in one process (load models once, featurize each file, torch's default
  threads) — what a script without Dask does;
- end to end: `run_extraction` over W worker processes, to the last shard on disk (decode, encode,
  transfer, shard writing, manifest): "cold" includes starting the embedded cluster, the workers'
  torch/open_clip imports and model loads (a fixed cost per run); "warm" starts with workers that have
  loaded the models (the steady state of a long run).
Targets: end to end >= 0.85 x bound x W, and with 2 workers >= 1.8 x sequential (on 2 cores).
CLIP weights are random (--pretrained none): speed does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_videos(folder: Path, count: int, duration: float, size: str, rate: int) -> list[Path]:
    """Test-pattern videos with a tone (lavfi testsrc2 + sine), varying the tone so files differ."""
    paths = []
    for i in range(count):
        path = folder / f"bench_{i:03d}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}",
             "-f", "lavfi", "-i", f"sine=frequency={300 + 40 * i}:sample_rate=44100:duration={duration}",
             "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
            check=True,
        )
        paths.append(path)
    return paths


def featurize_all(paths: list[Path], settings, threads: int | None) -> tuple[float, list[float]]:
    """(total seconds including the model load, per-video seconds) of a plain in-process loop."""
    import torch

    from lamflow.pipelines.featurize import featurize_video, load_encoders

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    clip, audio = load_encoders(settings)
    per_video = []
    for path in paths:
        t0 = time.perf_counter()
        featurize_video(str(path), path.stem, settings, clip, audio)
        per_video.append(time.perf_counter() - t0)
    return time.perf_counter() - start, per_video


def mean_task_seconds(out: Path) -> float:
    """Mean decode+encode seconds per video inside the workers (the manifest's ``seconds``): compared with
    the time alone it shows how much the workers were slowed by sharing the cores."""
    from lamflow.contract import MANIFEST, parse_manifest

    records, _ = parse_manifest(out / MANIFEST)
    return sum(r.seconds for r in records) / len(records)


def end_to_end(paths: list[Path], settings, workers: int, out: Path, warm: bool) -> float:
    """Seconds for ``run_extraction`` over ``paths``.

    cold: the embedded LocalCluster, as `lamflow extract --workers W` runs (cluster start, worker
    imports of torch/open_clip, model loads, then the work). warm: a cluster whose workers already
    loaded the models — the steady state of a long run, where start-up is amortised.
    """
    from distributed import Client, LocalCluster

    from lamflow.pipelines.extract import run_extraction
    from lamflow.pipelines.worker import cached_encoders

    # open_clip warns through the root logger, which gives it a handler: keep Dask's INFO lines out of the figures
    logging.getLogger("distributed").setLevel(logging.ERROR)
    sources = [str(p) for p in paths]
    if warm:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            client.run(cached_encoders, settings)
            start = time.perf_counter()
            summary = run_extraction(sources, out, settings, scheduler=cluster.scheduler_address, progress=False)
            seconds = time.perf_counter() - start
    else:
        start = time.perf_counter()
        summary = run_extraction(sources, out, settings, workers=workers, progress=False)
        seconds = time.perf_counter() - start
    if summary.ok != len(paths):
        raise RuntimeError(f"{summary.failed} videos failed: {summary.failures}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per video")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--rate", type=int, default=25, help="frame rate of the generated videos")
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu")
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    import torch

    from lamflow.pipelines.settings import ExtractSettings

    settings = ExtractSettings(clip_model=args.clip_model, fps=args.fps)
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="lamflow-bench-") as tmp:
        paths = make_videos(Path(tmp), args.videos, args.duration, args.size, args.rate)
        seq_seconds, _ = featurize_all(paths, settings, threads=None)
        _, alone = featurize_all(paths, settings, threads=1)
        torch.set_num_threads(default_threads)
        runs = {(mode, w): end_to_end(paths, settings, w, Path(tmp) / f"{mode}{w}", warm=mode == "warm")
                for mode in ("cold", "warm") for w in args.workers}
        task_seconds = {(mode, w): mean_task_seconds(Path(tmp) / f"{mode}{w}") for mode, w in runs}

    n = len(paths)
    bound = 1.0 / (sum(alone) / n)
    sequential = n / seq_seconds
    figures = {
        "videos": n, "duration_s": args.duration, "size": args.size, "clip_model": args.clip_model, "fps": args.fps,
        "cpu_cores": os.cpu_count(), "torch_default_threads": default_threads,
        "per_video_seconds_alone": round(sum(alone) / n, 3),
        "bound_videos_per_s": round(bound, 3),
        "sequential_videos_per_s": round(sequential, 3),
        "end_to_end": {
            f"{mode}_{w}_workers": {
                "workers": w,
                "seconds": round(s, 2),
                "videos_per_s": round(n / s, 3),
                "vs_bound_x_workers": round((n / s) / (bound * w), 3),
                "vs_sequential": round((n / s) / sequential, 3),
                "mean_task_seconds": round(task_seconds[mode, w], 3),
            }
            for (mode, w), s in runs.items()
        },
        "targets": {"vs_bound_x_workers": 0.85, "vs_sequential_with_2_workers": 1.8},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{n} videos x {args.duration:g} s {args.size} @ {args.rate} fps, {args.clip_model} (random weights), "
          f"{args.fps:g} frame/s; {os.cpu_count()} cores")
    print(f"bound (decode+encode alone, 1 thread): {figures['per_video_seconds_alone']:.3f} s/video = {bound:.3f} videos/s")
    print(f"sequential loop ({default_threads} torch threads, incl. model load): {sequential:.3f} videos/s")
    for name, row in figures["end_to_end"].items():
        print(f"end to end {name.replace('_', ' ')}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s) = "
              f"{row['vs_bound_x_workers']:.2f} x bound x workers (target >= 0.85), "
              f"{row['vs_sequential']:.2f} x sequential" + (" (target >= 1.8)" if row["workers"] == 2 else "")
              + f"; {row['mean_task_seconds']:.2f} s per video inside a worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`lamflow import-h5`: a MAD-style HDF5 feature file -> lamflow shards."""
from __future__ import annotations

import argparse
import sys

from lamflow.pipelines.settings import DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-h5",
        help="turn a MAD-style HDF5 feature file (one T x D dataset per video) into lamflow shards",
        description=(
            "Import precomputed features: FILE.h5 holds one dataset per video id (a T x D float array sampled "
            "at --fps, e.g. MAD's CLIP ViT-B/32 frames at 5 fps). Each dataset becomes one sample of the shard "
            "format `lamflow extract` writes, with the features as the --stream array and timestamps index/fps; "
            "the other stream is an empty (0, 0) array with a note in meta.json. Video ids are turned into safe "
            "keys (the original id is kept in meta.json and used again by export-h5). Re-running resumes; "
            "different --stream/--fps/--dtype for the same --out is an error (use --overwrite)."
        ),
    )
    parser.add_argument("h5", metavar="FILE.h5", help="MAD-style HDF5 file: one T x D dataset per video id")
    parser.add_argument("--out", required=True, help="output directory (shards/, manifest.jsonl, ...)")
    parser.add_argument("--stream", choices=("video", "audio"), default="video",
                        help="which stream the features are (default video)")
    parser.add_argument("--fps", type=float, required=True,
                        help="feature rows per second in the file (e.g. 5 for MAD's CLIP features)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype to store (default: keep the file's float16/float32; other types become float32)")
    parser.add_argument("--shard-samples", type=int, default=1000, help="videos per shard at most (default 1000)")
    parser.add_argument("--shard-bytes", type=float, default=1e9, help="start a new shard at this size (default 1e9)")
    parser.add_argument("--overwrite", action="store_true", help="delete OUT's previous shards and records first")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.pipelines.h5io import import_h5
    from lamflow.pipelines.manifest import OutputDirError, SettingsMismatchError

    try:
        summary = import_h5(args.h5, args.out, stream=args.stream, fps=args.fps, dtype=args.dtype,
                            shard_samples=args.shard_samples, shard_bytes=int(args.shard_bytes),
                            overwrite=args.overwrite)
    except (SettingsMismatchError, OutputDirError, ValueError, FileNotFoundError) as error:
        print(f"lamflow import-h5: error: {error}", file=sys.stderr)
        return 2
    print(f"{summary.out_dir}: imported {summary.imported} of {summary.datasets} datasets "
          f"({summary.skipped_done} already done) into {len(summary.shards_written)} shard(s) in {summary.seconds:.1f} s")
    return 0

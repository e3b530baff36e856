"""`lamflow import-h5`: a MAD-style HDF5 feature or language file -> lamflow shards."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from lamflow.pipelines.settings import DTYPES
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES

SHOWN_FAILURES = 5  # the manifest holds every failure; a file of NaN datasets must not flood the terminal


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-h5",
        help="turn a MAD-style HDF5 file (one T x D dataset per video, or n_words x D per sentence) into lamflow shards",
        description=(
            "Import precomputed features. --stream video/audio: FILE.h5 holds one dataset per video id (a T x D "
            "float array sampled at --fps, e.g. MAD's CLIP ViT-B/32 frames at 5 fps). Each dataset becomes one "
            "sample of the shard format `lamflow extract` writes, with the features as the --stream array and "
            "timestamps index/fps; the other stream is an empty (0, 0) array with a note in meta.json. "
            "--stream text: FILE.h5 holds one dataset per sentence id (n_words x D token features, e.g. MAD's "
            "CLIP_language_tokens_features.h5; no --fps). Each becomes a text-only sample (text.npy 1 x n_words x D, "
            "meta.json texts [{id, tokens}]); point data.train_texts/data.val_texts at the output to give queries "
            "their tokens by sentence id. A dataset of more than 512 rows is refused as text (it is frames), and a "
            "file whose datasets look like sentences gets a warning when imported as video/audio. Ids are turned "
            "into safe keys, distinct ones for distinct ids (the original id is kept in meta.json and used again by "
            "export-h5). A dataset holding NaN or inf is recorded as a failure of its id. Re-running resumes; "
            "different --stream/--fps/--dtype for the same --out is an error (use --overwrite)."
        ),
    )
    parser.add_argument("h5", metavar="FILE.h5", help="MAD-style HDF5 file: one 2-D dataset per video id or sentence id")
    add_import_options(parser, "datasets", "in the file, required for video/audio (e.g. 5 for MAD's CLIP frames)")
    parser.set_defaults(func=handle)


def add_import_options(parser: argparse.ArgumentParser, items: str, fps_help: str) -> None:
    """The options every feature-file import takes (import-h5, import-npz); ``items`` names what it imports."""
    parser.add_argument("--out", required=True, help="output directory (shards/, manifest.jsonl, ...)")
    parser.add_argument("--stream", choices=("video", "audio", "text"), default="video",
                        help=f"which stream the {items} are (default video; text for query/sentence token features)")
    parser.add_argument("--fps", type=float, default=None, help=f"feature rows per second {fps_help}; not for text")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype to store (default: keep the file's float16/float32; other types become float32)")
    parser.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES,
                        help=f"{items} per shard at most (default {DEFAULT_SHARD_SAMPLES})")
    parser.add_argument("--shard-bytes", type=float, default=DEFAULT_SHARD_BYTES,
                        help=f"start a new shard at this size (default {DEFAULT_SHARD_BYTES:.0e})")
    parser.add_argument("--overwrite", action="store_true", help="delete OUT's previous shards and records first")


def handle(args: argparse.Namespace) -> int:
    from lamflow.pipelines.h5io import import_h5

    return run_import(args, "import-h5", import_h5, args.h5, "e.g. 5 for MAD's CLIP frames", "datasets")


def run_import(args: argparse.Namespace, command: str, importer: Callable[..., Any], source: str, fps_example: str,
               items: str) -> int:
    """What every feature-file import command does with its parsed options (import-h5, import-npz): the
    --fps rule, the import, one line of summary and the first failures. ``items`` names what was imported."""
    from lamflow.pipelines.feature_files import ImportOptions
    from lamflow.pipelines.manifest import OutputDirError, SettingsMismatchError

    if args.stream != "text" and args.fps is None:
        print(f"lamflow {command}: error: --fps is required for --stream {args.stream} (feature rows per second, "
              f"{fps_example})", file=sys.stderr)
        return 2
    try:
        options = ImportOptions(stream=args.stream, fps=args.fps, dtype=args.dtype, shard_samples=args.shard_samples,
                                shard_bytes=int(args.shard_bytes), overwrite=args.overwrite)
        summary = importer(source, args.out, options)
    except (SettingsMismatchError, OutputDirError, ValueError, FileNotFoundError) as error:
        print(f"lamflow {command}: error: {error}", file=sys.stderr)
        return 2
    for warning in summary.warnings:
        print(f"lamflow {command}: warning: {warning}", file=sys.stderr)
    print(f"{summary.out_dir}: imported {summary.imported} of {summary.datasets} {items} ({summary.skipped_done} "
          f"already done, {len(summary.failures)} failed) into {len(summary.shards_written)} shard(s) in {summary.seconds:.1f} s")
    for name, error in list(summary.failures.items())[:SHOWN_FAILURES]:
        print(f"  failed: {name}: {error}")
    if len(summary.failures) > SHOWN_FAILURES:
        print(f"  all {len(summary.failures)} failures are in {summary.out_dir}/manifest.jsonl")
    return 0  # failed items are recorded in the manifest, not a failed import

"""`lamflow export`: datasets of lamflow shards -> the feature files other code reads (--layout h5 | moment_detr)."""
from __future__ import annotations

import argparse
import sys

from lamflow.errors import LamflowError

LAYOUTS = ("moment_detr", "h5")
STREAM_CHOICES = ("video", "audio", "image", "text")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write shards as feature files: moment_detr's npz folders, or a MAD-style HDF5 file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write the features of one or more datasets (output folders of `lamflow extract` / `import-*`, a\n"
            "partitioned tree read as one) as files other code reads.\n\n"
            "--layout moment_detr: OUT is a folder of feature folders, the layout of moment_detr's\n"
            "StartEndDataset (also read by QD-DETR, CG-DETR and Lighthouse): <folder>/{vid}.npz with key\n"
            "'features' (T x D float32) per video, and <folder>/qid{qid}.npz with 'last_hidden_state' (L x D) and\n"
            "'pooler_output' (D) per query. open_clip features go to clip_features/ and clip_text_features/,\n"
            "an imported folder back to its own name (slowfast_features/), anything else to <stream>_features/\n"
            "(audio_features/). Every stream the samples hold is written unless --stream picks some. Only\n"
            "`extract --preset moment_detr` gives the features published checkpoints were trained on; others\n"
            "are written with a warning.\n\n"
            "--layout h5: OUT is one HDF5 file of one --stream (default video), one dataset per video named by\n"
            "its original id (attributes key, source, fps), or for text one n_words x D dataset per text id:\n"
            "MAD's layouts. `lamflow export-h5` is this layout's older name."
        ),
        epilog=(
            "examples:\n"
            "  lamflow export qv_feats --layout moment_detr --out features\n"
            "  lamflow export qv_feats qv_slowfast --layout moment_detr --out features --stream video\n"
            "  lamflow export feats --layout h5 --out video_feats.h5"
        ),
    )
    parser.add_argument("datasets", nargs="+", metavar="DIR", help="output folder(s) of extract / import-h5 / import-npz")
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="moment_detr (npz folders) or h5 (one file)")
    add_export_options(parser)
    parser.set_defaults(func=handle)


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """--out and --stream, shared with the export-h5 alias."""
    parser.add_argument("--out", required=True,
                        help="moment_detr: the features folder to write into; h5: the file to write (replaced)")
    parser.add_argument("--stream", action="append", choices=STREAM_CHOICES,
                        help="a stream to export (repeatable for moment_detr; default all of them there, video for h5; "
                             "image: an image run's patch tokens, h5 only)")


def handle(args: argparse.Namespace) -> int:
    if args.layout == "h5":
        from lamflow.pipelines.h5io import export_h5

        streams = args.stream or ["video"]
        if len(args.datasets) != 1 or len(streams) != 1:
            raise LamflowError("--layout h5 writes one stream of one dataset per file; give one DIR and one --stream")
        count = export_h5(args.datasets[0], args.out, stream=streams[0])
        print(f"wrote {count} datasets ({streams[0]}) to {args.out}")
        return 0
    from lamflow.pipelines.npzio import export_npz

    summary = export_npz(args.datasets, args.out, args.stream)
    for warning in summary.warnings:
        print(f"lamflow {args.command}: warning: {warning}", file=sys.stderr)
    written = ", ".join(f"{folder}/ {count}" for folder, count in sorted(summary.files.items()))
    skipped = "".join(f"; {count} sample(s) without {stream} features" for stream, count in sorted(summary.skipped.items()))
    print(f"wrote {sum(summary.files.values())} files to {args.out}: {written}{skipped}")
    return 0

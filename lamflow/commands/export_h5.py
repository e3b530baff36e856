"""`lamflow export-h5`: one stream of lamflow shards -> a MAD-style HDF5 file."""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-h5",
        help="write one stream of an output directory's shards to a MAD-style HDF5 file",
        description=(
            "Write the --stream array (video or audio; image for an image run) of every sample in DIR's shards to FILE.h5, one dataset "
            "per video named by its original id (the h5 id of an import, the file name stem of an extracted "
            "video; the sample key where two samples share a name), with attributes key, source and fps. "
            "--stream text writes one n_words x D dataset per text id instead (the sentence ids of "
            "`import-h5 --stream text`, the query ids of `extract --texts`), MAD's language-file layout. "
            "The file is written under a temporary name and renamed when complete."
        ),
    )
    parser.add_argument("path", metavar="DIR", help="output directory of `lamflow extract` or `lamflow import-h5`")
    parser.add_argument("--out", required=True, help="HDF5 file to write (replaced if it exists)")
    parser.add_argument("--stream", choices=("video", "audio", "image", "text"), default="video",
                        help="stream to export (default video; image: an image run's patch tokens; text: one dataset per text id)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.pipelines.h5io import export_h5

    try:
        count = export_h5(args.path, args.out, stream=args.stream)
    except (ValueError, FileNotFoundError) as error:
        print(f"lamflow export-h5: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {count} datasets ({args.stream}) to {args.out}")
    return 0

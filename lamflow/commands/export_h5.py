"""`lamflow export-h5`: the older name of `lamflow export --layout h5` (one stream -> a MAD-style HDF5 file)."""
from __future__ import annotations

import argparse

from lamflow.commands.export import add_export_options, handle


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-h5",
        help="write one stream of an output directory's shards to a MAD-style HDF5 file (= export --layout h5)",
        description=(
            "The same as `lamflow export DIR --layout h5`: write the --stream array (video or audio; image for an "
            "image run) of every sample in DIR's shards (a partitioned tree read as one) to FILE.h5, one dataset "
            "per video named by its original id (the h5 id of an import, the file name stem of an extracted "
            "video; the sample key where two samples share a name), with attributes key, source and fps. "
            "--stream text writes one n_words x D dataset per text id instead (the sentence ids of "
            "`import-h5 --stream text`, the query ids of `extract --texts`), MAD's language-file layout. "
            "The file is written under a temporary name and renamed when complete."
        ),
    )
    parser.add_argument("datasets", nargs=1, metavar="DIR", help="output directory of `lamflow extract` or `lamflow import-h5`")
    add_export_options(parser)
    parser.set_defaults(func=handle, layout="h5")

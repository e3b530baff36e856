"""`lamflow import-npz`: a moment_detr-style npz feature folder ({vid}.npz or qid{qid}.npz) -> lamflow shards."""
from __future__ import annotations

import argparse

from lamflow.commands.import_h5 import add_import_options, run_import


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-npz",
        help="turn a moment_detr-style feature folder ({vid}.npz with 'features', or qid{qid}.npz) into lamflow shards",
        description=(
            "Import a downloaded feature folder of the layout moment_detr, QD-DETR, CG-DETR and Lighthouse read. "
            "--stream video/audio: DIR holds one {vid}.npz per video with key 'features', a T x D array of rows at "
            "--fps (0.5 for their 2-s clips), or a bare {vid}.npy array (QD-DETR's pann_features). Each becomes one "
            "sample named {vid}, the features as the --stream array with timestamps index/fps, so QVHighlights "
            "annotations join it by vid. --stream text: DIR holds one qid{qid}.npz per query with "
            "'last_hidden_state' (L x D) and optionally 'pooler_output' (D); each becomes a text-only sample with "
            "id {qid} (text.npy 1 x L x D, text_pooled.npy 1 x D); point data.train_texts/data.val_texts at the "
            "output. Every file is checked from its headers before anything is written: a missing key, a file of "
            "the other kind, another feature width than the rest, an empty or non-numeric array, or a pickled file "
            "(read with allow_pickle=False) is one error line. A file holding NaN or inf is recorded as a failure "
            "of its id. Re-running resumes; other --stream/--fps/--dtype for the same --out is an error (use "
            "--overwrite)."
        ),
        epilog=(
            "examples (moment_detr's features.tar.gz):\n"
            "  lamflow import-npz features/clip_features --out qv_clip --stream video --fps 0.5\n"
            "  lamflow import-npz features/clip_text_features --out qv_text --stream text"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="DIR", help="feature folder: {vid}.npz / {vid}.npy files, or qid{qid}.npz files")
    add_import_options(parser, "files", "of the files, required for video/audio (0.5 for moment_detr's 2-s clips)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.pipelines.npzio import import_npz

    return run_import(args, "import-npz", import_npz, args.folder, "0.5 for moment_detr's 2-s clips", "files")

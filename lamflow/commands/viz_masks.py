"""`lamflow viz-masks`: render saved LAM masks as PNG heatmaps."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz-masks",
        help="render saved Learnable Attention Masks as PNG heatmaps, one per layer",
        description=(
            "Render a .npz written by lamflow.lam.save_masks (one mask per layer for a batch of samples) as "
            "PNG heatmaps, one file per layer (per-head masks: one panel per head). Rows are queries, "
            "columns keys; white lines separate the modality blocks (text, video, audio, ...), which are "
            "labelled on both axes; padded positions are grey."
        ),
    )
    parser.add_argument("masks", help="MASKS.npz written by lamflow.lam.save_masks")
    parser.add_argument("--out", required=True, help="directory for the PNGs (created if missing)")
    parser.add_argument("--sample", type=int, default=0, help="which sample of the saved batch to render (default 0)")
    parser.add_argument("--layers", type=int, nargs="+", help="layer indices to render (default: all)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.lam.render import render_masks

    for path in render_masks(args.masks, args.out, sample=args.sample, layers=args.layers):
        print(path)
    return 0

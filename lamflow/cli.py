"""The ``lamflow`` command line: one entry point, one module per subcommand.

Each module in ``lamflow.commands`` exposes ``register(subparsers)``, which adds its parser and sets
``func``. Command modules import heavy libraries (torch, dask, open_clip) inside their handlers, so
``lamflow --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lamflow import __version__

# Order is the order shown by --help: the data path, top to bottom.
COMMAND_MODULES = [
    "make_demo_data",
    "extract",
    "import_h5",
    "export_h5",
    "inspect",
    "train",
    "predict",
    "eval",
    "viz_masks",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamflow",
        description=(
            "lamflow turns videos (or extracted feature files) into time-stamped token shards and "
            "trains transformers with a multi-layer Learnable Attention Mask (LAM) on them."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lamflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"lamflow.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

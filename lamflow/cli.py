"""The ``lamflow`` command line: one entry point, one module per subcommand.

Each module in ``lamflow.commands`` exposes ``register(subparsers)``, which adds its parser and sets
``func``. Command modules import heavy libraries (torch, dask, open_clip) inside their handlers, so
``lamflow --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from lamflow import __version__
from lamflow.errors import LamflowError

# Order is the order shown by --help: the data path, top to bottom.
COMMAND_MODULES = [
    "make_demo_data",
    "extract",
    "import_h5",
    "export_h5",
    "inspect",
    "configs",
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


def _report(command: str, message: str) -> None:
    """Print one error line; under torchrun only rank 0 speaks, so N ranks do not print N copies."""
    if os.environ.get("RANK", "0") == "0":
        print(f"lamflow {command}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. User errors (:class:`LamflowError`) become one line and exit status 2;
    Ctrl-C becomes one line and 130; anything else is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LamflowError as error:
        _report(args.command, str(error))
        return 2
    except KeyboardInterrupt:
        _report(args.command, "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

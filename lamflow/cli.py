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
    "import_npz",
    "export",
    "export_h5",
    "inspect",
    "configs",
    "train",
    "predict",
    "eval",
    "ablate",
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


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that key=value overrides may also follow options
    (``predict CKPT --out p.jsonl data.val_shards=x``), which argparse alone cannot split once the
    positional list has been consumed."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extra and isinstance(overrides, list) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = overrides + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. User errors (:class:`LamflowError`, and a path the system cannot read or write)
    become one line and exit status 2; Ctrl-C becomes one line and 130; anything else is a bug and keeps
    its traceback. Under torchrun only the rank that failed first reports (see :func:`_failed_first`)."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _failed_first():
            _report(args.command, "interrupted")
        return 130
    except Exception as error:
        message = _user_error(error)
        if not _failed_first():
            return 1 if message is None else 2  # another rank failed first: its report is the job's
        if message is None:
            raise  # a bug: the traceback is the report
        _report(args.command, message)
        return 2


def _user_error(error: Exception) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug."""
    if isinstance(error, LamflowError):
        return str(error)
    # A path that cannot be read or written (no such folder, no permission, a full disk) is the user's to
    # fix, whatever command met it; an OSError about no path is a bug.
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return None


def _failed_first() -> bool:
    """Whether this process reports its failure: always, except under torchrun, where the rank that failed
    first reports (tagged with its rank) and the others, failing with it or because of it (a peer gone
    from a collective), stop quietly, so that N ranks do not print N copies or N tracebacks."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return True
    from lamflow.train.distributed import claim_failure  # torch: only under torchrun, where it is loaded anyway

    return claim_failure()


def _report(command: str, message: str) -> None:
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    print(f"lamflow {command}: error: {rank}{message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""`lamflow configs`: list the shipped training configs, print one, or copy it to edit."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "configs",
        help="list, show or copy the training configs shipped with lamflow",
        description=(
            "The training configs shipped with lamflow (train/configs/*.yaml in a checkout, the same files in an "
            "install). `lamflow train NAME` accepts a name from this list as well as a path. A config may start "
            "from another with `base: NAME.yaml`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  lamflow configs list\n  lamflow configs show qvhighlights_lam\n"
               "  lamflow configs copy qvhighlights_lam my_run.yaml",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="names and paths of the shipped configs")
    show = actions.add_parser("show", help="print a shipped config")
    show.add_argument("name", help="config name, e.g. qvhighlights_lam")
    copy = actions.add_parser("copy", help="copy a shipped config to a file to edit")
    copy.add_argument("name", help="config name, e.g. qvhighlights_lam")
    copy.add_argument("dest", help="file to write (must not exist)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.errors import LamflowError
    from lamflow.train.config import resolve_config_path, shipped_configs

    if args.action == "list":
        for name, path in shipped_configs().items():
            print(f"{name:<24} {path}")
        return 0
    path = resolve_config_path(args.name)
    if args.action == "show":
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    dest = Path(args.dest)
    if dest.exists():
        raise LamflowError(f"{dest} exists; choose another file name")
    shutil.copyfile(path, dest)
    print(f"wrote {dest}")  # a `base: NAME.yaml` line in it still finds the shipped base by name
    return 0

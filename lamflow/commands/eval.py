"""``lamflow eval``: score prediction files with the official metrics, one subcommand per task (each task's
``EvalCommand`` in ``lamflow.train.tasks`` holds its arguments and its scoring)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lamflow.errors import LamflowError
from lamflow.fileio import atomic_open
from lamflow.train.tasks import TASKS
from lamflow.train.tasks.spec import EvalCommand


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = [spec.eval_command for spec in TASKS.values()]
    parser = subparsers.add_parser(
        "eval",
        help=f"score a prediction file ({', '.join(command.name for command in commands)})",
        description=(
            "Score a prediction file against its annotations and print the result as one JSON object. "
            "Inputs that cannot be scored (wrong or missing ids, malformed lines, empty captions) stop "
            "with one error line naming file:line and the fix; the exit status is then 2."
        ),
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for command in commands:
        task_parser = tasks.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(task_parser)
        task_parser.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
        task_parser.set_defaults(func=lambda args, command=command: _score(command, args))


def _score(command: EvalCommand, args: argparse.Namespace) -> int:
    """Print (and optionally write) the command's result, then its note on stderr; unscorable input is one
    error line and exit status 2."""
    try:
        result = command.evaluate(args)
    except LamflowError as error:
        print(f"lamflow eval {command.name}: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=4)
    print(text)
    if args.out is not None:
        with atomic_open(args.out) as handle:
            handle.write(text + "\n")
    message = command.note(result)
    if message:
        print(f"lamflow eval {command.name}: note: {message}", file=sys.stderr)
    return 0

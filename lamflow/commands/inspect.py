"""`lamflow inspect`: summarise an extraction output directory or a shard file."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="summarise shards, streams, shapes, dtypes and failures of an output directory",
        description=(
            "Summarise an output directory of `lamflow extract` or `lamflow import-h5` (or one shard .tar): "
            "number of shards, samples and bytes; per stream (video, audio, text, their timestamps) the dtypes, "
            "the trailing shapes and the min/mean/max length; notes such as missing audio; failed inputs from "
            "the manifest; and consistency problems (duplicate keys, sizes.json disagreeing with the shards, "
            "unfinished shards of an interrupted run). Reads only array headers, not array data."
        ),
    )
    parser.add_argument("path", metavar="DIR", help="output directory (with shards/ and manifest.jsonl) or a shard .tar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.pipelines.inspect import format_report, inspect_output

    report = inspect_output(args.path)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0

#!/usr/bin/env python
"""The partitions of a partitioned extraction that are not finished, in sbatch's --array syntax, so that
resubmitting cluster/extract_array.sbatch runs only those:

    sbatch --array=$(python cluster/unfinished_partitions.py /data/feats 16) cluster/extract_array.sbatch 16 ...

A partition is finished when its last run ended with nothing left to do: its stats.json holds that run
(``last_run``, written when a run ends, never by a killed one) and the run accounted for every input of
the partition (extracted, failed, or done before). Prints nothing, and says so, when every partition is
finished. Inputs added to the sources since are not seen here: submit the whole array then (a finished
partition's task is a quick no-op resume).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lamflow.contract import PARTITIONS_DIR, STATS, output_dirs, partition_dir_name
from lamflow.errors import LamflowError

PROG = "lamflow unfinished-partitions"  # how it names itself in messages, as `lamflow <command>: error: ...` does


def finished(partition: Path) -> bool:
    try:
        last_run = json.loads((partition / STATS).read_text()).get("last_run")
    except FileNotFoundError:
        return False
    if not last_run:
        return False
    accounted = sum(last_run[field] for field in ("ok", "failed", "skipped_done", "skipped_failed"))
    return accounted >= last_run["inputs"]


def unfinished(out: Path, count: int) -> list[int]:
    """The partition numbers (0-based) of ``out`` partitioned ``count`` ways that are not finished."""
    names = {partition_dir_name(k, count) for k in range(count)}
    for path in output_dirs(out):  # [out] before the first partition; refuses a tree of several counts
        if path != out and path.name not in names:
            raise LamflowError(f"{path} is not a partition of {count}: give the N the tree was extracted with")
    return [k for k in range(count) if not finished(out / PARTITIONS_DIR / partition_dir_name(k, count))]


def array_spec(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8`` (sbatch --array)."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, usage="python cluster/unfinished_partitions.py OUT N",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out of the partitioned extraction")
    parser.add_argument("count", type=int, metavar="N", help="its number of partitions (--partition K/N)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"N must be at least 1, got {args.count}")
    try:
        numbers = unfinished(args.out, args.count)
    except LamflowError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if numbers:
        print(array_spec(numbers))
    else:
        print(f"{PROG}: every partition of {args.out} is finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

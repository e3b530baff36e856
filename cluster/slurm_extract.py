#!/usr/bin/env python
"""Run `lamflow extract` on a SLURM cluster: dask-jobqueue submits worker jobs, this process is the
client (it writes the shards, so run it where --out is writable, e.g. a login or head node).

    pip install -r requirements/cluster.txt          # dask-jobqueue (optional dependency)
    python cluster/slurm_extract.py --jobs 16 --queue cpu --cores 8 --memory 32GB -- \\
        /data/videos --out /data/feats --pretrained openai
    python cluster/slurm_extract.py --jobs 8 --queue gpu --gpus --cores 8 --memory 64GB -- \\
        /data/videos --out /data/feats --pretrained openai

Everything after ``--`` is passed to `lamflow extract` unchanged; this script adds ``--scheduler`` (and
for GPU jobs ``--task-resources GPU=1 --device cuda``).

Surviving the cluster: --jobs worker jobs are kept queued or running while videos remain: workers
finish their running videos and retire before their job's walltime (--lifetime, --lifetime-stagger;
worker_retirement.py) and every job that ends (workers retired, walltime, preemption, node failure) is
replaced (slurm_jobs.py); a job cancelled with scancel, or one that failed, is not. The worker job is
checked with ``sbatch --test-only`` first, so a request the cluster refuses (e.g. --gpus where there is no
gpu gres) is one clear error. If no worker has been connected for --worker-timeout seconds (a `lamflow
extract` option, default 600), the run stops with SLURM's account of its jobs. Every finished video is
kept: running the same command again continues.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import dask

from slurm_jobs import WorkerJobs, parse_walltime, preflight

RETIREMENT = Path(__file__).resolve().with_name("worker_retirement.py")  # workers read it: a shared filesystem
# A retiring worker's process exits some seconds after it retired (its nanny waits for it): the least time
# an automatic --lifetime leaves before the walltime.
MIN_MARGIN = 15
PROG = "lamflow slurm-extract"  # how it names itself in messages, as `lamflow <command>: error: ...` does


def _seconds_or(*words: str):
    """An argparse type: a whole number of seconds, or one of ``words``."""

    def parse_value(text: str) -> str | int:
        if text in words:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds or one of {', '.join(words)}, got {text!r}") from None

    return parse_value


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROG, usage="python cluster/slurm_extract.py [options] -- SOURCE ... --out OUT [lamflow extract options]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job_options = parser.add_argument_group("jobs")
    job_options.add_argument("--jobs", "--max-jobs", type=int, default=4,
                      help="worker jobs kept queued or running while videos remain; one that ends is replaced "
                           "(default 4)")
    job_options.add_argument("--queue", help="SLURM partition (#SBATCH -p)")
    job_options.add_argument("--account", help="SLURM account (#SBATCH -A)")
    job_options.add_argument("--walltime", default="04:00:00", help="walltime per job (default 04:00:00)")
    job_options.add_argument("--cores", type=int, default=8, help="CPU cores per job (default 8)")
    job_options.add_argument("--memory", default="32GB", help="memory per job (default 32GB)")
    job_options.add_argument("--gpus", action="store_true",
                      help="one GPU per job (--gres=gpu:1): its worker advertises Dask resource GPU=--tasks-per-gpu "
                           "and every video task asks for GPU=1")
    job_options.add_argument("--tasks-per-gpu", type=int, default=2,
                      help="videos a GPU worker handles at once (default 2: one decodes on the CPU while the "
                           "other encodes on the GPU)")
    job_options.add_argument("--job-name", default="lamflow-extract", help="SLURM job name of the workers (default lamflow-extract)")
    job_options.add_argument("--prologue", action="append", default=[],
                      help="shell line run before each worker starts, e.g. 'module load cuda' (repeatable); "
                           "workers run this Python (the project's venv) without activation")
    job_options.add_argument("--log-directory", help="folder for the worker jobs' output files (default: SLURM's, the "
                      "directory this script runs in)")
    workers = parser.add_argument_group("workers")
    workers.add_argument("--lifetime", default="auto", type=_seconds_or("auto", "none"),
                         help="seconds after its job's start at which a worker stops taking videos, finishes the ones "
                              "it runs and retires gracefully, so it never meets the walltime (its job ends and is "
                              "replaced); 'auto' = walltime minus 10%% (at least 15 s, at most 10 min), 'none' = "
                              "work until the walltime ends the job (the videos it was encoding are encoded again "
                              "elsewhere)")
    workers.add_argument("--lifetime-stagger", default="auto", type=_seconds_or("auto"),
                         help="seconds of random spread around --lifetime, so workers do not all retire at once "
                              "(auto = half the walltime margin)")
    workers.add_argument("--lifetime-restart", action="store_true",
                         help="instead of retiring, restart the worker process every --lifetime seconds of its own "
                              "(dask's --lifetime-restart, for leaky native libraries); the walltime then ends the "
                              "job, which is replaced")
    workers.add_argument("--local-directory", default="${TMPDIR:-/tmp}", help="worker scratch space (default $TMPDIR or /tmp)")
    workers.add_argument("--interface", help="network interface the scheduler and workers use, e.g. ib0 (default: dask's choice)")
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if split == len(argv):
        parser.error("put the `lamflow extract` arguments after `--`, e.g. -- /data/videos --out /data/feats")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return args, argv[split + 1:]


def lifetime_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(job script lines, ``dask worker`` options) retiring each worker before its job's walltime (--lifetime)."""
    if args.lifetime == "none":
        return [], []
    walltime = parse_walltime(args.walltime)
    margin = min(600, max(MIN_MARGIN, walltime // 10))
    lifetime = walltime - margin if args.lifetime == "auto" else args.lifetime
    stagger = margin // 2 if args.lifetime_stagger == "auto" else args.lifetime_stagger
    if args.lifetime_restart:  # periodic restarts count from each worker process's start: dask's own lifetime
        return [], ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s", "--lifetime-restart"]
    # The retirement moment is fixed when the job starts, before Python's imports (see worker_retirement.py).
    # `dask worker --preload` replaces the configured preloads, so they are passed along with it.
    preloads = [*dask.config.get("distributed.worker.preload", default=[]), str(RETIREMENT)]
    return ([f"export LAMFLOW_RETIRE_AT=$(( $(date +%s) + {lifetime} )) LAMFLOW_RETIRE_STAGGER={stagger}"],
            [option for preload in preloads for option in ("--preload", shlex.quote(preload))])


def main(argv: list[str] | None = None) -> int:
    args, extract_args = parse(sys.argv[1:] if argv is None else argv)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print(f"{PROG}: error: dask-jobqueue is not installed: pip install -r requirements/cluster.txt",
              file=sys.stderr)
        return 2
    from lamflow.cli import build_parser
    from lamflow.commands import extract as extract_command
    from lamflow.errors import LamflowError

    extract = build_parser().parse_args(["extract", *extract_args])  # usage errors before any job is submitted
    jobs = WorkerJobs(args.jobs)
    try:
        prologue, lifetime = lifetime_options(args)
        job = dict(queue=args.queue, account=args.account, walltime=args.walltime, cores=args.cores,
                   memory=args.memory, job_name=args.job_name, job_script_prologue=[*args.prologue, *prologue],
                   local_directory=args.local_directory, log_directory=args.log_directory, interface=args.interface,
                   python=sys.executable, job_cls=jobs.job_class(), scheduler_options={"dashboard_address": ":0"})
        if args.gpus:
            # One worker process per GPU job: every process of a multi-process job would see the same GPUs.
            cluster = SLURMCluster(
                **job, processes=1, job_extra_directives=["--gres=gpu:1"],
                worker_extra_args=["--resources", f"GPU={args.tasks_per_gpu}", "--nthreads", str(args.tasks_per_gpu),
                                   *lifetime],
            )
            extract.task_resources, extract.device = {"GPU": 1.0}, "cuda"
        else:
            # Single-threaded worker processes, as the embedded LocalCluster uses: decode and torch never share a GIL.
            cluster = SLURMCluster(**job, processes=args.cores, worker_extra_args=lifetime)
        with cluster:
            print(f"{PROG}: {preflight(cluster.job_script())}", file=sys.stderr)
            jobs.start(cluster)
            print(f"{PROG}: Dask scheduler {cluster.scheduler_address}; dashboard {cluster.dashboard_link}; "
                  f"{args.jobs} job(s) of {args.cores} core(s), walltime {args.walltime}", file=sys.stderr)
            extract.scheduler = cluster.scheduler_address
            return extract_command.handle(extract, cluster_status=jobs.status)
    except LamflowError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

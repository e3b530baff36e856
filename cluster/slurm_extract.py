#!/usr/bin/env python
"""Run `lamflow extract` on a SLURM cluster: dask-jobqueue submits worker jobs, this process is the
client (it writes the shards, so run it where --out is writable, e.g. a login or head node).

    pip install -r requirements/cluster.txt          # dask-jobqueue (optional dependency)
    python cluster/slurm_extract.py --jobs 16 --queue cpu --cores 8 --memory 32GB -- \
        /data/videos --out /data/feats --pretrained openai
    python cluster/slurm_extract.py --jobs 8 --queue gpu --gpus --cores 8 --memory 64GB -- \
        /data/videos --out /data/feats --pretrained openai

Everything after ``--`` is passed to `lamflow extract` unchanged; this script adds ``--scheduler`` (and
for GPU jobs ``--task-resources GPU=1 --device cuda``). Re-running resumes, so a walltime that ends
the run early is harmless: submit again.
"""
from __future__ import annotations

import argparse
import sys


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (one Dask worker per GPU job, "
                        "--cores single-threaded workers per CPU job)")
    parser.add_argument("--queue", help="SLURM partition (#SBATCH -p)")
    parser.add_argument("--account", help="SLURM account (#SBATCH -A)")
    parser.add_argument("--walltime", default="04:00:00", help="walltime per job (default 04:00:00)")
    parser.add_argument("--cores", type=int, default=8, help="CPU cores per job (default 8)")
    parser.add_argument("--memory", default="32GB", help="memory per job (default 32GB)")
    parser.add_argument("--gpus", action="store_true",
                        help="one GPU per job (--gres=gpu:1): its worker advertises Dask resource GPU=--tasks-per-gpu "
                             "and every video task asks for GPU=1")
    parser.add_argument("--tasks-per-gpu", type=int, default=2,
                        help="videos a GPU worker handles at once (default 2: one decodes on the CPU while the "
                             "other encodes on the GPU)")
    parser.add_argument("--prologue", action="append", default=[],
                        help="shell line run before each worker starts, e.g. 'source /opt/lamflow/.venv/bin/activate' "
                             "(repeatable)")
    parser.add_argument("--local-directory", default="$TMPDIR", help="worker scratch space (default $TMPDIR)")
    if "--" not in argv:
        parser.error("put the `lamflow extract` arguments after `--`, e.g. -- /data/videos --out /data/feats")
    split = argv.index("--")
    return parser.parse_args(argv[:split]), argv[split + 1:]


def main(argv: list[str] | None = None) -> int:
    args, extract_args = parse(sys.argv[1:] if argv is None else argv)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print("dask-jobqueue is not installed: pip install -r requirements/cluster.txt", file=sys.stderr)
        return 2
    from lamflow.cli import main as lamflow_main

    job = dict(queue=args.queue, account=args.account, walltime=args.walltime, cores=args.cores, memory=args.memory,
               job_script_prologue=args.prologue, local_directory=args.local_directory)
    if args.gpus:
        # One worker process per GPU job: every process of a multi-process job would see the same GPUs.
        cluster = SLURMCluster(
            **job, processes=1, job_extra_directives=["--gres=gpu:1"],
            worker_extra_args=["--resources", f"GPU={args.tasks_per_gpu}", "--nthreads", str(args.tasks_per_gpu)],
        )
        extract_args += ["--task-resources", "GPU=1", "--device", "cuda"]
    else:
        # Single-threaded worker processes, as the embedded LocalCluster uses: decode and torch never share a GIL.
        cluster = SLURMCluster(**job, processes=args.cores)
    with cluster:
        cluster.scale(jobs=args.jobs)
        print(f"Dask scheduler {cluster.scheduler_address}; dashboard {cluster.dashboard_link}", file=sys.stderr)
        return lamflow_main(["extract", *extract_args, "--scheduler", cluster.scheduler_address])


if __name__ == "__main__":
    sys.exit(main())

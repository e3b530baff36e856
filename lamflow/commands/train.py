"""`lamflow train`: train a LAM model on shards from a YAML config (one process or under torchrun)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LAM model on extracted shards (QVHighlights moments, classification, captioning, audio description)",
        description=(
            "Train the multimodal LAM model described by CONFIG (a YAML file, or the name of a shipped config: "
            "`lamflow configs list`; sections data, model, optim, run, every field documented in train/config.py or, for a task's fields, train/tasks/). "
            "Fields can be overridden with dotted key=value pairs, e.g. optim.lr=1e-3 model.encoder.mask=none. "
            "Runs as a single process, or data-parallel under `torchrun --nproc_per_node N -m lamflow train ...` "
            "(gloo on CPU, NCCL on GPU). Writes RUN.out_dir/metrics.jsonl, checkpoints/step-*.pt, "
            "predictions/val-step-*.jsonl (official format) and config.yaml. "
            "The same command starts a run and continues it: when RUN.out_dir has checkpoints, training resumes "
            "from the newest readable one (model, optimizer, schedule, loader position, RNG) if its config matches "
            "(optim.max_steps, optim.lr, optim.warmup_steps, run.amp and how often the run reports may change: "
            "RESUMABLE_FIELDS in lamflow/train/checkpoint.py); otherwise it starts at step 0. SIGTERM or SIGUSR1 "
            "(scancel, requeue, a walltime warning) stops every rank within a micro-batch or validation batch, "
            "saves a checkpoint of the last finished step and exits with status 128+signal, so a requeued job "
            "continues where it stopped."
        ),
    )
    parser.add_argument("config", help="CONFIG.yaml with data/model/optim/run sections, or a shipped config's name")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.max_steps=100")
    parser.add_argument(
        "--resume", action="store_true",
        help="fail unless run.out_dir has a checkpoint to continue from (without --resume: continue when there "
             "is one, start at step 0 when there is none)",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.train.config import load_config
    from lamflow.train.trainer import train

    config = load_config(args.config, args.overrides)
    _notices_to_stderr()
    result = train(config, require_checkpoint=args.resume)
    stopped_by = result.get("stopped_by")
    if stopped_by is None:
        return 0
    # A checkpoint was saved: the conventional "ended by a signal" status tells scripts the run is unfinished.
    return 128 + (signal.Signals[stopped_by] if stopped_by in signal.Signals.__members__ else signal.SIGTERM)


def _notices_to_stderr() -> None:
    """Show the trainer's notices ("resumed from ... at step N", "stopped by SIGTERM ...") on stderr, where a
    cluster job's log collects them; Python's default shows warnings only."""
    logger = logging.getLogger("lamflow")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("lamflow train: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

"""`lamflow train`: train a LAM model on shards from a YAML config (one process or under torchrun)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LAM model on extracted shards (QVHighlights moments, classification, captioning, audio description)",
        description=(
            "Train the multimodal LAM model described by CONFIG (a YAML file, or the name of a shipped config: "
            "`lamflow configs list`; sections data, model, optim, run, every field documented in train/config.py). "
            "Fields can be overridden with dotted key=value pairs, e.g. optim.lr=1e-3 model.encoder.mask=none. "
            "Runs as a single process, or data-parallel under `torchrun --nproc_per_node N -m lamflow train ...` "
            "(gloo on CPU, NCCL on GPU). Writes RUN.out_dir/metrics.jsonl, checkpoints/step-*.pt, "
            "predictions/val-step-*.jsonl (official format) and config.yaml."
        ),
    )
    parser.add_argument("config", help="CONFIG.yaml with data/model/optim/run sections, or a shipped config's name")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.max_steps=100")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in run.out_dir (model, optimizer, schedule, loader position, RNG)",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.train.config import load_config
    from lamflow.train.trainer import train

    config = load_config(args.config, args.overrides)

    train(config, resume=args.resume)
    return 0

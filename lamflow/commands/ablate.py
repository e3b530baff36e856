"""`lamflow ablate`: one training config over variants x seeds, summarised with intervals."""
from __future__ import annotations

import argparse
from pathlib import Path


def seeds_argument(text: str) -> tuple[int, ...]:
    """argparse type of --seeds: distinct integers >= 0, comma-separated."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds expects distinct integers >= 0 like 0,1,2, got {text!r}")
    return seeds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="train a config over variants x seeds and report mean ± sd and paired differences to vanilla",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train CONFIG (a YAML file or a shipped config's name, plus key=value overrides shared by every run)\n"
            "once per variant and seed, with the same data and step budget. Variants are the product of the\n"
            "--vary axes; variants with model.encoder.mask=none collapse into one baseline, 'vanilla' (added if\n"
            "no axis yields it). A seed sets run.seed: model init, dropout and data order (shards unchanged).\n"
            "Runs live in OUT/runs/VARIANT/seed-S; finished runs are reused and interrupted ones resume, so the\n"
            "same command continues an ablation. Scores are each run's final validation record. Writes\n"
            "OUT/ablation.json (every number), ablation.md and ablation.html (mean ± sd over seeds, and the paired\n"
            "per-seed difference to vanilla with a bootstrap 95% interval) and ablation.png."
        ),
        epilog=(
            "examples:\n"
            "  lamflow ablate demo data.train_shards=feats data.val_shards=feats data.train_annotations=train.jsonl \\\n"
            "      data.val_annotations=val.jsonl --vary model.encoder.mask=none,single,multi --seeds 0,1,2 --out abl\n"
            "  lamflow ablate demo ... --vary model.encoder.mask_gate=none,sigmoid,softplus \\\n"
            "      --vary model.encoder.combine=mul,add --vary model.encoder.generator=fixed,dynamic --out gates"
        ),
    )
    parser.add_argument("config", help="CONFIG.yaml or a shipped config's name (lamflow configs list)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides shared by every run")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="an axis of variants, e.g. model.encoder.mask=none,single,multi (repeatable)")
    parser.add_argument("--seeds", type=seeds_argument, default=(0, 1, 2), help="seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--out", type=Path, required=True, help="ablation directory (re-use it to continue)")
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes per run (default 1: plain process)")
    parser.add_argument("--metrics", default=None,
                        help="metrics shown in the table and plot, comma-separated (default: the task's headline "
                             "metrics; ablation.json has all)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.train.ablation import Ablation, expand_variants, parse_axis, run_ablation, summarize
    from lamflow.train.ablation_report import write_ablation_report
    from lamflow.train.config import load_config
    from lamflow.train.tasks import get_task

    variants = expand_variants([parse_axis(axis) for axis in args.vary])
    ablation = Ablation(args.config, tuple(args.overrides), tuple(variants), args.seeds, args.out, args.nproc)
    print(f"{len(variants)} variants ({', '.join(v.name for v in variants)}) x {len(args.seeds)} seeds")
    results = run_ablation(ablation)
    summary = summarize(results, variants)
    task = load_config(args.config, args.overrides).data.task
    metrics = args.metrics.split(",") if args.metrics else list(get_task(task).headline_metrics)
    known = {metric for stats in summary["variants"].values() for metric in stats}
    metrics = [m for m in metrics if m in known] or sorted(known)
    notes = [f"config {args.config} with {' '.join(args.overrides) or 'no overrides'}",
             f"seeds {', '.join(map(str, args.seeds))} (run.seed: model init, dropout, data order; shards unchanged)",
             "cells: mean ± sd over seeds; Δ: mean paired per-seed difference to vanilla [bootstrap 95% interval]"]
    report = write_ablation_report(args.out, summary, metrics, notes,
                                   {"config": args.config, "overrides": list(args.overrides), "seeds": args.seeds,
                                    "variants": {v.name: list(v.overrides) for v in variants}})
    print(report.read_text(encoding="utf-8"))
    return 0

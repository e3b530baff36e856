"""`lamflow demo`: the main job, from generated videos to a LAM-vs-vanilla report."""
from __future__ import annotations

import argparse
from pathlib import Path

from lamflow.commands.ablate import seeds_argument

# What the two demo models learn: the names of lamflow.demo.tasks.TASKS, restated here because importing it
# loads torch, which `lamflow --help` must not wait for (tests/test_demo.py checks that they agree).
TASKS = ("qvhighlights", "captioning")

DESCRIPTION = """\
Run lamflow's main job end to end on this machine, no GPU or network needed:

  1. render a corpus of short audio-visual videos with ffmpeg (lamflow make-demo-data): a query's
     moment is where a coloured shape is on screen WHILE a tone of a given pitch beeps, and the beeps
     are shorter than one video frame interval, so the model needs both modalities at their own rate;
  2. extract CLIP frame and query tokens and 0.1-s audio tokens into WebDataset shards on a Dask
     LocalCluster (lamflow extract);
  3. train the multi-layer LAM model and the vanilla-attention model under torchrun, once per seed, same data
     and step budget (lamflow train);
  4. evaluate both, and two trivial baselines, with the official QVHighlights metrics (lamflow eval);
  5. write OUT/report: metrics_*.json, summary.md / summary.html, curves.png, masks/layer_XX.png.

With --task captioning, stages 3-5 train and score (lamflow eval captioning: BLEU, METEOR, ROUGE-L,
CIDEr) caption models instead, once per seed, on the corpus's captions ("a red shape with a high tone,
then the tone turns low": the first colour seen while a pitch is heard, and what changes next), from the
same shards, against the most-frequent-training-caption baseline; their rows join the report of the same
--out folder.

Every stage reuses finished work: re-running skips rendered videos and extracted shards, resumes an
interrupted training run from its last checkpoint and reuses finished runs. CLIP weights are RANDOM
unless --pretrained is given (the demo says so in its output and report).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job end to end: generated videos -> shards -> LAM vs vanilla -> report",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo"),
                        help="working and report directory (default: ./demo); re-use it to resume")
    parser.add_argument("--quick", action="store_true",
                        help="small corpus (12+4 videos of 20 s), the tiny CLIP model and 150 steps: a few minutes")
    parser.add_argument("--clip-model", default=None,
                        help="open_clip model for frames and queries (default ViT-B-32-quickgelu; lamflow-tiny with --quick)")
    parser.add_argument("--pretrained", default="none",
                        help="CLIP weights: none (random, the offline default), openai (needs the hub or its cache) "
                             "or a local checkpoint path")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers for extraction (default 2)")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes per model (default 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per model (default: train/configs/demo.yaml, 150 with --quick; "
                             "captioning: train/configs/demo_captioning.yaml, 200 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus (default 0)")
    parser.add_argument("--seeds", type=seeds_argument, default=(0, 1, 2),
                        help="training seeds, comma-separated: each model is trained once per seed and the report "
                             "shows mean ± sd and LAM - vanilla with a 95%% interval (default 0,1,2)")
    parser.add_argument("--task", choices=TASKS, default="qvhighlights",
                        help="what the two models learn: moment retrieval + highlights (default) or captioning")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.demo.run import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, quick=args.quick, clip_model=args.clip_model, pretrained=args.pretrained,
                        workers=args.workers, nproc=args.nproc, steps=args.steps, seed=args.seed, seeds=args.seeds,
                        task=args.task))
    return 0

"""`lamflow demo --task captioning`: caption models on the demo corpus, from the same shards as the moment
retrieval demo (its corpus and extraction stages run first and reuse whatever is done).

    train    torchrun, N processes: the LAM caption model, then the vanilla one (same data, seed and budget;
             train/configs/demo_captioning.yaml)
    predict  `lamflow predict` of each final checkpoint over the validation videos: {"vid", "caption"} lines
    evaluate `lamflow eval captioning` (pycocoevalcap) on both models and on the most-frequent-caption baseline

Each stage is the command a user would type, run as a subprocess; finished runs and predictions are reused.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lamflow.train
from lamflow.demo.baselines import CAPTION_BASELINES
from lamflow.demo.corpus import CorpusResult
from lamflow.demo.run import VARIANTS, DemoConfig, run, stage

CAPTION_CONFIG = Path(lamflow.train.__file__).parent / "configs" / "demo_captioning.yaml"
# Optimizer steps per model with --quick: the decoder first learns the captions' wording, and only after
# ~150 steps which colour and pitch the video holds.
QUICK_STEPS = 300


def run_captioning(config: DemoConfig, corpus: CorpusResult, features: Path, out: Path,
                   timings: dict[str, float]) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Stages 3-5 of the captioning demo; returns every model's and baseline's metrics and the run folders."""
    from lamflow.fileio import read_jsonl, write_jsonl_atomic

    runs: dict[str, Path] = {}
    checkpoints: dict[str, Path] = {}
    for index, (variant, mask) in enumerate(VARIANTS.items(), start=1):
        stage(f"3/6 train ({index}/{len(VARIANTS)}): {variant} caption model (mask={mask}), "
              f"torchrun with {config.nproc} processes")
        t0 = time.perf_counter()
        runs[variant] = out / "runs" / f"captioning_{variant}"
        checkpoints[variant] = train_captioner(config, mask, features, corpus, runs[variant])
        timings[f"train {variant}"] = time.perf_counter() - t0

    stage("4/6 predict: captions of the validation videos (lamflow predict)")
    t0 = time.perf_counter()
    report_dir = out / "report" / "captioning"
    predictions = {variant: predict_captions(checkpoint, features, runs[variant] / "predictions" / f"val-{checkpoint.stem}.jsonl")
                   for variant, checkpoint in checkpoints.items()}
    vids = [line["vid"] for line in read_jsonl(corpus.val_captions)]
    for name, make in CAPTION_BASELINES.items():
        predictions[name] = write_jsonl_atomic(report_dir / "baselines" / f"{name}.jsonl",
                                               make(read_jsonl(corpus.train_captions), vids))
    timings["predict"] = time.perf_counter() - t0

    stage("5/6 evaluate: caption metrics (lamflow eval captioning)")
    t0 = time.perf_counter()
    metrics = {name: evaluate_captions(corpus.val_captions, path, report_dir / f"metrics_{name}.json")
               for name, path in predictions.items()}
    timings["evaluate"] = time.perf_counter() - t0
    return metrics, runs


def train_captioner(config: DemoConfig, mask: str, features: Path, corpus: CorpusResult, run_dir: Path) -> Path:
    """Train one caption model under torchrun unless its final checkpoint exists; returns that checkpoint."""
    from lamflow.train.checkpoint import checkpoint_path, latest_checkpoint
    from lamflow.train.config import load_config

    overrides = [
        f"data.train_shards={features}", f"data.train_captions={corpus.train_captions}",
        f"data.val_captions={corpus.val_captions}", f"model.encoder.mask={mask}", f"run.out_dir={run_dir}",
        f"run.seed={config.seeds[0]}",
    ]
    steps = config.steps or (QUICK_STEPS if config.quick else None)
    if steps:
        overrides.append(f"optim.max_steps={steps}")
    final = checkpoint_path(run_dir / "checkpoints", load_config(CAPTION_CONFIG, overrides).optim.max_steps)
    if final.exists():
        print(f"reusing {final}", flush=True)
        return final
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config.nproc}",
               "-m", "lamflow", "train", str(CAPTION_CONFIG), *overrides]
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        print(f"resuming from {latest_checkpoint(run_dir / 'checkpoints')}", flush=True)
        command.append("--resume")
    run(command)
    return final


def predict_captions(checkpoint: Path, features: Path, out: Path) -> Path:
    """`lamflow predict` of the validation videos unless ``out`` exists (it is named after the checkpoint)."""
    if out.exists():
        print(f"reusing {out}", flush=True)
        return out
    run([sys.executable, "-m", "lamflow", "predict", str(checkpoint), "--split", "val", "--out", str(out),
         f"data.val_shards={features}"], quiet=True)
    return out


def evaluate_captions(ground_truth: Path, predictions: Path, out: Path) -> dict[str, Any]:
    """`lamflow eval captioning` in a subprocess, exactly as a user runs it; returns its metrics."""
    run([sys.executable, "-m", "lamflow", "eval", "captioning", "--gt", str(ground_truth), "--pred", str(predictions),
         "--out", str(out)], quiet=True)
    return json.loads(out.read_text(encoding="utf-8"))

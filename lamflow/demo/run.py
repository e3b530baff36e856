"""`lamflow demo`: the main job end to end, stage by stage, reusing every stage that is already done.

    corpus   ffmpeg renders short audio-visual videos + QVHighlights annotations + captions (lamflow.demo.corpus)
    extract  Dask LocalCluster: ffmpeg decode -> CLIP frame/text tokens + log-mel audio tokens -> shards
    train    torchrun, N processes: the multi-layer LAM model and the vanilla model, once per seed (same data
             and budget; the seed sets model init, dropout and data order), through ``lamflow ablate``'s runner;
             each run predicts the validation split at its last step
    evaluate `lamflow eval TASK` on every run's predictions and on the task's trivial baselines
    report   metrics JSON, summary.md/.html (mean ± sd over seeds, LAM - vanilla with a bootstrap 95%
             interval), training curves, LAM mask heatmaps of a validation item

``--task`` picks what the models learn (lamflow.demo.tasks): moment retrieval (the default) or captioning,
from the same corpus and shards, so a second task in the same folder reuses them; its rows join the report.

Training and evaluation run as real subprocesses (`torchrun ... -m lamflow train`, `lamflow eval`), exactly
the commands a user would type, so the demo exercises the same paths as a cluster job.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lamflow.contract import MANIFEST
from lamflow.demo.config import DEMO_VARIANTS, DemoConfig
from lamflow.demo.corpus import CorpusResult, build_corpus
from lamflow.demo.tasks import TASKS, DemoTask
from lamflow.train.ablation import Ablation, run_ablation

# Videos per shard: several shards so 2 ranks split them exactly (the loader deals whole shards).
SHARD_SAMPLES = 8
CORPUS_DIR, FEATURES_DIR, REPORT_DIR, MASKS_DIR = "corpus", "features", "report", "masks"
STAGES = 5


def stage(number: int, title: str) -> None:
    print(f"\n=== {number}/{STAGES} {title}", flush=True)


def run_demo(config: DemoConfig) -> Path:
    """Run every stage into ``config.out``; returns the report directory."""
    started = time.perf_counter()
    task = TASKS[config.task]
    out = Path(config.out).resolve()
    timings: dict[str, float] = {}
    random_weights = config.pretrained == "none"
    if random_weights:
        print("NOTE: CLIP weights are RANDOM (no --pretrained given): video and text tokens are features of an "
              "untrained network. The task is still learnable; pass --pretrained openai or a checkpoint path "
              "for real CLIP features.", flush=True)

    stage(1, "corpus: rendering videos and annotations with ffmpeg")
    t0 = time.perf_counter()
    corpus = build_corpus(config.corpus, out / CORPUS_DIR, progress=lambda line: print(line, flush=True))
    print(f"{corpus.videos_generated} videos rendered, {corpus.videos_reused} reused", flush=True)
    timings["corpus"] = time.perf_counter() - t0

    stage(2, f"extract: {config.model_name} frame/text tokens + audio tokens, {config.workers} Dask workers")
    t0 = time.perf_counter()
    features = extract_features(config, corpus, out / FEATURES_DIR)
    timings["extract"] = time.perf_counter() - t0

    stage(3, f"train: the LAM and the vanilla {task.name} model x seeds {', '.join(map(str, config.seeds))}, "
             f"torchrun with {config.nproc} processes")
    t0 = time.perf_counter()
    ablation = train_models(config, task, corpus, features, out)
    timings["train"] = time.perf_counter() - t0

    stage(4, f"evaluate: the validation predictions of every run and the trivial baselines (lamflow eval {task.name})")
    t0 = time.perf_counter()
    report_dir = out / REPORT_DIR
    scores = evaluate_runs(ablation, task, corpus, report_dir / task.folder)
    timings["evaluate"] = time.perf_counter() - t0

    stage(5, "report: summary, training curves, LAM mask heatmaps")
    from lamflow.demo.report import write_report

    first = {variant.name: ablation.run_dir(variant, config.seeds[0]) for variant in ablation.variants}
    masks = (lam_masks(first["lam"], report_dir / MASKS_DIR) if task.renders_masks
             else sorted((report_dir / MASKS_DIR).glob("layer_*.png")))
    info = {
        "corpus": dataclasses.asdict(config.corpus),
        "clip_model": config.model_name,
        "pretrained": config.pretrained,
        "random_clip_weights": random_weights,
        "train_processes": config.nproc,
        "extraction_workers": config.workers,
        "seeds": list(config.seeds),
        "seconds": {**{k: round(v, 1) for k, v in timings.items()}, "total": round(time.perf_counter() - started, 1)},
    }
    summary = write_report(report_dir, task.name, scores, first, masks, info)
    print(summary.read_text(encoding="utf-8"), flush=True)
    print(f"report: {report_dir}", flush=True)
    return report_dir


def train_models(config: DemoConfig, task: DemoTask, corpus: CorpusResult, features: Path, out: Path) -> Ablation:
    """Train (or reuse, or resume) the LAM and the vanilla model once per seed, into
    out/[task folder/]runs/MODEL/seed-S; returns what was run."""
    steps = config.steps or (task.quick_steps if config.quick else None)
    overrides = [*task.data(config, corpus, features), *([f"optim.max_steps={steps}"] if steps else [])]
    ablation = Ablation(str(task.config), tuple(overrides), DEMO_VARIANTS, tuple(config.seeds), out / task.folder,
                        config.nproc)
    run_ablation(ablation, say=lambda line: print(line, flush=True))
    return ablation


def evaluate_runs(ablation: Ablation, task: DemoTask, corpus: CorpusResult,
                  metrics_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """`lamflow eval` of every run's final validation predictions and of the task's baselines (no training, no
    seed: one score each, filed under the first seed); returns {model: {seed: its result file}}."""
    from lamflow.fileio import write_jsonl_atomic
    from lamflow.train.trainer import predictions_file

    steps = ablation.validate()
    truth = task.ground_truth(corpus)
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in ablation.variants:
        for seed in ablation.seeds:
            predictions = predictions_file(ablation.run_dir(variant, seed), steps)
            scores.setdefault(variant.name, {})[seed] = evaluate(
                task.name, truth, predictions, metrics_dir / f"metrics_{variant.name}_seed{seed}.json")
    for name, rows in task.baselines(corpus).items():
        baseline = write_jsonl_atomic(metrics_dir / "baselines" / f"{name}.jsonl", rows)
        scores[name] = {ablation.seeds[0]: evaluate(task.name, truth, baseline, metrics_dir / f"metrics_{name}.json")}
    return scores


def extract_features(config: DemoConfig, corpus: CorpusResult, out: Path) -> Path:
    """`lamflow extract` as a library call (resumes: finished videos are skipped)."""
    from lamflow.pipelines.extract import run_extraction
    from lamflow.pipelines.settings import ExtractSettings

    settings = ExtractSettings(clip_model=config.model_name, pretrained=config.pretrained)
    summary = run_extraction([str(corpus.videos_dir)], out, settings, workers=config.workers,
                             shard_samples=SHARD_SAMPLES, texts=corpus.texts)
    print(f"{summary.ok} videos extracted, {summary.skipped_done} already done, {summary.failed} failed", flush=True)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} demo videos failed to extract: see {out / MANIFEST}")
    return out


def evaluate(task: str, ground_truth: Path, predictions: Path, out: Path) -> dict[str, Any]:
    """`lamflow eval TASK` in a subprocess, exactly as a user runs it; returns its metrics."""
    run([sys.executable, "-m", "lamflow", "eval", task, "--gt", str(ground_truth),
         "--pred", str(predictions), "--out", str(out)], quiet=True)
    return json.loads(out.read_text(encoding="utf-8"))


def lam_masks(run_dir: Path, out_dir: Path) -> list[Path]:
    """Heatmaps of the trained LAM model's per-layer masks on the first validation item."""
    from lamflow.lam import render_masks
    from lamflow.train.checkpoint import latest_checkpoint
    from lamflow.train.masks import checkpoint_masks

    saved = checkpoint_masks(latest_checkpoint(run_dir / "checkpoints"), out_dir / "val_item0.npz")
    return render_masks(saved, out_dir)


def run(command: list[str], quiet: bool = False) -> None:
    """Run a stage's subprocess with the demo's environment; its output streams to the console."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL if quiet else None)
    if result.returncode:
        raise RuntimeError(f"demo stage failed (exit {result.returncode}): {' '.join(command)}")

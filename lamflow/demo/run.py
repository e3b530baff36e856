"""`lamflow demo`: the main job end to end, stage by stage, reusing every stage that is already done.

    corpus   ffmpeg renders short audio-visual videos + QVHighlights annotations + captions (lamflow.demo.corpus)
    extract  Dask LocalCluster: ffmpeg decode -> CLIP frame/text tokens + log-mel audio tokens -> shards
    train    torchrun, N processes: the multi-layer LAM model and the vanilla model, once per seed (same data
             and budget; the seed sets model init, dropout and data order), through ``lamflow ablate``'s runner
    evaluate `lamflow eval qvhighlights` on every run and on two trivial baselines
    report   metrics JSON, summary.md/.html (mean ± sd over seeds, LAM - vanilla with a bootstrap 95%
             interval), training curves, LAM mask heatmaps of a validation item

``--task captioning`` runs the same corpus and extraction stages (so it reuses the shards of a moment
retrieval demo in the same folder), then trains, predicts and evaluates caption models instead
(``lamflow.demo.captioning``); its rows join the same report.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lamflow.train
from lamflow.demo.baselines import BASELINES
from lamflow.demo.corpus import CorpusConfig, CorpusResult, build_corpus
from lamflow.train.ablation import Ablation, Variant, run_ablation

DEMO_CONFIG = Path(lamflow.train.__file__).parent / "configs" / "demo.yaml"
# The two models compared: identical but for the attention mask.
VARIANTS = {"lam": "multi", "vanilla": "none"}
DEMO_VARIANTS = tuple(Variant(name, (f"model.encoder.mask={mask}",), "vanilla") for name, mask in VARIANTS.items())
# Videos per shard: several shards so 2 ranks split them exactly (the loader deals whole shards).
SHARD_SAMPLES = 8
# CLIP text tokens a demo query fills at most (its templated queries take 11): the text stream's fixed length.
QUERY_TOKENS = 16


@dataclass(frozen=True)
class DemoConfig:
    """What `lamflow demo` runs; the defaults are the README's main job (<= 15 min on 2 CPU cores)."""

    out: Path = Path("demo")
    quick: bool = False  # a small corpus and a short training run, for tests and smoke checks
    clip_model: str | None = None  # None: ViT-B-32-quickgelu, or the tiny test model with quick
    pretrained: str = "none"  # "none" (random CLIP weights), "openai" or a local checkpoint path
    workers: int = 2  # Dask workers for extraction
    nproc: int = 2  # torchrun processes per model
    steps: int | None = None  # optimizer steps per model; None: the task's demo config's (or the quick size)
    seed: int = 0  # the corpus's
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds: each model is trained once per seed (captioning: the first)
    task: str = "qvhighlights"  # or "captioning": caption models on the same corpus and shards

    @property
    def corpus(self) -> CorpusConfig:
        if self.quick:
            return CorpusConfig(train_videos=12, val_videos=4, duration=20, duration_jitter=2, seed=self.seed)
        return CorpusConfig(seed=self.seed)

    @property
    def layout(self) -> list[str]:
        """Overrides giving every stream a fixed length that holds the corpus's longest video, and a fixed
        generator that width: the layout the defaults' ablation compared every variant on, in which a fixed
        generator's mask column j means the same stream and position in every batch (README: choosing the
        defaults)."""
        from lamflow.pipelines.audio_tokens import hop_count
        from lamflow.pipelines.video_decode import frame_count
        from lamflow.pipelines.settings import ExtractSettings

        settings, longest = ExtractSettings(), self.corpus.duration + self.corpus.duration_jitter
        lengths = {"text": QUERY_TOKENS, "video": frame_count(longest, settings.fps),
                   "audio": hop_count(round(longest * settings.sample_rate), round(settings.audio_hop * settings.sample_rate))}
        return [f"data.loader.fixed_lengths={json.dumps(lengths)}", f"model.encoder.max_len={sum(lengths.values())}"]

    @property
    def model_name(self) -> str:
        return self.clip_model or ("lamflow-tiny" if self.quick else "ViT-B-32-quickgelu")

    @property
    def max_steps(self) -> int | None:
        return self.steps or (150 if self.quick else None)


def stage(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_demo(config: DemoConfig) -> Path:
    """Run every stage into ``config.out``; returns the report directory."""
    started = time.perf_counter()
    out = Path(config.out).resolve()
    timings: dict[str, float] = {}
    random_weights = config.pretrained == "none"
    if random_weights:
        print("NOTE: CLIP weights are RANDOM (no --pretrained given): video and text tokens are features of an "
              "untrained network. The task is still learnable; pass --pretrained openai or a checkpoint path "
              "for real CLIP features.", flush=True)

    stages = 6 if config.task == "captioning" else 5
    stage(f"1/{stages} corpus: rendering videos and annotations with ffmpeg")
    t0 = time.perf_counter()
    corpus = build_corpus(config.corpus, out / "corpus", progress=lambda line: print(line, flush=True))
    print(f"{corpus.videos_generated} videos rendered, {corpus.videos_reused} reused", flush=True)
    timings["corpus"] = time.perf_counter() - t0

    stage(f"2/{stages} extract: {config.model_name} frame/text tokens + audio tokens, {config.workers} Dask workers")
    t0 = time.perf_counter()
    features = extract_features(config, corpus, out / "features")
    timings["extract"] = time.perf_counter() - t0
    report_dir = out / "report"
    info = {
        "corpus": dataclasses.asdict(config.corpus),
        "clip_model": config.model_name,
        "pretrained": config.pretrained,
        "random_clip_weights": random_weights,
        "train_processes": config.nproc,
        "extraction_workers": config.workers,
        "seeds": list(config.seeds if config.task != "captioning" else config.seeds[:1]),
    }
    if config.task == "captioning":
        from lamflow.demo.captioning import run_captioning
        from lamflow.demo.report import write_report

        metrics, runs = run_captioning(config, corpus, features, out, timings)
        stage("6/6 report: the captioning rows beside the moment retrieval rows of this folder")
        seconds = {**{k: round(v, 1) for k, v in timings.items()}, "total": round(time.perf_counter() - started, 1)}
        scores = {name: {config.seeds[0]: result} for name, result in metrics.items()}
        summary = write_report(report_dir, "captioning", scores, runs, sorted((report_dir / "masks").glob("layer_*.png")),
                               {**info, "seconds": seconds})
        print(summary.read_text(encoding="utf-8"), flush=True)
        print(f"report: {report_dir}", flush=True)
        return report_dir

    stage(f"3/5 train: the LAM and the vanilla model x seeds {', '.join(map(str, config.seeds))}, torchrun with "
          f"{config.nproc} processes")
    t0 = time.perf_counter()
    ablation = train_models(config, features, corpus, out)
    timings["train"] = time.perf_counter() - t0

    stage("4/5 evaluate: official QVHighlights metrics (lamflow eval qvhighlights)")
    t0 = time.perf_counter()
    from lamflow.fileio import read_jsonl, write_jsonl_atomic
    from lamflow.train.config import load_config

    steps = load_config(ablation.config, ablation.run_overrides(DEMO_VARIANTS[0], config.seeds[0])).optim.max_steps
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in ablation.variants:
        for seed in ablation.seeds:
            predictions = ablation.run_dir(variant, seed) / "predictions" / f"val-step-{steps:08d}.jsonl"
            scores.setdefault(variant.name, {})[seed] = evaluate(
                corpus.val_annotations, predictions, report_dir / f"metrics_{variant.name}_seed{seed}.json")
    annotations = read_jsonl(corpus.val_annotations)
    for name, make in BASELINES.items():  # no training, no seed: one score each
        baseline = write_jsonl_atomic(report_dir / "baselines" / f"{name}.jsonl", make(annotations))
        scores[name] = {config.seeds[0]: evaluate(corpus.val_annotations, baseline, report_dir / f"metrics_{name}.json")}
    timings["evaluate"] = time.perf_counter() - t0

    stage("5/5 report: summary, training curves, LAM mask heatmaps")
    from lamflow.demo.report import write_report

    first = {variant.name: ablation.run_dir(variant, config.seeds[0]) for variant in ablation.variants}
    seconds = {**{k: round(v, 1) for k, v in timings.items()}, "total": round(time.perf_counter() - started, 1)}
    summary = write_report(report_dir, "qvhighlights", scores, first, lam_masks(first["lam"], report_dir / "masks"),
                           {**info, "seconds": seconds})
    print(summary.read_text(encoding="utf-8"), flush=True)
    print(f"report: {report_dir}", flush=True)
    return report_dir


def train_models(config: DemoConfig, features: Path, corpus: CorpusResult, out: Path) -> Ablation:
    """Train (or reuse, or resume) the LAM and the vanilla model once per seed, into out/runs/MODEL/seed-S;
    returns what was run."""
    overrides = [
        f"data.train_shards={features}", f"data.val_shards={features}",
        f"data.train_annotations={corpus.train_annotations}", f"data.val_annotations={corpus.val_annotations}",
        *([f"optim.max_steps={config.max_steps}"] if config.max_steps else []), *config.layout,
    ]
    ablation = Ablation(str(DEMO_CONFIG), tuple(overrides), DEMO_VARIANTS, tuple(config.seeds), out, config.nproc)
    run_ablation(ablation, say=lambda line: print(line, flush=True))
    return ablation


def extract_features(config: DemoConfig, corpus: CorpusResult, out: Path) -> Path:
    """`lamflow extract` as a library call (resumes: finished videos are skipped)."""
    from lamflow.pipelines.extract import run_extraction
    from lamflow.pipelines.settings import ExtractSettings

    settings = ExtractSettings(clip_model=config.model_name, pretrained=config.pretrained)
    summary = run_extraction([str(corpus.videos_dir)], out, settings, workers=config.workers,
                             shard_samples=SHARD_SAMPLES, texts=corpus.texts)
    print(f"{summary.ok} videos extracted, {summary.skipped_done} already done, {summary.failed} failed", flush=True)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} demo videos failed to extract: see {out / 'manifest.jsonl'}")
    return out


def evaluate(ground_truth: Path, predictions: Path, out: Path) -> dict[str, Any]:
    """`lamflow eval qvhighlights` in a subprocess, exactly as a user runs it; returns its metrics."""
    run([sys.executable, "-m", "lamflow", "eval", "qvhighlights", "--gt", str(ground_truth),
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

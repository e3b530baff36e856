"""What the demo's two tasks differ in; everything else (corpus, shards, the ablation runner, evaluation by
`lamflow eval`, the report) is shared by lamflow.demo.run.

    qvhighlights  moment retrieval + highlight detection on the corpus's queries (train/configs/demo.yaml),
                  scored against one window over the whole video and random windows
    captioning    a caption decoder on the corpus's captions (train/configs/demo_captioning.yaml), from the
                  same shards, scored against the most frequent training caption
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lamflow.train
from lamflow.demo.baselines import BASELINES, CAPTION_BASELINES
from lamflow.demo.config import DemoConfig
from lamflow.demo.corpus import CorpusResult
from lamflow.fileio import read_jsonl

CONFIGS = Path(lamflow.train.__file__).parent / "configs"
# CLIP text tokens a demo query fills at most (its templated queries take 11): the text stream's fixed length.
QUERY_TOKENS = 16

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class DemoTask:
    name: str  # `lamflow eval`'s subcommand and the report's section
    config: Path  # the training config both models share
    quick_steps: int  # optimizer steps per model with --quick
    folder: str  # under --out (runs) and under its report (metrics): "" keeps them at the top
    data: Callable[[DemoConfig, CorpusResult, Path], list[str]]  # overrides naming the corpus and the shards
    ground_truth: Callable[[CorpusResult], Path]  # what `lamflow eval` scores the validation predictions against
    baselines: Callable[[CorpusResult], dict[str, Rows]]  # trivial predictions, by name
    renders_masks: bool  # heatmaps of the LAM model's masks (the captioning rows reuse the folder's)


def fixed_layout(config: DemoConfig) -> list[str]:
    """Overrides giving every stream a fixed length that holds the corpus's longest video, and the encoder that
    width: the layout the defaults' ablation compared every variant on, in which a fixed generator's mask column
    j means the same stream and position in every batch (README: choosing the defaults)."""
    from lamflow.pipelines.audio_tokens import hop_count
    from lamflow.pipelines.video_decode import frame_count
    from lamflow.pipelines.settings import ExtractSettings

    settings, longest = ExtractSettings(), config.corpus.duration + config.corpus.duration_jitter
    lengths = {"text": QUERY_TOKENS, "video": frame_count(longest, settings.fps),
               "audio": hop_count(round(longest * settings.sample_rate), settings.audio_hop_samples)}
    return [f"data.loader.fixed_lengths={json.dumps(lengths)}", f"model.encoder.max_len={sum(lengths.values())}"]


def moment_data(config: DemoConfig, corpus: CorpusResult, features: Path) -> list[str]:
    return [f"data.train_shards={features}", f"data.val_shards={features}",
            f"data.train_annotations={corpus.train_annotations}", f"data.val_annotations={corpus.val_annotations}",
            *fixed_layout(config)]


def moment_baselines(corpus: CorpusResult) -> dict[str, Rows]:
    annotations = read_jsonl(corpus.val_annotations)
    return {name: make(annotations) for name, make in BASELINES.items()}


def caption_data(config: DemoConfig, corpus: CorpusResult, features: Path) -> list[str]:
    return [f"data.train_shards={features}", f"data.val_shards={features}",
            f"data.train_captions={corpus.train_captions}", f"data.val_captions={corpus.val_captions}"]


def caption_baselines(corpus: CorpusResult) -> dict[str, Rows]:
    vids = [line["vid"] for line in read_jsonl(corpus.val_captions)]
    return {name: make(read_jsonl(corpus.train_captions), vids) for name, make in CAPTION_BASELINES.items()}


TASKS = {
    "qvhighlights": DemoTask("qvhighlights", CONFIGS / "demo.yaml", 150, "", moment_data,
                             lambda corpus: corpus.val_annotations, moment_baselines, renders_masks=True),
    # --quick: the decoder first learns the captions' wording, and only later what the video holds.
    "captioning": DemoTask("captioning", CONFIGS / "demo_captioning.yaml", 200, "captioning", caption_data,
                           lambda corpus: corpus.val_captions, caption_baselines, renders_masks=False),
}

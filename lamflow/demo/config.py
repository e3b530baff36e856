"""What `lamflow demo` runs: its settings and the two models it compares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lamflow.demo.schedule import CorpusConfig
from lamflow.train.ablation import Variant

# The two models compared: identical but for the attention mask.
VARIANTS = {"lam": "multi", "vanilla": "none"}
DEMO_VARIANTS = tuple(Variant(name, (f"model.encoder.mask={mask}",), "vanilla") for name, mask in VARIANTS.items())


@dataclass(frozen=True)
class DemoConfig:
    """What `lamflow demo` runs; the defaults are the README's main job (<= 15 min on 2 CPU cores)."""

    out: Path = Path("demo")
    quick: bool = False  # a small corpus and a short training run, for tests and smoke checks
    clip_model: str | None = None  # None: ViT-B-32-quickgelu, or the tiny test model with quick
    pretrained: str = "none"  # "none" (random CLIP weights), "openai" or a local checkpoint path
    workers: int = 2  # Dask workers for extraction
    nproc: int = 2  # torchrun processes per model
    steps: int | None = None  # optimizer steps per model; None: the task's demo config's (or its quick size)
    seed: int = 0  # the corpus's
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds: each model is trained once per seed
    task: str = "qvhighlights"  # or "captioning": caption models on the same corpus and shards

    @property
    def corpus(self) -> CorpusConfig:
        if self.quick:
            return CorpusConfig(train_videos=12, val_videos=4, duration=20, duration_jitter=2, seed=self.seed)
        return CorpusConfig(seed=self.seed)

    @property
    def model_name(self) -> str:
        return self.clip_model or ("lamflow-tiny" if self.quick else "ViT-B-32-quickgelu")

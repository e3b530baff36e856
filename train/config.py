"""Typed training configuration: dataclasses loaded from YAML, with ``key=value`` overrides from the CLI.

The sections compose the components' own configs instead of restating them: ``model.encoder`` is a
``lamflow.lam.LAMConfig`` and ``data.loader`` a ``lamflow.datasets.loader.LoaderConfig``, each with one
set of defaults and one validation; the task-specific fields of ``data`` and ``model`` are declared by the
task that reads them (``lamflow.train.tasks``: ``DataConfig`` and ``ModelConfig`` inherit every task's
options classes, so the keys stay flat: ``data.train_annotations``, ``model.num_classes``). Every field is
documented next to its declaration.

Loading is strict (``lamflow.train.typed_config``): an unknown or misspelt field, a value of the wrong type,
a field that moved, each is one ConfigError naming the dotted field. A task's field set while another task
is chosen is an error too: it would have no effect.

A config file may start from another: ``base: qvhighlights_lam.yaml`` (a path relative to the file, or a
shipped config's name) loads that file first and the rest of this one is merged over it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from lamflow.datasets.loader import LoaderConfig
from lamflow.errors import ConfigError
from lamflow.lam import LAMConfig
from lamflow.train.tasks import TASK_NAMES, TASKS, get_task, options_classes
from lamflow.train.typed_config import at_least, build_dataclass, nested, plain, positive, set_dotted

BASE_KEY = "base"


@dataclass
class DataSources:
    # Task the shards are trained for (lamflow.train.tasks): moment retrieval + highlight detection, one label
    # per video, a caption per video (MSRVTT-style), or an audio description per movie moment (MAD-v2 / AutoAD).
    task: Literal[TASK_NAMES] = "qvhighlights"
    # Training shards: an extraction output DIR (holding shards/ and sizes.json) or a .tar url pattern.
    train_shards: str = ""
    # Validation shards, same forms; "" = no validation (periodic eval is skipped).
    val_shards: str = ""


@dataclass
class TaskOptions(*reversed(options_classes("data_options"))):
    """Every task's data options (each declared and documented in its task module)."""


# data option -> the tasks that read it (two tasks may share one: the caption files).
TASK_OPTION_OWNERS = {option.name: tuple(name for name, spec in TASKS.items()
                                         if option.name in {f.name for f in dataclasses.fields(spec.data_options)})
                      for option in dataclasses.fields(TaskOptions)}


@dataclass
class DataConfig(TaskOptions, DataSources):
    """Which shards feed training and validation, the task's annotations, and how shards are streamed."""

    # Items per batch during evaluation and prediction (no gradients, so it can exceed loader.batch_size).
    eval_batch_size: int = 16
    # How shards are streamed: streams, batch size, workers, shuffling, bucketing (datasets/loader.py).
    loader: LoaderConfig = field(default_factory=LoaderConfig)

    def validate(self) -> None:
        if not self.train_shards:
            raise ConfigError("data.train_shards is required: the extraction output DIR or a .tar pattern")
        for option in dataclasses.fields(TaskOptions):
            owners = TASK_OPTION_OWNERS[option.name]
            if self.task not in owners and getattr(self, option.name) != option.default:
                raise ConfigError(f"data.{option.name} applies to task {' and '.join(owners)} only (task is {self.task}); "
                                  "remove it")
        get_task(self.task).validate_data(self)
        at_least("data.eval_batch_size", self.eval_batch_size, 1)
        with nested("data.loader"):
            self.loader.validate()


@dataclass
class ModelArchitecture:
    # The LAM encoder: width, depth, heads, mask mode, generator, attention backend (lam/config.py).
    encoder: LAMConfig = field(default_factory=LAMConfig)
    # Feature size of each input stream, e.g. {text: 512, video: 512, audio: 64}; auto = the shard set's record.
    input_dims: dict[str, int] | Literal["auto"] = "auto"
    # Average-pool a stream's tokens by this factor before the encoder, e.g. {audio: 5} turns 0.1-s audio
    # tokens into 0.5-s ones (the sequence length drives attention cost).
    downsample: dict[str, int] = field(default_factory=dict)
    # Sinusoid frequencies of the time embedding (periods spread geometrically from 1 s to max_period).
    time_frequencies: int = 16
    # Longest period of the time embedding in seconds (keep it above the longest video).
    max_period: float = 1000.0


@dataclass
class ModelConfig(*reversed(options_classes("model_options")), ModelArchitecture):
    """The multimodal model: per-stream projections and embeddings, the LAM encoder, the task head, losses."""

    def validate(self) -> None:
        with nested("model.encoder"):
            self.encoder.validate()
        if self.input_dims != "auto":
            for name, width in self.input_dims.items():
                at_least(f"model.input_dims.{name}", width, 1)
        for name, factor in self.downsample.items():
            at_least(f"model.downsample.{name}", factor, 1)
        at_least("model.time_frequencies", self.time_frequencies, 1)
        positive("model.max_period", self.max_period)
        # Every task's options are checked whatever the task: a bad value is wrong in any run of the config.
        for validate in dict.fromkeys(spec.validate_model for spec in TASKS.values()):
            validate(self)


@dataclass
class OptimConfig:
    """AdamW with a cosine learning-rate schedule after a linear warm-up."""

    # Peak learning rate (reached after warmup_steps).
    lr: float = 3e-4
    # Decoupled weight decay, applied to matrices only (not to biases, norms or embeddings' biases).
    weight_decay: float = 0.05
    # AdamW betas.
    betas: tuple[float, float] = (0.9, 0.98)
    # Optimizer steps of linear warm-up from 0 to lr.
    warmup_steps: int = 100
    # Total optimizer steps of the run (the cosine reaches min_lr_ratio * lr here).
    max_steps: int = 2000
    # Learning rate at the end of the cosine, as a fraction of lr.
    min_lr_ratio: float = 0.1
    # Micro-batches accumulated per optimizer step (DDP syncs gradients on the last one only).
    grad_accum: int = 1
    # Clip the global gradient norm to this value; 0 = no clipping.
    grad_clip: float = 1.0

    def validate(self) -> None:
        positive("optim.lr", self.lr)
        if not (0 <= self.weight_decay < 1):
            raise ConfigError(f"optim.weight_decay must be in [0, 1), got {self.weight_decay}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")
        at_least("optim.warmup_steps", self.warmup_steps, 0)
        at_least("optim.max_steps", self.max_steps, 1)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        at_least("optim.grad_accum", self.grad_accum, 1)
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise ConfigError(f"optim.grad_clip must be a finite number >= 0 (0 = no clipping), got {self.grad_clip}")


@dataclass
class RunConfig:
    """Where outputs go and how often the trainer logs, evaluates and checkpoints."""

    # Output directory: metrics.jsonl, checkpoints/, predictions/, config.yaml, tensorboard/.
    out_dir: str = "runs/lamflow"
    # Seed of model init, dropout and data shuffling (each rank offsets its dropout RNG by its rank).
    seed: int = 0
    # Optimizer steps between training-loss lines in metrics.jsonl.
    log_every: int = 10
    # Optimizer steps between evaluations on the validation split; 0 = only at the end of the run.
    eval_every: int = 500
    # Optimizer steps between checkpoints; 0 = only at the end of the run.
    checkpoint_every: int = 500
    # Checkpoints kept on disk (oldest deleted first).
    keep_checkpoints: int = 3
    # Mixed precision: auto = bf16 autocast on GPU and full precision on CPU; bf16 forces it; off disables it.
    amp: Literal["auto", "bf16", "off"] = "auto"
    # Device: auto = the rank's GPU when CUDA is available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch intra-op threads per process; 0 = CPU cores divided by the processes on this node.
    threads: int = 0
    # Optimizer steps in a row whose gradients are NaN/inf before the run stops with an error; each such
    # step is skipped (no update) and counted in metrics.jsonl as nonfinite_steps.
    max_nonfinite_steps: int = 5
    # Show a progress bar (rank 0 only).
    progress: bool = True

    def validate(self) -> None:
        at_least("run.seed", self.seed, 0)
        for name in ("log_every", "eval_every", "checkpoint_every", "threads"):
            at_least(f"run.{name}", getattr(self, name), 0)
        at_least("run.keep_checkpoints", self.keep_checkpoints, 1)
        at_least("run.max_nonfinite_steps", self.max_nonfinite_steps, 1)
        if not self.out_dir:
            raise ConfigError("run.out_dir must name a directory")


@dataclass
class TrainConfig:
    """A whole training run: data, model, optim and run sections (see each dataclass)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        for section in (self.data, self.model, self.optim, self.run):
            section.validate()
        streams = self.data.loader.streams
        if self.model.input_dims != "auto":
            missing = [name for name in streams if name not in self.model.input_dims]
            if missing:
                raise ConfigError(
                    f"model.input_dims has no feature width for stream(s) {missing} of data.loader.streams "
                    f"{list(streams)}; add e.g. {{{missing[0]}: 512}}, or set model.input_dims=auto to read the widths "
                    "from the shards"
                )
        unknown = sorted(set(self.model.downsample) - set(streams))
        if unknown:
            raise ConfigError(
                f"model.downsample names stream(s) {unknown} that are not in data.loader.streams {list(streams)}"
            )
        encoder, fixed = self.model.encoder, self.data.loader.fixed_lengths
        if encoder.mask != "none" and encoder.generator == "fixed":
            # The fixed generator's mask column j is absolute position j: only a fixed layout gives it a meaning.
            if fixed is None:
                raise ConfigError(
                    "model.encoder.generator=fixed needs data.loader.fixed_lengths (e.g. {text: 16, video: 32, audio: 320}): "
                    "its mask columns are absolute positions, which mean the same stream and slot in every batch only "
                    "when every stream has a fixed length; or use model.encoder.generator=dynamic"
                )
            length = sum(math.ceil(n / self.model.downsample.get(s, 1)) for s, n in fixed.items())
            if length > encoder.max_len:
                raise ConfigError(
                    f"data.loader.fixed_lengths give sequences of {length} tokens (after model.downsample), more than "
                    f"model.encoder.max_len={encoder.max_len}, the fixed generator's width; raise max_len to {length}"
                )


# --------------------------------------------------------------------------------------------------
# Shipped configs, found by name


def shipped_configs() -> dict[str, Path]:
    """name -> path of the configs shipped with lamflow (train/configs/*.yaml, in a checkout or an install)."""
    folder = Path(str(resources.files("lamflow.train") / "configs"))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A config file: an existing path (relative to ``relative_to`` when given), else a shipped config's name
    (``qvhighlights_lam`` or ``qvhighlights_lam.yaml``)."""
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = Path(str(name_or_path)).name.removesuffix(".yaml")
    if name in shipped and not Path(str(name_or_path)).parent.parts:
        return shipped[name]
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a shipped config; shipped configs: "
                      f"{', '.join(shipped)} (see `lamflow configs list`)")


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of ``path`` with its ``base:`` chain merged in (base first, this file over it)."""
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(str(p) for p in (*chain, path))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with data/model/optim/run sections")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must name a config file or a shipped config, got {base!r}")
    return _merge(_read_yaml(resolve_config_path(base, path.parent), (*chain, path.resolve())), raw)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = _merge(dict(merged[name]), value)
        else:
            merged[name] = value
    return merged


# --------------------------------------------------------------------------------------------------
# Loading, overrides and type checking


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (a YAML file or a shipped config's name, with its ``base:`` chain), apply ``key=value``
    overrides (dotted names, e.g. ``optim.lr=1e-3``), validate.

    Relative data paths in the file are relative to the working directory, as on the command line.
    """
    path = resolve_config_path(path)
    config = config_from_dict(_read_yaml(path), source=str(path))
    for override in overrides:
        apply_override(config, override)
    config.validate()
    return config


def config_from_dict(raw: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from plain data (YAML or a checkpoint), checking names and types."""
    return build_dataclass(TrainConfig, raw, prefix="", source=source)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain python data (lists, dicts, scalars) for YAML, JSON and ``torch.load(weights_only=True)``."""
    return plain(dataclasses.asdict(config))


def apply_override(config: TrainConfig, override: str) -> None:
    """Set one ``section.field=value`` on ``config``; the text value is coerced to the field's type."""
    set_dotted(config, override)

"""Typed training configuration: dataclasses loaded from YAML, with ``key=value`` overrides from the CLI.

Every field is documented next to its declaration. Loading is strict: an unknown field name or a value of
the wrong type raises :class:`ConfigError` naming the dotted field, the expected type and close matches,
because a silently ignored typo (``optim.lrr=1e-3``) wastes a whole training run.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from lamflow.errors import LamflowError


class ConfigError(LamflowError, ValueError):
    """A configuration file or override that does not match the dataclasses below."""


@dataclass
class DataConfig:
    """Which shards feed training and validation, and how they are streamed (see ``LoaderConfig``)."""

    # Task the shards are trained for: moment retrieval + highlight detection, or one label per video key.
    task: Literal["qvhighlights", "classification"] = "qvhighlights"
    # Training shards: an extraction output DIR (holding shards/ and sizes.json) or a .tar url pattern.
    train_shards: str = ""
    # Validation shards, same forms; "" = no validation (periodic eval is skipped).
    val_shards: str = ""
    # QVHighlights annotation jsonl joined to the training shards by `vid` (task qvhighlights).
    train_annotations: str = ""
    # QVHighlights annotation jsonl for the validation split; also the ground truth of the official metrics.
    val_annotations: str = ""
    # Classification label file (csv `key,label` or json {key: label}) covering train and val keys.
    labels: str = ""
    # Streams concatenated into one sequence, in this order (the query text first so it reads as a prefix).
    streams: tuple[str, ...] = ("text", "video", "audio")
    # Items per batch on each rank (the global batch is batch_size * world_size * optim.grad_accum).
    batch_size: int = 8
    # Items per batch during evaluation and prediction (no gradients, so it can be larger).
    eval_batch_size: int = 16
    # DataLoader worker processes per rank; shards are split between workers.
    num_workers: int = 0
    # Items held in the shuffle buffer (larger = better mixing, more memory).
    shuffle_buffer: int = 256
    # Items per epoch over all ranks; null = one pass over the shards.
    samples_per_epoch: int | None = None
    # Group items of similar length into a batch to waste less compute on padding.
    bucket_by_length: bool = True
    # Items gathered before sorting them into length buckets.
    bucket_buffer: int = 64
    # Optional cap on tokens per stream, e.g. {audio: 2000}; longer streams are truncated by the loader.
    max_stream_tokens: dict[str, int] | None = None

    def validate(self) -> None:
        if not self.train_shards:
            raise ConfigError("data.train_shards is required: the extraction output DIR or a .tar pattern")
        if self.task == "qvhighlights":
            if not self.train_annotations:
                raise ConfigError("data.train_annotations is required for task qvhighlights (an annotation jsonl)")
            if self.val_shards and not self.val_annotations:
                raise ConfigError("data.val_annotations is required when data.val_shards is set (task qvhighlights)")
        if self.task == "classification" and not self.labels:
            raise ConfigError("data.labels is required for task classification (csv key,label or json {key: label})")
        if not self.streams:
            raise ConfigError("data.streams must name at least one stream, e.g. [video]")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ModelConfig:
    """The multimodal LAM model: per-stream projections, embeddings, the LAM encoder and the task head."""

    # Model width (every stream is projected to it).
    dim: int = 256
    # Number of transformer layers.
    depth: int = 4
    # Attention heads per layer (dim must be divisible by heads).
    heads: int = 4
    # Longest sequence the encoder accepts (the "fixed" generator is exactly this wide).
    max_len: int = 1024
    # Learnable attention mask: none (vanilla attention), single (one mask for all layers), multi (one per layer).
    mask: Literal["none", "single", "multi"] = "multi"
    # How the mask meets the attention scores before the softmax: element-wise product or sum.
    combine: Literal["mul", "add"] = "mul"
    # Mask generator: fixed (the paper's, width max_len) or dynamic (defined for any length).
    generator: Literal["fixed", "dynamic"] = "dynamic"
    # Hidden width of the mask generator MLP.
    generator_hidden: int = 256
    # Linear layers in the mask generator ("fixed" generator).
    generator_layers: int = 2
    # Rank r of the dynamic generator's M = 1 + U V^T / sqrt(r).
    generator_rank: int = 16
    # Input of each layer's generator in multi mode: the hidden states entering the layer, or the encoder input.
    generator_input: Literal["hidden", "input"] = "hidden"
    # One mask per attention head instead of one shared by all heads.
    mask_per_head: bool = False
    # Optional squashing of M (identity of `combine` at init either way): none, sigmoid or softplus.
    mask_gate: Literal["none", "sigmoid", "softplus"] = "none"
    # Attention backend: auto picks the fused kernel where it has a backward (GPU) and eager otherwise.
    attention: Literal["auto", "eager", "flex"] = "auto"
    # Width of the feed-forward block as a multiple of dim.
    mlp_ratio: float = 4.0
    # Dropout in the encoder and on the embedded input.
    dropout: float = 0.1
    # Feature size of each input stream, e.g. {text: 512, video: 512, audio: 64}; auto = read from the data.
    input_dims: dict[str, int] | Literal["auto"] = "auto"
    # Average-pool a stream's tokens by this factor before the encoder, e.g. {audio: 5} turns 0.1-s audio
    # tokens into 0.5-s ones (the sequence length drives attention cost).
    downsample: dict[str, int] = field(default_factory=dict)
    # Sinusoid frequencies of the time embedding (periods spread geometrically from 1 s to max_period).
    time_frequencies: int = 16
    # Longest period of the time embedding in seconds (keep it above the longest video).
    max_period: float = 1000.0
    # Number of classes (task classification); auto = the number of label names in data.labels.
    num_classes: int | Literal["auto"] = "auto"
    # Moment windows written per query, best first (the official evaluator scores the top 10).
    num_windows: int = 10
    # Windows overlapping a better one by at least this IoU are dropped (1-D non-maximum suppression).
    nms_iou: float = 0.7
    # Loss weights (task qvhighlights): foreground logit, L1 on normalised offsets, 1-D GIoU, clip saliency.
    foreground_weight: float = 1.0
    offset_weight: float = 1.0
    giou_weight: float = 1.0
    saliency_weight: float = 1.0

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        for name, factor in self.downsample.items():
            if factor < 1:
                raise ConfigError(f"model.downsample.{name} must be >= 1, got {factor}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ConfigError(f"model.nms_iou must be in (0, 1], got {self.nms_iou}")


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
        if self.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be >= 1, got {self.max_steps}")
        if self.grad_accum < 1:
            raise ConfigError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


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
    # Show a progress bar (rank 0 only).
    progress: bool = True

    def validate(self) -> None:
        for name in ("log_every", "eval_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"run.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"run.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


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
        unknown = sorted(set(self.model.downsample) - set(self.data.streams))
        if unknown:
            raise ConfigError(f"model.downsample names stream(s) {unknown} that are not in data.streams {list(self.data.streams)}")


# --------------------------------------------------------------------------------------------------
# Loading, overrides and type checking


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides (dotted names, e.g. ``optim.lr=1e-3``), validate.

    Relative paths in the file are relative to the working directory, as on the command line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with data/model/optim/run sections")
    config = config_from_dict(raw, source=str(path))
    for override in overrides:
        apply_override(config, override)
    config.validate()
    return config


def config_from_dict(raw: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from plain data (YAML or a checkpoint), checking names and types."""
    return _build(TrainConfig, raw, prefix="", source=source)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain python data (lists, dicts, scalars) for YAML, JSON and ``torch.load(weights_only=True)``."""
    return _plain(dataclasses.asdict(config))


def apply_override(config: TrainConfig, override: str) -> None:
    """Set one ``section.field=value`` on ``config``; the text value is coerced to the field's type."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value, e.g. optim.lr=1e-3")
    dotted, text = (part.strip() for part in override.split("=", 1))
    *sections, name = dotted.split(".")
    target: Any = config
    for depth, section in enumerate(sections):
        _check_known(type(target), section, ".".join(sections[:depth]), source="command line")
        target = getattr(target, section)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"override {override!r}: {'.'.join(sections[:depth + 1])} is a value, not a section")
    _check_known(type(target), name, ".".join(sections), source="command line")
    hint = typing.get_type_hints(type(target))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"override {override!r}: {dotted} is a section; set one of its fields, e.g. {dotted}.x=...")
    setattr(target, name, _coerce(_parse_text(text, hint), hint, dotted, source="command line"))


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        _check_known(cls, str(name), prefix, source)
        dotted = f"{prefix}.{name}" if prefix else str(name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value if value is not None else {}, dotted, source)
        else:
            values[name] = _coerce(value, hint, dotted, source)
    return cls(**values)


def _check_known(cls: type, name: str, prefix: str, source: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    if name in known:
        return
    dotted = f"{prefix}.{name}" if prefix else name
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(f'{prefix}.{c}' if prefix else c) for c in close)}?" if close else ""
    raise ConfigError(
        f"{source}: unknown field {dotted!r}{hint} (fields of {prefix or 'the top level'}: {', '.join(known)})"
    )


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(hint))
        return f"{origin.__name__}[{args}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, dotted: str, source: str) -> Any:
    """Return ``value`` as type ``hint`` or raise a ConfigError naming the field and the expected type."""

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{source}: field {dotted!r} expects {_type_name(hint)}, got {type(value).__name__} {value!r}"
        )

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, dotted, source)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value in args:
            return value
        fail()
    if hint is type(None):
        return None if value is None else fail()
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 1e-3 (no dot) as a string; accept anything float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if hint is str:
        return value if isinstance(value, str) else fail()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{dotted}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            fail()
        return tuple(_coerce(v, a, f"{dotted}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        key_type, value_type = args
        return {
            _coerce(k, key_type, f"{dotted} key", source): _coerce(v, value_type, f"{dotted}.{k}", source)
            for k, v in value.items()
        }
    raise TypeError(f"config field {dotted!r} has an unsupported annotation {hint!r}")  # a bug in this file


def _parse_text(text: str, hint: Any) -> Any:
    """Turn a command-line value into python data for ``_coerce``: YAML syntax, plus bare comma lists.

    Strings stay strings when the field accepts a string (so ``run.out_dir=123`` is the folder "123").
    """
    text = text.strip()
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    accepts_str = hint is str or (is_union and str in typing.get_args(hint))
    if accepts_str and text.lower() not in ("null", "none", "~"):
        return text
    # A word the field lists as a choice stays that word: YAML would read `run.amp=off` as False.
    options = typing.get_args(hint) if is_union else (hint,)
    if any(typing.get_origin(option) is Literal and text in typing.get_args(option) for option in options):
        return text
    parsed = yaml.safe_load(text) if text else None
    if typing.get_origin(hint) is tuple and isinstance(parsed, str) and "," in parsed:
        return [yaml.safe_load(part) for part in parsed.split(",")]
    if typing.get_origin(hint) is tuple and isinstance(parsed, (str, int, float)) and not isinstance(parsed, bool):
        return [parsed]
    return parsed


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

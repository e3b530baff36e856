"""Typed training configuration: dataclasses loaded from YAML, with ``key=value`` overrides from the CLI.

The sections compose the components' own configs instead of restating them: ``model.encoder`` is a
``lamflow.lam.LAMConfig`` and ``data.loader`` a ``lamflow.datasets.loader.LoaderConfig``, each with one
set of defaults and one validation. Every field is documented next to its declaration.

Loading is strict: an unknown field name or a value of the wrong type raises :class:`ConfigError` naming the
dotted field, the expected type and close matches, because a silently ignored typo (``optim.lrr=1e-3``)
wastes a whole training run. A field that moved into a nested section (``model.mask`` is now
``model.encoder.mask``) is named with its new place.

A config file may start from another: ``base: qvhighlights_lam.yaml`` (a path relative to the file, or a
shipped config's name) loads that file first and the rest of this one is merged over it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import yaml

from lamflow.contract import TEXT_STREAM
from lamflow.datasets.loader import LoaderConfig
from lamflow.errors import ConfigError, FieldError
from lamflow.lam import LAMConfig

BASE_KEY = "base"
# Tasks whose model writes text (a caption decoder over the encoder; predictions are captions).
GENERATION_TASKS = ("captioning", "audio_description")


def _at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass
class DataConfig:
    """Which shards feed training and validation, the task's annotations, and how shards are streamed."""

    # Task the shards are trained for: moment retrieval + highlight detection, one label per video, a caption
    # per video (MSRVTT-style), or an audio description per movie moment (MAD-v2 / AutoAD-style).
    task: Literal["qvhighlights", "classification", "captioning", "audio_description"] = "qvhighlights"
    # Training shards: an extraction output DIR (holding shards/ and sizes.json) or a .tar url pattern.
    train_shards: str = ""
    # Validation shards, same forms; "" = no validation (periodic eval is skipped).
    val_shards: str = ""
    # QVHighlights annotation jsonl joined to the training shards by `vid` (task qvhighlights).
    train_annotations: str = ""
    # QVHighlights annotation jsonl for the validation split; also the ground truth of the official metrics.
    val_annotations: str = ""
    # Classification label file (csv `key,label` or json {key: label}) covering train and val keys; or
    # "folder": each sample's label is the class folder of its recorded name (an image folder ROOT/CLASS/x.jpg
    # extracted from ROOT with `lamflow extract ROOT --media image`); train_shards and val_shards are then
    # separate extraction DIRs (e.g. of ImageNet's train/ and val/), and the classes are train_shards' folders.
    labels: str = ""
    # Text shard set (DIR or .tar pattern, e.g. from `lamflow import-h5 LANG.h5 --stream text`) holding the
    # training queries' tokens by query id, for shards without them (MAD's sentence features); "" = none.
    train_texts: str = ""
    # The same for the validation queries.
    val_texts: str = ""
    # Cut each query's view to this many seconds of its video holding the ground-truth moment, times rebased
    # (training: a random position per epoch; validation: a fixed one per query); 0 = whole videos. For
    # hours-long videos (MAD) the encoder cannot take whole (datasets/qvhighlights.py).
    window_seconds: float = 0.0
    # Captions of the training videos (task captioning): MSRVTT's videodatainfo .json or a jsonl of
    # {"vid", "caption"} lines; task audio_description: a jsonl of ADs {"ad_id", "movie", "start", "end", "text"}.
    train_captions: str = ""
    # The same for the validation split; also the references its caption metrics (CIDEr, BLEU, ...) use.
    val_captions: str = ""
    # MSRVTT split of train_captions to train on (train, validate or test); null = the file's only split.
    # Leave it null for jsonl caption files, which have no splits.
    train_caption_split: str | None = None
    # MSRVTT split of val_captions to validate on (e.g. validate); null = the file's only split.
    val_caption_split: str | None = None
    # Seconds of features before an AD's start that form its context (task audio_description).
    ad_context_before: float = 3.0
    # Seconds of features after an AD's end that form its context (task audio_description).
    ad_context_after: float = 3.0
    # Items per batch during evaluation and prediction (no gradients, so it can exceed loader.batch_size).
    eval_batch_size: int = 16
    # How shards are streamed: streams, batch size, workers, shuffling, bucketing (datasets/loader.py).
    loader: LoaderConfig = field(default_factory=LoaderConfig)

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
        if not (self.window_seconds >= 0 and math.isfinite(self.window_seconds)):
            raise ConfigError(f"data.window_seconds must be a finite number >= 0 (0 = whole videos), got {self.window_seconds!r}")
        moment_only = [name for name in ("train_texts", "val_texts", "window_seconds") if getattr(self, name)]
        if self.task != "qvhighlights" and moment_only:
            raise ConfigError(f"data.{moment_only[0]} applies to task qvhighlights only (task is {self.task}); remove it")
        if self.task in GENERATION_TASKS:
            if not self.train_captions:
                raise ConfigError(f"data.train_captions is required for task {self.task} (the training captions)")
            if self.val_shards and not self.val_captions:
                raise ConfigError(f"data.val_captions is required when data.val_shards is set (task {self.task})")
            if TEXT_STREAM in self.loader.streams:
                raise ConfigError(f"data.loader.streams must not list {TEXT_STREAM!r} for task {self.task}: its text is "
                                  f"the output, not an input; e.g. [video, audio]")
            for name in ("ad_context_before", "ad_context_after"):
                value = getattr(self, name)
                if not (value >= 0 and math.isfinite(value)):
                    raise ConfigError(f"data.{name} must be a finite number of seconds >= 0, got {value!r}")
        _at_least("data.eval_batch_size", self.eval_batch_size, 1)
        with _nested("data.loader"):
            self.loader.validate()


@dataclass
class ModelConfig:
    """The multimodal model: per-stream projections and embeddings, the LAM encoder, the task head, losses."""

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
    # Layers of the caption decoder (generation tasks): causal self-attention + cross-attention to the encoder,
    # at the encoder's width and head count (train/caption_decoder.py says why a decoder and not SwinBERT's MLM).
    decoder_layers: int = 2
    # Words the decoder reads and writes: "train" = the BPE tokens of the training captions (the mapping is
    # stored in the checkpoint), "full" = all 49,408 tokens of open_clip's BPE vocabulary.
    caption_vocabulary: Literal["train", "full"] = "train"
    # Longest caption in BPE tokens, start and end tokens included: longer training captions are cut, and
    # generation stops here.
    max_caption_tokens: int = 32
    # Hypotheses kept by the caption beam search; 1 = greedy decoding.
    beam_size: int = 1
    # Finished beam hypotheses are ranked by log-probability / length ** length_penalty (0 = the plain sum,
    # which favours short captions).
    length_penalty: float = 1.0

    def validate(self) -> None:
        with _nested("model.encoder"):
            self.encoder.validate()
        if self.input_dims != "auto":
            for name, width in self.input_dims.items():
                _at_least(f"model.input_dims.{name}", width, 1)
        for name, factor in self.downsample.items():
            _at_least(f"model.downsample.{name}", factor, 1)
        _at_least("model.time_frequencies", self.time_frequencies, 1)
        _positive("model.max_period", self.max_period)
        if self.num_classes != "auto":
            _at_least("model.num_classes", self.num_classes, 2)
        _at_least("model.num_windows", self.num_windows, 1)
        if not 0.0 < self.nms_iou <= 1.0:
            raise ConfigError(f"model.nms_iou must be in (0, 1], got {self.nms_iou}")
        for name in ("foreground_weight", "offset_weight", "giou_weight", "saliency_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"model.{name} must be a finite number >= 0, got {value}")
        _at_least("model.decoder_layers", self.decoder_layers, 1)
        _at_least("model.max_caption_tokens", self.max_caption_tokens, 3)  # start, a word, end
        _at_least("model.beam_size", self.beam_size, 1)
        if not (self.length_penalty >= 0 and math.isfinite(self.length_penalty)):
            raise ConfigError(f"model.length_penalty must be a finite number >= 0, got {self.length_penalty}")


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
        _positive("optim.lr", self.lr)
        if not (0 <= self.weight_decay < 1):
            raise ConfigError(f"optim.weight_decay must be in [0, 1), got {self.weight_decay}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _at_least("optim.max_steps", self.max_steps, 1)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _at_least("optim.grad_accum", self.grad_accum, 1)
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
        _at_least("run.seed", self.seed, 0)
        for name in ("log_every", "eval_every", "checkpoint_every", "threads"):
            _at_least(f"run.{name}", getattr(self, name), 0)
        _at_least("run.keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("run.max_nonfinite_steps", self.max_nonfinite_steps, 1)
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


@contextlib.contextmanager
def _nested(prefix: str, source: str = "config") -> Iterator[None]:
    """Re-raise a component config's :class:`FieldError` (``LAMConfig.dim=...``) under the dotted path the
    user writes (``model.encoder.dim``)."""
    try:
        yield
    except FieldError as error:
        raise ConfigError(
            f"{source}: field '{prefix}.{error.field}' = {error.value!r} is not valid; allowed values: {error.allowed}"
        ) from None


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
    with _nested(prefix, source):  # component configs validate themselves when constructed
        return cls(**values)


def _check_known(cls: type, name: str, prefix: str, source: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    if name in known:
        return
    dotted = f"{prefix}.{name}" if prefix else name
    hints = typing.get_type_hints(cls)
    moved = [section for section in known if dataclasses.is_dataclass(hints[section])
             and name in {f.name for f in dataclasses.fields(hints[section])}]
    if moved:  # a field of a component config written at the level above it (the layout before composition)
        new = f"{prefix}.{moved[0]}.{name}" if prefix else f"{moved[0]}.{name}"
        raise ConfigError(f"{source}: field {dotted!r} has moved: write {new!r}")
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

"""Extraction settings: frozen dataclasses shared by decode, encoders and the run record.

A run is a video run (:class:`ExtractSettings`: frames, audio and texts per video) or an image run
(:class:`ImageSettings`: CLIP patch tokens per image); both share the CLIP fields of :class:`ClipSettings`,
and ``kind`` says which one a run is. The settings are written to ``DIR/extraction.json`` by the
orchestrator, so a re-run with different settings (or of the other kind) can be detected instead of silently
mixing features; keep every field JSON-serialisable.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lamflow.errors import ConfigError

FRAME_RULES = ("start", "middle")
# Presets reproduce another extractor's video and text features (pipelines/moment_detr.py). Each fixes the
# fields below; a field left at lamflow's default takes the preset's value, any other value is refused.
MOMENT_DETR = "moment_detr"
PRESET_FIELDS: dict[str, dict[str, Any]] = {
    MOMENT_DETR: {"fps": 0.5, "frame_rule": "start", "dtype": "float32"},  # one frame per 2-s clip, float32 files
}
PRESETS = tuple(PRESET_FIELDS)
DTYPES = ("float16", "float32")
LOG_MEL = "log-mel"  # the default audio encoder (pipelines/audio_tokens.py); others: pipelines/audio_models.py

Settings = TypeVar("Settings", bound="ClipSettings")


@dataclass(frozen=True)
class ClipSettings:
    """The CLIP model every run encodes with, the dtype its arrays are stored in, and the device."""

    kind: ClassVar[str]  # "video" or "image": what one input of the run is (recorded in extraction.json)

    clip_model: str = "ViT-B-32-quickgelu"
    pretrained: str = "none"  # "none" | open_clip pretrained tag (e.g. "openai") | local checkpoint path
    dtype: str = "float16"  # dtype of the stored arrays
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError naming the offending field and how to fix it."""
        if not self.clip_model:
            raise ConfigError("clip_model must name an open_clip model, e.g. 'ViT-B-32-quickgelu' or 'lamflow-tiny'")
        if not self.pretrained:
            raise ConfigError("pretrained must be 'none', an open_clip tag such as 'openai', or a checkpoint path")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[Settings], data: dict[str, Any]) -> Settings:
        """Build from a dict (e.g. extraction.json); unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown extraction setting(s) {unknown}; known fields: {sorted(known)}")
        settings = cls(**data)
        settings.validate()
        return settings


@dataclass(frozen=True)
class ExtractSettings(ClipSettings):
    """How one video becomes tokens. Defaults reproduce the issue's CLI defaults."""

    kind: ClassVar[str] = "video"

    fps: float = 1.0  # video tokens per second
    # A video of D seconds (as decoded, whatever its header claims) has ceil(D * fps) intervals
    # [k/fps, (k+1)/fps), the last one possibly partial, and one token each (4.004 s at 2 fps: 9 tokens).
    # Which frame stands for interval k:
    #   "start"  -> the frame on screen at k/fps        (ffmpeg fps=F:round=up; 30 fps input -> frames 0, 30, 60)
    #   "middle" -> the frame on screen at (k+0.5)/fps  (30 fps input -> frames 15, 45, 75); for a final partial
    #               interval whose middle is past the end, the last frame, stamped D
    frame_rule: str = "start"
    sample_rate: int = 16000
    audio_hop: float = 0.1  # seconds per audio token, whatever the audio model
    n_mels: int = 64  # log-mel only: mel bands = token dimension
    # "log-mel", a torchaudio wav2vec2-family bundle name (e.g. "WAV2VEC2_BASE", "HUBERT_BASE") or a local
    # checkpoint path (a torchaudio wav2vec2/HuBERT/WavLM model, or PANNs CNN14); see audio_models.py.
    audio_model: str = LOG_MEL
    frame_batch: int = 32  # frames decoded + encoded per batch: bounds memory on long videos
    # None: lamflow's own frames and text tokens; a name of PRESETS: that extractor's (frame_rule then does not
    # apply: the preset samples frames its own way, and its provenance in meta.json says how).
    preset: str | None = None

    def __post_init__(self) -> None:
        for name, value in PRESET_FIELDS.get(self.preset, {}).items():
            if getattr(self, name) == _LAMFLOW_DEFAULTS[name]:
                object.__setattr__(self, name, value)

    def validate(self) -> None:
        """Raise ValueError naming the offending field and how to fix it."""
        super().validate()
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS} (or None: lamflow's own features), got {self.preset!r}")
        for name, value in PRESET_FIELDS.get(self.preset, {}).items():
            if getattr(self, name) != value:
                raise ConfigError(f"{name}={getattr(self, name)!r} contradicts preset {self.preset!r}, which fixes "
                                  f"{name}={value!r}; leave {name} at its default")
        if not self.fps > 0:
            raise ConfigError(f"fps must be > 0 (video tokens per second), got {self.fps!r}")
        if self.frame_rule not in FRAME_RULES:
            raise ConfigError(f"frame_rule must be one of {FRAME_RULES}, got {self.frame_rule!r}")
        if not (isinstance(self.sample_rate, int) and 1000 <= self.sample_rate <= 192000):
            raise ConfigError(f"sample_rate must be an integer in [1000, 192000] Hz, got {self.sample_rate!r}")
        hop_samples = self.audio_hop * self.sample_rate
        if not (self.audio_hop > 0 and hop_samples >= 1 and abs(hop_samples - round(hop_samples)) < 1e-6):
            raise ConfigError(
                f"audio_hop must be > 0 and a whole number of samples at sample_rate={self.sample_rate} "
                f"(audio_hop * sample_rate = {hop_samples:g}); e.g. use 0.1 or 0.02"
            )
        if not (isinstance(self.n_mels, int) and 1 <= self.n_mels <= 256):
            raise ConfigError(f"n_mels must be an integer in [1, 256], got {self.n_mels!r}")
        if not (isinstance(self.audio_model, str) and self.audio_model):
            raise ConfigError(f"audio_model must be {LOG_MEL!r}, a torchaudio bundle name such as 'WAV2VEC2_BASE' or "
                             f"a checkpoint path, got {self.audio_model!r}")
        if not (isinstance(self.frame_batch, int) and self.frame_batch >= 1):
            raise ConfigError(f"frame_batch must be an integer >= 1, got {self.frame_batch!r}")

    @property
    def audio_hop_samples(self) -> int:
        """The audio hop in samples, what every audio encoder counts tokens by (validate: a whole number)."""
        return round(self.audio_hop * self.sample_rate)


# What a preset's fields replace: the values of a plain ExtractSettings (read before any preset applies).
_LAMFLOW_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExtractSettings)}


@dataclass(frozen=True)
class ImageSettings(ClipSettings):
    """How one image becomes tokens (pipelines/images.py): the CLIP model's own preprocessing and its ViT's
    output tokens. Nothing else is chosen: the model fixes the input size, the crop and the token grid."""

    kind: ClassVar[str] = "image"

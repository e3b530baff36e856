"""Pretrained audio encoders beside log-mel: one token per hop, like every audio encoder of lamflow.

``--audio-model`` (``ExtractSettings.audio_model``) names the encoder:

- ``"log-mel"`` (default): :class:`~lamflow.pipelines.audio_tokens.AudioTokenizer`.
- a torchaudio wav2vec2-family bundle name (``WAV2VEC2_BASE``, ``HUBERT_BASE``, ``WAVLM_BASE`` ...):
  weights from torchaudio's download cache (``torch.hub.get_dir()/checkpoints``), downloaded there when
  missing unless ``HF_HUB_OFFLINE=1`` (lamflow's offline switch, as for CLIP weights); a bundle that can
  be neither found nor fetched fails with one line saying what to do.
- a local checkpoint file, read with ``torch.load(weights_only=True)`` (nothing is unpickled), either
  - a wav2vec2 / HuBERT / WavLM model: ``{"config": kwargs of torchaudio.models.wav2vec2_model (or
    wavlm_model), "state_dict": model.state_dict(), "model_type": "Wav2Vec2" | "WavLM" (default
    Wav2Vec2), "sample_rate": 16000 (default), "normalize_waveform": False (default)}`` saved with
    ``torch.save``; or
  - PANNs CNN14 as published (``Cnn14_mAP=0.431.pth``: ``{"model": state_dict, ...}``, or the state dict
    alone), loaded into :class:`~lamflow.pipelines.cnn14.Cnn14`.

Tokens, whatever the model: token i covers samples [i*H, (i+1)*H) (H = ``audio_hop`` in samples), is
stamped i*hop seconds, and a final partial hop gets a token (ceil(samples / H) tokens).

- wav2vec2 family: the encoder's last-layer output (the pretraining head and any ASR head are left
  out), one frame per ``frame_step`` samples centred on sample j*frame_step, averaged over the frames
  centred in the hop; ``audio_hop`` must be a whole number of frames (20 ms for the published models).
  Audio is run through the model in windows of about ``CONTEXT_SECONDS`` (whole hops), so memory does
  not grow with the length; each window sees only its own audio.
- CNN14: the 2048-d clip embedding (``fc1``) of each hop's audio on its own, as the QVHighlights field's
  PANNs features are made (one per 2-s clip: ``--audio-hop 2``); hops shorter than the 5 poolings
  accept (0.31 s at 32 kHz) are refused, a final partial hop is zero-padded to that length if shorter.

The checkpoint's sha256, the token rate and every choice above are recorded in provenance.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

from lamflow.errors import LamflowError
from lamflow.fileio import file_sha256
from lamflow.pipelines.audio_tokens import TIMESTAMP_RULE, AudioTokenizer, hop_count, mono_hops
from lamflow.pipelines.cnn14 import Cnn14
from lamflow.pipelines.settings import LOG_MEL, ExtractSettings

TORCHAUDIO_MODELS_URL = "https://download.pytorch.org/torchaudio/models/"  # where torchaudio's bundles live
CONTEXT_SECONDS = 30.0  # wav2vec2-family models see the audio in windows of about this length
WINDOW_BATCH = 8  # CNN14 hops embedded at a time
WAV2VEC2_FACTORIES = {"Wav2Vec2": torchaudio.models.wav2vec2_model, "WavLM": torchaudio.models.wavlm_model}
# torchaudio's default feature extractor (used when a config gives None): (channels, kernel, stride) per layer.
DEFAULT_CONV_LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


class AudioModelError(LamflowError, RuntimeError):
    """The requested audio model cannot be loaded or does not fit the settings; the message says what to pass."""


def wav2vec2_bundles() -> list[str]:
    """Names of torchaudio's wav2vec2-family pipeline bundles (what --audio-model accepts by name)."""
    return sorted(
        name for name in dir(torchaudio.pipelines)
        if name.isupper() and isinstance(getattr(torchaudio.pipelines, name), torchaudio.pipelines.Wav2Vec2Bundle)
    )


class PretrainedAudioEncoder:
    """Base of the pretrained encoders: sample-rate and hop checks, token counts, timestamps, provenance."""

    kind = ""

    def __init__(self, name: str, settings: ExtractSettings, model_rate: int, weights_sha256: str | None, dim: int):
        if settings.sample_rate != model_rate:
            raise AudioModelError(
                f"audio model {name!r} runs on {model_rate} Hz audio but sample_rate is {settings.sample_rate}; "
                f"pass --sample-rate {model_rate}"
            )
        self.model = name
        self.sample_rate = settings.sample_rate
        self.hop = float(settings.audio_hop)
        self.hop_samples = settings.audio_hop_samples
        self.device = torch.device(settings.device)
        self.weights_sha256 = weights_sha256
        self.dim = dim

    def count(self, n_samples: int) -> int:
        return hop_count(n_samples, self.hop_samples)

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wave, n_tokens, timestamps = mono_hops(wave, self.hop_samples, self.hop)
        if n_tokens == 0:
            return np.zeros((0, self.dim), np.float32), timestamps
        tokens = self._tokens(torch.from_numpy(wave), n_tokens)
        return tokens.float().cpu().numpy(), timestamps

    def _tokens(self, wave: torch.Tensor, n_tokens: int) -> torch.Tensor:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return {
            "encoder": self.kind,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "torch_version": torch.__version__,
            "torchaudio_version": torchaudio.__version__,
            "sample_rate": self.sample_rate,
            "hop_seconds": self.hop,
            "hop_samples": self.hop_samples,
            "dim": self.dim,
            "timestamps": TIMESTAMP_RULE,
            "channels": "mono (channels averaged by ffmpeg)",
        }


def _conv_geometry(conv_layers: list[tuple[int, int, int]] | None) -> tuple[int, int]:
    """(frame step, receptive field) in samples of a wav2vec2 convolutional feature extractor."""
    step, field = 1, 1
    for _, kernel, stride in conv_layers or DEFAULT_CONV_LAYERS:
        field += (kernel - 1) * step
        step *= stride
    return step, field


class Wav2Vec2Encoder(PretrainedAudioEncoder):
    """A torchaudio wav2vec2 / HuBERT / WavLM model; last-layer frames mean-pooled per hop."""

    kind = "torchaudio wav2vec2-family encoder, last layer, frames mean-pooled per hop"

    def __init__(self, name: str, model: nn.Module, conv_layers: list[tuple[int, int, int]] | None,
                 normalize_waveform: bool, model_rate: int, weights_sha256: str | None, settings: ExtractSettings):
        self.frame_step, self.receptive_field = _conv_geometry(conv_layers)
        super().__init__(name, settings, model_rate, weights_sha256, int(model.encoder.feature_projection.projection.out_features))
        if self.hop_samples % self.frame_step:
            frame_seconds = self.frame_step / self.sample_rate
            raise AudioModelError(
                f"audio_hop {settings.audio_hop:g} s is {self.hop_samples} samples, not a whole number of {name!r} "
                f"frames ({self.frame_step} samples = {self.frame_step / self.sample_rate:g} s); "
                f"pass e.g. --audio-hop {frame_seconds:g} or {5 * frame_seconds:g}"
            )
        self.net = model.to(self.device).eval()
        self.normalize_waveform = normalize_waveform
        self.hops_per_window = max(1, round(CONTEXT_SECONDS / settings.audio_hop))

    def _tokens(self, wave: torch.Tensor, n_tokens: int) -> torch.Tensor:
        sums = torch.zeros(n_tokens, self.dim)
        counts = torch.zeros(n_tokens)
        half = self.receptive_field // 2
        window = self.hops_per_window * self.hop_samples
        for start in range(0, len(wave), window):
            stop = min(start + window, len(wave))
            n_frames = math.ceil((stop - start) / self.frame_step)
            # Frame j sees [start + j*step - half, ... + receptive field): centred on start + j*step.
            # Outside the signal is silence; each window keeps its own edges.
            chunk = torch.zeros((n_frames - 1) * self.frame_step + self.receptive_field)
            first, last = max(0, start - half), min(len(wave), start - half + len(chunk))
            chunk[first - (start - half) : last - (start - half)] = wave[first:last]
            if self.normalize_waveform:
                chunk = nn.functional.layer_norm(chunk, chunk.shape)
            features, _ = self.net.feature_extractor(chunk[None].to(self.device), None)
            # The encoder's output, last layer: the pretraining or ASR head (model.aux) is not used.
            frames = self.net.encoder(features, None)[0, :n_frames].float().cpu()
            owner = (start + torch.arange(n_frames) * self.frame_step) // self.hop_samples
            sums.index_add_(0, owner, frames)
            counts.index_add_(0, owner, torch.ones(n_frames))
        return sums / counts.clamp_min(1)[:, None]

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "layer": "last transformer layer (encoder output)",
            "frame_step_samples": self.frame_step,
            "receptive_field_samples": self.receptive_field,
            "pooling": "mean of the frames centred in each hop",
            "context_seconds": self.hops_per_window * self.hop,
            "normalize_waveform": self.normalize_waveform,
        }


class Cnn14Encoder(PretrainedAudioEncoder):
    """PANNs CNN14: the clip embedding of each hop's audio."""

    kind = "PANNs CNN14 clip embedding (fc1) per hop"

    def __init__(self, name: str, model: Cnn14, weights_sha256: str | None, settings: ExtractSettings):
        super().__init__(name, settings, model.config.sample_rate, weights_sha256, model.config.embedding_dim)
        self.min_samples = model.config.min_samples
        if self.hop_samples < self.min_samples:
            raise AudioModelError(
                f"audio_hop {settings.audio_hop:g} s is shorter than CNN14 accepts ({self.min_samples} samples = "
                f"{self.min_samples / self.sample_rate:g} s); pass e.g. --audio-hop 2 (the QVHighlights field's "
                f"PANNs features are one per 2-s clip)"
            )
        self.net = model.to(self.device).eval()

    def _tokens(self, wave: torch.Tensor, n_tokens: int) -> torch.Tensor:
        whole = len(wave) // self.hop_samples
        tokens = []
        for first in range(0, whole, WINDOW_BATCH):
            stop = min(first + WINDOW_BATCH, whole)
            hops = wave[first * self.hop_samples : stop * self.hop_samples].reshape(stop - first, self.hop_samples)
            tokens.append(self.net.embed(hops.to(self.device)).float().cpu())
        if whole < n_tokens:  # the final partial hop, on its own, zero-padded up to CNN14's minimum if shorter
            rest = wave[whole * self.hop_samples :]
            rest = nn.functional.pad(rest, (0, max(0, self.min_samples - len(rest))))
            tokens.append(self.net.embed(rest[None].to(self.device)).float().cpu())
        return torch.cat(tokens)

    def provenance(self) -> dict[str, Any]:
        config = self.net.config
        return {
            **super().provenance(),
            "architecture": f"Cnn14 (widths {list(config.widths)}, STFT window {config.window}, hop {config.hop}, "
                            f"{config.mel_bins} mel bins)",
            "pooling": "each hop's audio embedded on its own (fc1 after max+mean pooling over time)",
            "final_partial_hop": f"zero-padded to {self.min_samples} samples when shorter",
        }


def _load_checkpoint(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files come in several types
        raise AudioModelError(
            f"audio model checkpoint {path!r} cannot be read with torch.load(weights_only=True) ({exc}); "
            f"save tensors and plain values only (see lamflow.pipelines.audio_models)"
        ) from exc


def _wav2vec2_from(name: str, model_type: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    factory = WAV2VEC2_FACTORIES.get(model_type)
    if factory is None:
        raise AudioModelError(f"{name}: model_type must be one of {sorted(WAV2VEC2_FACTORIES)}, got {model_type!r}")
    try:
        model = factory(**config)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # wrong config keys or a state dict of another shape
        raise AudioModelError(f"{name}: the state_dict does not load into torchaudio's {model_type} model built "
                              f"from its config ({exc})") from exc
    return model


def _from_checkpoint(path: str, settings: ExtractSettings) -> PretrainedAudioEncoder:
    data = _load_checkpoint(path)
    sha256 = file_sha256(path)
    if isinstance(data, dict) and "config" in data and "state_dict" in data:
        model = _wav2vec2_from(path, data.get("model_type", "Wav2Vec2"), dict(data["config"]), data["state_dict"])
        return Wav2Vec2Encoder(path, model, data["config"].get("extractor_conv_layer_config"),
                               bool(data.get("normalize_waveform", False)), int(data.get("sample_rate", 16000)),
                               sha256, settings)
    state = data.get("model", data) if isinstance(data, dict) else None
    if isinstance(state, dict) and "conv_block1.conv1.weight" in state:
        try:
            model = Cnn14.from_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise AudioModelError(
                f"{path}: looks like a PANNs CNN14 checkpoint but does not load into Cnn14 ({exc})"
            ) from exc
        return Cnn14Encoder(path, model, sha256, settings)
    raise AudioModelError(
        f"audio model checkpoint {path!r} is neither a wav2vec2-family model ({{'config', 'state_dict'}}) nor a "
        f"PANNs CNN14 state dict ({{'model': ...}} with conv_block1..6, fc1); see lamflow.pipelines.audio_models"
    )


def _bundle_weights(name: str) -> str:
    """The local file of bundle ``name``'s weights, downloaded into torchaudio's cache when missing."""
    bundle = getattr(torchaudio.pipelines, name)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(bundle._path))
    if os.path.isfile(cached):
        return cached
    advice = ("copy the file there from a connected machine, or pass a local checkpoint path "
              "(see lamflow.pipelines.audio_models)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise AudioModelError(f"torchaudio bundle {name} is not in the download cache ({cached}) and downloads are "
                              f"off (HF_HUB_OFFLINE=1); {advice}")
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    try:
        # torch.hub announces downloads on stdout; a failure is the one line below.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.hub.download_url_to_file(TORCHAUDIO_MODELS_URL + bundle._path, cached, progress=False)
    except Exception as exc:  # network and filesystem errors come in many types
        raise AudioModelError(
            f"could not fetch torchaudio bundle {name} ({type(exc).__name__}: {exc}); it is not in the download "
            f"cache ({cached}). Without internet access, {advice}"
        ) from None
    return cached


def _from_bundle(name: str, settings: ExtractSettings) -> PretrainedAudioEncoder:
    weights = _bundle_weights(name)
    bundle = getattr(torchaudio.pipelines, name)
    wrapped = bundle.get_model()  # reads the cached weights
    model = getattr(wrapped, "model", wrapped)  # torchaudio wraps models that normalise their input
    return Wav2Vec2Encoder(name, model, bundle._params.get("extractor_conv_layer_config"),
                           bool(getattr(wrapped, "normalize_waveform", False)), bundle.sample_rate,
                           file_sha256(weights), settings)


def check_audio_model(settings: ExtractSettings) -> None:
    """Fail fast, in one line, on an audio model no worker could load: an unknown name, or a bundle whose
    weights are neither cached nor downloadable (downloaded here, once, for the workers of this machine)."""
    name = settings.audio_model
    if name == LOG_MEL or os.path.isfile(name):
        return
    if name not in wav2vec2_bundles():
        raise _unknown(name)
    _bundle_weights(name)


def _unknown(name: str) -> AudioModelError:
    return AudioModelError(
        f"audio_model {name!r} is not {LOG_MEL!r}, an existing checkpoint file, or a torchaudio wav2vec2-family "
        f"bundle ({', '.join(wav2vec2_bundles())})"
    )


AudioEncoder = AudioTokenizer | PretrainedAudioEncoder  # wave -> (tokens, start times), .dim, .provenance()


def load_audio_encoder(settings: ExtractSettings) -> AudioEncoder:
    """The audio encoder ``settings.audio_model`` names, built for ``settings`` (rate, hop, device)."""
    name = settings.audio_model
    if name == LOG_MEL:
        return AudioTokenizer(settings)
    if os.path.isfile(name):
        return _from_checkpoint(name, settings)
    if name in wav2vec2_bundles():
        return _from_bundle(name, settings)
    raise _unknown(name)

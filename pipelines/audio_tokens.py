"""Audio tokens: log-mel frames (torchaudio) averaged over fixed hops, one token per ``hop`` seconds.

Token i covers samples [i*H, (i+1)*H) (H = hop in samples) and is the mean of the log-mel frames whose
centres fall in that span; its timestamp is the START of the span, i*hop seconds, matching the video
"start" frame rule. The count is ceil(samples / H): a final partial hop still gets a token.

The mel frames (25 ms window, 10 ms step, or one step per hop when the hop is shorter) are computed in
chunks of ``chunk_tokens`` hops with the neighbouring samples as context, so the result equals a
whole-signal computation while memory for the spectrogram stays bounded on hour-long audio.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchaudio

from lamflow.pipelines.settings import LOG_MEL, ExtractSettings

LOG_FLOOR = 1e-10  # keeps log finite on digital silence
TIMESTAMP_RULE = "start of hop"


def hop_starts(n_tokens: int, hop: float) -> np.ndarray:
    """The timestamp of each audio token, whatever the encoder: the start of its hop, i * hop seconds."""
    return (np.arange(n_tokens, dtype=np.float64) * hop).astype(np.float32)


def hop_count(n_samples: int, hop_samples: int) -> int:
    """Tokens of a wave, whatever the encoder: one per hop, a final partial hop included."""
    return math.ceil(n_samples / hop_samples)


def mono_hops(wave: np.ndarray, hop_samples: int, hop: float) -> tuple[np.ndarray, int, np.ndarray]:
    """(the wave as float32, its token count, the tokens' timestamps): the hop rule every audio encoder shares."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"audio wave must be mono (1-D), got shape {wave.shape}")
    n_tokens = hop_count(len(wave), hop_samples)
    return wave, n_tokens, hop_starts(n_tokens, hop)


class AudioTokenizer:
    """Callable turning a mono float32 wave into (T_a, n_mels) tokens and (T_a,) start times."""

    model = LOG_MEL  # what ExtractSettings.audio_model calls this encoder

    def __init__(self, settings: ExtractSettings, chunk_tokens: int = 600):
        """Tokens of ``settings.n_mels`` bands per ``settings.audio_hop`` seconds of ``settings.sample_rate`` audio
        (validated settings: the hop is a whole number of samples)."""
        self.sample_rate = settings.sample_rate
        self.hop = float(settings.audio_hop)
        self.n_mels = settings.n_mels
        self.hop_samples = settings.audio_hop_samples
        self.mel_step = min(round(0.010 * self.sample_rate), self.hop_samples)
        self.n_fft = round(0.025 * self.sample_rate)
        self.chunk_tokens = chunk_tokens
        # center=False: the signal is padded by hand (zeros, n_fft//2 each side) so that frame j is
        # centred on sample j*mel_step, and chunks can be cut from the padded signal exactly.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.mel_step, n_mels=self.n_mels,
            center=False, power=2.0,
        )

    @property
    def dim(self) -> int:
        return self.n_mels

    def count(self, n_samples: int) -> int:
        return hop_count(n_samples, self.hop_samples)

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wave, n_tokens, timestamps = mono_hops(wave, self.hop_samples, self.hop)
        sums = torch.zeros(n_tokens, self.n_mels)
        counts = torch.zeros(n_tokens)
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(torch.from_numpy(wave), (half, half))
        n_frames = len(wave) // self.mel_step + 1 if len(wave) else 0
        frames_per_chunk = max(1, self.chunk_tokens * self.hop_samples // self.mel_step)
        for first in range(0, n_frames, frames_per_chunk):
            last = min(first + frames_per_chunk, n_frames)  # exclusive
            segment = padded[first * self.mel_step : (last - 1) * self.mel_step + self.n_fft]
            log_mel = self.mel(segment).clamp_min(LOG_FLOOR).log().T  # (frames, n_mels)
            owner = torch.div(torch.arange(first, last) * self.mel_step, self.hop_samples, rounding_mode="floor")
            keep = owner < n_tokens  # a frame centred exactly on the last sample boundary belongs to no token
            sums.index_add_(0, owner[keep], log_mel[keep])
            counts.index_add_(0, owner[keep], torch.ones(int(keep.sum())))
        tokens = (sums / counts.clamp_min(1)[:, None]).numpy()
        return tokens, timestamps

    def provenance(self) -> dict[str, Any]:
        return {
            "encoder": "torchaudio.MelSpectrogram log-mel, mean-pooled per hop",
            "model": self.model,
            "torchaudio_version": torchaudio.__version__,
            "sample_rate": self.sample_rate,
            "hop_seconds": self.hop,
            "hop_samples": self.hop_samples,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "mel_step_samples": self.mel_step,
            "log_floor": LOG_FLOOR,
            "timestamps": TIMESTAMP_RULE,
            "channels": "mono (channels averaged by ffmpeg)",
        }

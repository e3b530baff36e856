"""PANNs CNN14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks"), the audio
encoder behind the QVHighlights field's audio features, with the published layer names.

Module and parameter names match the reference implementation (``Cnn14`` in audioset_tagging_cnn, whose
front end is torchlibrosa's ``Spectrogram`` + ``LogmelFilterBank``), so the official checkpoint
(``Cnn14_mAP=0.431.pth``: ``{"model": state_dict, ...}``) loads with ``load_state_dict(strict=True)``:
``spectrogram_extractor.stft.conv_real.weight``, ``logmel_extractor.melW``, ``bn0``,
``conv_block1..6.{conv1,conv2,bn1,bn2}``, ``fc1``, ``fc_audioset``. The STFT and mel matrices are part of
the state dict, so a loaded checkpoint brings its own; built here they are computed the same way (a
periodic Hann-windowed DFT as two convolutions, Slaney mel filters as librosa makes them).

Channel widths are read from a state dict (:meth:`Cnn14.from_state_dict`), so a small model with the
same layout (tests) goes through exactly the code that loads the published one. Inference only: the
dropout and SpecAugment layers of training are left out (they hold no parameters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

PUBLISHED_WIDTHS = (64, 128, 256, 512, 1024, 2048)
# The published CNN14 front ends, keyed by their STFT window: (sample rate, hop, fmin, fmax).
FRONT_ENDS = {1024: (32000, 320, 50.0, 14000.0), 512: (16000, 160, 50.0, 8000.0), 256: (8000, 80, 50.0, 4000.0)}
AMIN = 1e-10  # power_to_db floor (torchlibrosa's default)
POOLED_BLOCKS = 5  # conv blocks 1-5 halve time and frequency; block 6 does not


@dataclass(frozen=True)
class Cnn14Config:
    widths: tuple[int, ...] = PUBLISHED_WIDTHS  # output channels of conv_block1..6
    embedding_dim: int = 2048  # fc1
    classes: int = 527  # fc_audioset (AudioSet)
    window: int = 1024  # STFT window = n_fft
    mel_bins: int = 64

    @property
    def sample_rate(self) -> int:
        return FRONT_ENDS[self.window][0]

    @property
    def hop(self) -> int:
        return FRONT_ENDS[self.window][1]

    @property
    def min_samples(self) -> int:
        """Shortest input the pooling stack accepts: 2**5 spectrogram frames (centred STFT: 1 + n // hop)."""
        return (2**POOLED_BLOCKS - 1) * self.hop


class _Stft(nn.Module):
    """torchlibrosa.stft.STFT: a centred, reflect-padded DFT as two 1-D convolutions (real, imaginary)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        samples, frequencies = torch.arange(n_fft, dtype=torch.float64), torch.arange(bins, dtype=torch.float64)
        angle = -2 * math.pi * torch.outer(samples, frequencies) / n_fft
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(angle) * window[:, None]).T[:, None, :])
            self.conv_imag.weight.copy_((torch.sin(angle) * window[:, None]).T[:, None, :])

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        return self.conv_real(x)[:, None].transpose(2, 3), self.conv_imag(x)[:, None].transpose(2, 3)


class _Spectrogram(nn.Module):
    """torchlibrosa.stft.Spectrogram (power 2): (batch, samples) -> (batch, 1, frames, n_fft // 2 + 1)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = _Stft(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(wave)
        return real**2 + imag**2


class _LogmelFilterBank(nn.Module):
    """torchlibrosa.stft.LogmelFilterBank: Slaney mel filters (librosa's default), then 10 log10(max(x, amin))."""

    def __init__(self, sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float):
        super().__init__()
        mel = torchaudio.functional.melscale_fbanks(
            n_fft // 2 + 1, fmin, fmax, mel_bins, sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.melW = nn.Parameter(mel, requires_grad=False)  # (freq_bins, mel_bins)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=AMIN))  # ref = 1.0: nothing to subtract


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class Cnn14(nn.Module):
    """CNN14 in inference mode; :meth:`embed` gives the 2048-d ``embedding`` of the reference code."""

    def __init__(self, config: Cnn14Config = Cnn14Config()):
        super().__init__()
        if config.window not in FRONT_ENDS:
            raise ValueError(f"CNN14 STFT window must be one of {sorted(FRONT_ENDS)} (the published front ends), "
                             f"got {config.window}")
        self.config = config
        sample_rate, hop, fmin, fmax = FRONT_ENDS[config.window]
        self.spectrogram_extractor = _Spectrogram(config.window, hop)
        self.logmel_extractor = _LogmelFilterBank(sample_rate, config.window, config.mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        channels = (1, *config.widths)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(channels[i], channels[i + 1]))
        self.fc1 = nn.Linear(config.widths[-1], config.embedding_dim)
        self.fc_audioset = nn.Linear(config.embedding_dim, config.classes)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "Cnn14":
        """A CNN14 shaped like ``state`` (published or smaller widths), with ``state`` loaded strictly."""
        config = Cnn14Config(
            widths=tuple(int(state[f"conv_block{i}.conv1.weight"].shape[0]) for i in range(1, 7)),
            embedding_dim=int(state["fc1.weight"].shape[0]),
            classes=int(state["fc_audioset.weight"].shape[0]),
            window=int(state["spectrogram_extractor.stft.conv_real.weight"].shape[-1]),
            mel_bins=int(state["logmel_extractor.melW"].shape[1]),
        )
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) mono at ``config.sample_rate`` -> (batch, embedding_dim) clip embeddings."""
        x = self.logmel_extractor(self.spectrogram_extractor(wave))  # (batch, 1, frames, mel_bins)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, pool=2 if i <= POOLED_BLOCKS else 1)
        x = torch.mean(x, dim=3)  # over frequency
        x = torch.max(x, dim=2).values + torch.mean(x, dim=2)  # over time
        return F.relu_(self.fc1(x))

"""The ``moment_detr`` extraction preset: the features of moment_detr's own extractor, on lamflow's decoder.

jayleicn/moment_detr's ``run_on_video`` extractor (``data_utils.py``, ``clip/model.py``) makes the CLIP
features its released checkpoint was trained on; QD-DETR, CG-DETR and Lighthouse train on features of the
same kind (the layout: pipelines/npzio.py). This module reproduces them:

- **video**: one frame per 2-s clip. The frames are what its ffmpeg filter chain gives: ``fps=R`` (the
  filter's default rounding, ``near``, and start, the first frame), ``scale=W:H`` with the shorter side 224
  and the longer one ``int(longer * 224 / shorter)`` (the scaler's default flags), ``crop=224:224:x:y``
  centred (``x = int((W - 224) / 2)``), rgb24. R is 0.5, except for a video whose header states a duration
  under one clip plus 0.1 s: R = 2 / max(int(duration), 1), so a 1.5-s video gives 2 frames per second.
  Pixels are divided by 255 and normalised with CLIP's mean and std (+1e-8); the features are the model's
  ``encode_image`` output, not L2-normalised (moment_detr's loaders normalise when they read).
- **query text**: ``last_hidden_state``, the text transformer's output after ``ln_final`` WITHOUT the text
  projection, one row per token from the start token to the end token; ``pooler_output``, the end token's
  row times the projection.

Where this differs from lamflow's own rule (video_decode.frame_filter_graph): lamflow gives ceil(D * fps) frames,
one per started interval, the frame on screen at its start or middle, keeps the display aspect ratio
(bicubic), and L2-normalises projected text tokens. Here the count is whatever ffmpeg's fps filter emits
(round(D / 2) with halves up, at least one: 4 s give 2 clips, 5 s give 3), the frame is the last one before
the clip's middle (the filter rounds to the nearest slot), the stored width and height are scaled (the
sample aspect ratio and rotation are ignored, as moment_detr's probe does), and clip k is stamped k / R,
its start, like the rows of an imported feature file (``import-npz --fps 0.5``). The duration of the short-video rule is the video stream's header
duration, and only when the header also states a frame count (moment_detr reads both or neither, so an
mkv or webm without them is sampled at 0.5 fps whatever its length). Texts longer than the CLIP context are
truncated by open_clip's tokenizer, where moment_detr's raises.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from lamflow.pipelines.clip_encoder import ClipEncoder, ClipWeightsError
from lamflow.pipelines.probe import DecodeLog, MediaInfo
from lamflow.pipelines.settings import MOMENT_DETR as PRESET
from lamflow.pipelines.video_decode import iter_filtered_frames

CLIP_SECONDS = 2.0  # one feature per clip of this length (QVHighlights' clip ids count them)
SIZE = 224  # the crop: the model must take 224 x 224 inputs
SHORT_MARGIN_S = 0.1  # a video shorter than one clip plus this is sampled faster (see frame_rate)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
STD_EPS = 1e-8  # added to the std, as moment_detr's Normalize does
_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


def check_encoder(clip: ClipEncoder) -> None:
    """Raise :class:`ClipWeightsError` unless the CLIP model takes the preset's 224 x 224 crops."""
    if clip.image_size != SIZE:
        raise ClipWeightsError(f"preset {PRESET!r} crops {SIZE} x {SIZE} frames, but {clip.model_name!r} takes "
                               f"{clip.image_size} x {clip.image_size}; use a {SIZE}-px CLIP such as ViT-B-32-quickgelu "
                               "(the published features are CLIP ViT-B/32's)")


def frame_rate(info: MediaInfo) -> float:
    """Frames per second sampled from this video: one per 2-s clip, or for a video whose header states a
    duration under 2.1 s, 2 / max(int(duration), 1) (2 fps under 2 s, 1 fps from 2 s to 2.1 s)."""
    duration = info.video_duration if info.video_header_frames else -1.0
    if 0 < duration < CLIP_SECONDS + SHORT_MARGIN_S:
        return 2 / max(int(duration), 1)
    return 1 / CLIP_SECONDS


def frame_filters(info: MediaInfo) -> list[tuple[str, tuple, dict]]:
    """The ffmpeg filter chain of this video's frames (sampling, scaling, centre crop; see the module doc)."""
    height, width = info.height, info.width
    if height >= width:
        height, width = int(height * SIZE / width), SIZE
    else:
        height, width = SIZE, int(width * SIZE / height)
    x, y = int((width - SIZE) / 2.0), int((height - SIZE) / 2.0)
    return [("fps", (), {"fps": frame_rate(info)}), ("scale", (width, height), {}), ("crop", (SIZE, SIZE, x, y), {})]


def pixels(frames: np.ndarray) -> torch.Tensor:
    """(B, 224, 224, 3) uint8 RGB -> (B, 3, 224, 224) float32: /255, then CLIP's mean and std (+1e-8)."""
    scaled = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    return (scaled - _MEAN) / (_STD + STD_EPS)


def encode_clips(path: str, info: MediaInfo, clip: ClipEncoder, batch: int,
                 log: DecodeLog) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features, timestamps)`` batches: (B, D) float32 raw ``encode_image`` outputs, one per clip,
    and (B,) seconds k / frame_rate(info). Lengths, notes and damage go to ``log`` as for lamflow's frames."""
    rate = frame_rate(info)
    for frames, stamps in iter_filtered_frames(path, info, frame_filters(info), SIZE, rate, batch, log=log):
        yield clip.encode_pixels(pixels(frames), normalize=False), stamps
    if rate != 1 / CLIP_SECONDS:
        log.notes.append(f"video: the header's {info.video_duration:.3f} s are under {CLIP_SECONDS + SHORT_MARGIN_S:g} s, "
                         f"so frames were sampled at {rate:g} fps (moment_detr's rule for videos shorter than a clip)")


def encode_queries(clip: ClipEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-token (K, L, W) ``last_hidden_state`` rows (start to end token; W the text transformer's width),
    pooled (K, D) ``pooler_output`` and token counts; none of them L2-normalised."""
    return clip.encode_texts(texts, project_tokens=False, normalize=False)


def video_provenance(info: MediaInfo) -> dict[str, Any]:
    """What meta.json records of this preset's video features (on top of the CLIP model's provenance)."""
    rate = frame_rate(info)
    return {
        "preset": PRESET,
        "fps": rate,
        "frame_rule": PRESET,
        "filters": ",".join(f"{name}={':'.join([*map(str, args), *(f'{k}={v}' for k, v in kwargs.items())])}"
                            for name, args, kwargs in frame_filters(info)),
        "timestamps": "k/fps: the start of clip [k/fps, (k+1)/fps), whose frame is the last before its middle "
                      "(ffmpeg's fps filter, rounding near)",
        "resize": f"scale: shorter side {SIZE}, longer side truncated (ffmpeg's default scaler), centre crop {SIZE}",
        "image_mean": list(MEAN),
        "image_std": list(STD),
        "std_eps": STD_EPS,
        "normalisation": "none: raw encode_image outputs, as moment_detr's feature files hold",
    }


def text_provenance() -> dict[str, Any]:
    """What meta.json records of this preset's query features (on top of the CLIP model's provenance)."""
    return {
        "preset": PRESET,
        "per_token": "last_hidden_state: ln_final output without the text projection, start to end token",
        "pooled": "pooler_output: the end token's ln_final output @ text_projection",
        "normalisation": "none",
    }

"""Saving and loading per-layer LAM masks as .npz (no pickles), for inspection with `lamflow viz-masks`.

File layout (all plain numpy arrays):
  masks           float32 (samples, layers, L, L), or (samples, layers, heads, L, L) for per-head masks
  segment_names   str (S,)      stream names in sequence order, e.g. ["text", "video", "audio"]
  segment_bounds  int64 (S, 2)  [start, end) of each stream in the concatenated sequence
  padding         bool (samples, L)  True = padding position
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lamflow.errors import DataFileError


@dataclass
class SavedMasks:
    masks: np.ndarray
    segments: list[tuple[str, int, int]]
    padding: np.ndarray


def save_masks(
    path: str | Path,
    masks: Sequence[torch.Tensor],
    segments: Sequence[tuple[str, int, int]],
    key_padding_mask: torch.Tensor | None = None,
) -> Path:
    """Write LAMOutput.masks (one (B, L, L) or (B, H, L, L) tensor per layer) with the batch's segments."""
    if not masks:
        raise ValueError("save_masks got no masks: run the encoder with a LAM mask mode and return_masks=True")
    stacked = torch.stack([m.detach().float().cpu() for m in masks], dim=1).numpy()
    samples, length = stacked.shape[0], stacked.shape[-1]
    padding = np.zeros((samples, length), bool) if key_padding_mask is None else key_padding_mask.cpu().numpy()
    if padding.shape != (samples, length):
        raise ValueError(f"key_padding_mask has shape {padding.shape}, expected {(samples, length)} to match the masks")
    outside = _segment_outside(segments, length)
    if outside:
        raise ValueError(outside)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        masks=stacked,
        segment_names=np.array([name for name, _, _ in segments], dtype=np.str_),
        segment_bounds=np.array([[start, end] for _, start, end in segments], dtype=np.int64).reshape(-1, 2),
        padding=padding.astype(bool),
    )
    return path


def load_masks(path: str | Path) -> SavedMasks:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"mask file {path} does not exist (write one with lamflow.lam.save_masks)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"masks", "segment_names", "segment_bounds", "padding"} - set(data.files)
            if missing:
                raise DataFileError(f"mask file {path} lacks array(s) {sorted(missing)}; it was not written by save_masks")
            masks, names, bounds, padding = (data[k] for k in ("masks", "segment_names", "segment_bounds", "padding"))
    except (ValueError, OSError, zipfile.BadZipFile) as error:  # an object array (pickle), not an .npz, truncated
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(f"mask file {path} cannot be read without unpickling or is damaged ({error})") from None
    if masks.ndim not in (4, 5) or masks.shape[-1] != masks.shape[-2]:
        raise DataFileError(f"{path}: masks must be (samples, layers, [heads,] L, L), got shape {masks.shape}")
    samples, length = masks.shape[0], masks.shape[-1]
    if bounds.shape != (len(names), 2):
        raise DataFileError(f"{path}: segment_bounds must be one [start, end) pair per segment name "
                            f"({len(names)} names), got shape {bounds.shape}")
    segments = [(str(n), int(s), int(e)) for n, (s, e) in zip(names, bounds)]
    outside = _segment_outside(segments, length)  # a boundary off the mask would be drawn nowhere, silently
    if outside:
        raise DataFileError(f"{path}: {outside}")
    if padding.shape != (samples, length):
        raise DataFileError(f"{path}: padding has shape {padding.shape}, expected {(samples, length)} to match the masks")
    return SavedMasks(masks=masks, segments=segments, padding=padding)


def _segment_outside(segments: Sequence[tuple[str, int, int]], length: int) -> str | None:
    """What is wrong when a segment does not lie within the L positions of the masks, else None."""
    for name, start, end in segments:
        if not 0 <= start <= end <= length:
            return f"segment {name!r} [{start}, {end}) lies outside the mask length {length}"
    return None

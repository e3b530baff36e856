"""Heatmaps of saved LAM masks, one PNG per layer, with the modality boundaries drawn and labelled."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from lamflow.errors import DataFileError
from lamflow.lam.masks_io import SavedMasks, load_masks


def render_masks(
    source: str | Path | SavedMasks,
    out_dir: str | Path,
    sample: int = 0,
    layers: Sequence[int] | None = None,
) -> list[Path]:
    """Render one sample's masks to out_dir/layer_XX.png (per-head masks: one panel per head)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    saved = source if isinstance(source, SavedMasks) else load_masks(source)
    samples, n_layers = saved.masks.shape[:2]
    if not 0 <= sample < samples:
        raise DataFileError(f"--sample {sample} is out of range: the file holds samples 0..{samples - 1}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise DataFileError(f"--layers {bad} are out of range: the file holds layers 0..{n_layers - 1}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pad = saved.padding[sample]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # grey = padded rows/columns
    paths = []
    for layer in layers:
        per_head = saved.masks[sample, layer]
        per_head = per_head[None] if per_head.ndim == 2 else per_head
        cols = min(len(per_head), 4)
        rows = math.ceil(len(per_head) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
        for head, (ax, mask) in enumerate(zip(axes.flat, per_head)):
            shown = np.where(pad[:, None] | pad[None, :], np.nan, mask)
            image = ax.imshow(shown, cmap=cmap, interpolation="nearest")
            fig.colorbar(image, ax=ax, fraction=0.046)
            _draw_segments(ax, saved.segments)
            ax.set_title(f"layer {layer}" + (f" head {head}" if len(per_head) > 1 else "") + f" (sample {sample})")
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        for ax in list(axes.flat)[len(per_head):]:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / f"layer_{layer:02d}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _draw_segments(ax, segments: list[tuple[str, int, int]]) -> None:
    """Lines between modality blocks, and each block's name at its centre on both axes."""
    for _, start, _ in segments[1:]:
        ax.axhline(start - 0.5, color="white", linewidth=1.2)
        ax.axvline(start - 0.5, color="white", linewidth=1.2)
    centres = [(start + end - 1) / 2 for _, start, end in segments]
    names = [name for name, _, _ in segments]
    ax.set_xticks(centres, names, rotation=45, ha="right")
    ax.set_yticks(centres, names)

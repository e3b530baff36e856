"""Dump the LAM masks a trained checkpoint produces on one item, for `lamflow viz-masks` and the demo."""
from __future__ import annotations

from pathlib import Path

import torch

from lamflow.lam import save_masks
from lamflow.train.build import build_adapter, build_loader, build_model
from lamflow.train.checkpoint import checkpoint_config, load_checkpoint
from lamflow.train.tasks.spec import HeadFacts


@torch.no_grad()
def checkpoint_masks(checkpoint: str | Path, out: str | Path, split: str = "val", item: int = 0) -> Path:
    """Run the model of ``checkpoint`` on item ``item`` of ``split`` (eval order) and save its per-layer
    masks with the stream boundaries to ``out`` (.npz). Raises ValueError for a mask="none" model."""
    state = load_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint, state)
    if config.model.encoder.mask == "none":
        raise ValueError(f"{checkpoint} is a mask='none' (vanilla attention) model: it has no LAM masks to dump")
    config.data.eval_batch_size = 1  # one item per batch: no padding from other items in the heatmaps
    model = build_model(config, state["input_dims"], HeadFacts.from_state(state))
    model.load_state_dict(state["model"])
    model.eval()
    loader = build_loader(config, split, build_adapter(config.data, split, mode="eval"), mode="eval")
    for index, batch in enumerate(loader):
        if index == item:
            masks, segments, padding = model.attention_masks(batch)
            return save_masks(out, masks, segments, padding)
    raise IndexError(f"split {split!r} of {checkpoint} has fewer than {item + 1} items")

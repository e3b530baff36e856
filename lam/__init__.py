"""Learnable Attention Mask transformer (see docs/LAM_SPEC.md, "The encoder")."""
from lamflow.lam.config import LAMConfig
from lamflow.lam.encoder import LAMEncoder, LAMOutput
from lamflow.lam.masks_io import SavedMasks, load_masks, save_masks
from lamflow.lam.render import render_masks

__all__ = ["LAMConfig", "LAMEncoder", "LAMOutput", "SavedMasks", "load_masks", "save_masks", "render_masks"]

"""Learnable Attention Mask transformer (see LAM_SPEC.md)."""

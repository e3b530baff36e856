"""lamflow: video/audio token extraction and Learnable-Attention-Mask transformers."""
__version__ = "0.1.0"

"""Task heads, losses, the torchrun trainer, checkpoints and official metrics."""

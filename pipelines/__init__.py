"""Extraction: sources -> ffmpeg decode -> CLIP/audio tokens -> WebDataset shards (Dask-distributed)."""

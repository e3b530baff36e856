"""Collate items of several token streams into one padded, time-stamped sequence (the batch contract).

Each stream keeps its own rate: video frames every 0.5 s and audio hops every 0.1 s are not resampled to a
common grid. Instead every token carries its time in seconds (``timestamps``), so the model can align streams
in time; text tokens have no time and get 0. Per stream the items are zero-padded to the longest in the batch,
then the stream blocks are concatenated in the configured order:

    [ text block (T_text_max) | video block (T_video_max) | audio block (T_audio_max) ]

``segments`` says where each block sits, ``padding_mask`` marks padded positions, ``modality_ids`` holds the
stream's index in the configured order for every position of its block (padding included).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch


def stream_tokens(item: Mapping[str, Any], stream: str, max_tokens: Mapping[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens T x D, timestamps T) of one item's stream, truncated to ``max_tokens[stream]`` (first tokens kept)."""
    try:
        tokens, times = item["streams"][stream], item["timestamps"][stream]
    except KeyError:
        raise KeyError(
            f"item {item.get('sample_id')!r} (key {item.get('key')!r}) has no stream {stream!r}; it provides "
            f"{sorted(item.get('streams', {}))}: set LoaderConfig.streams to streams the shards and task provide"
        ) from None
    limit = (max_tokens or {}).get(stream)
    if limit is not None:
        tokens, times = tokens[:limit], times[:limit]
    return tokens, times


def total_tokens(item: Mapping[str, Any], streams: Sequence[str], max_tokens: Mapping[str, int] | None = None) -> int:
    """Sequence length of an item after truncation: the length that bucketing sorts by."""
    return sum(len(stream_tokens(item, stream, max_tokens)[0]) for stream in streams)


def _writable(array: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays (e.g. np.frombuffer output from a custom text_encoder).
    # Decoded .npy members are writable, so the copy only costs something in that rare case.
    return array if array.flags.writeable else array.copy()


def _pad_stream(items: Sequence[Mapping[str, Any]], stream: str, max_tokens: Mapping[str, int] | None,
                pad_to: int | None):
    pairs = [stream_tokens(item, stream, max_tokens) for item in items]
    dims = {tokens.shape[1] for tokens, _ in pairs}
    if len(dims) != 1:
        keys = [item.get("key") for item in items]
        raise ValueError(f"stream {stream!r}: feature sizes {sorted(dims)} differ within a batch (keys {keys}); "
                         "mixing shards extracted with different models is not supported")
    longest = pad_to if pad_to is not None else max(len(tokens) for tokens, _ in pairs)
    values = torch.zeros(len(items), longest, dims.pop())
    padding = torch.ones(len(items), longest, dtype=torch.bool)
    times = torch.zeros(len(items), longest)
    for row, (tokens, stamps) in enumerate(pairs):
        count = len(tokens)
        # torch converts float16 -> float32 during the copy, much faster than numpy's astype.
        values[row, :count] = torch.from_numpy(_writable(tokens))
        times[row, :count] = torch.from_numpy(_writable(stamps))
        padding[row, :count] = False
    return values, padding, times


def collate_streams(
    items: Sequence[Mapping[str, Any]], streams: Sequence[str], max_tokens: Mapping[str, int] | None = None,
    fixed_lengths: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The stream part of the batch contract for ``items`` (task targets are added by ``task.collate``).

    With ``fixed_lengths`` every stream is cut and padded to exactly its length, whatever else is in the
    batch: position j of the sequence then always holds the same stream and token slot (the layout the
    "fixed" mask generator needs, whose mask columns are absolute positions).
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {
        "keys": [item["key"] for item in items],
        "sample_ids": [item["sample_id"] for item in items],
        "streams": {},
        "stream_padding": {},
        "stream_timestamps": {},
        "segments": [],
    }
    start = 0
    modality_blocks = []
    limits = {**(max_tokens or {}), **(fixed_lengths or {})}
    for index, stream in enumerate(streams):
        values, padding, times = _pad_stream(items, stream, limits, (fixed_lengths or {}).get(stream))
        batch["streams"][stream] = values
        batch["stream_padding"][stream] = padding
        batch["stream_timestamps"][stream] = times
        batch["segments"].append((stream, start, start + values.shape[1]))
        start += values.shape[1]
        modality_blocks.append(torch.full(padding.shape, index, dtype=torch.long))
    batch["padding_mask"] = torch.cat([batch["stream_padding"][s] for s in streams], dim=1)
    batch["modality_ids"] = torch.cat(modality_blocks, dim=1)
    batch["timestamps"] = torch.cat([batch["stream_timestamps"][s] for s in streams], dim=1)
    batch["duration"] = torch.tensor([float(item["duration"]) for item in items])
    return batch

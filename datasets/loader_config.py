"""LoaderConfig: how shards are streamed into batches, checked field by field (a bad value is a FieldError
naming the field and what it allows)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lamflow.datasets.stream import TASK_STREAMS
from lamflow.errors import FieldError


def _check(condition: bool, name: str, expected: str, value: Any) -> None:
    if not condition:
        raise FieldError("LoaderConfig", name, value, expected)


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML and JSON give both)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class LoaderConfig:
    """How shards are streamed into batches (which shards, and the seed, are given to the loader)."""

    # Streams concatenated into one sequence, in this order (the query text first so it reads as a prefix).
    streams: tuple[str, ...] = ("text", "video", "audio")
    # Streams a sample must not have empty: one without tokens there is skipped and counted (skipped_empty).
    required_streams: tuple[str, ...] = ("video",)
    # Items per batch on each rank (the global batch is batch_size * world_size * optim.grad_accum).
    batch_size: int = 8
    # DataLoader worker processes per rank; shards are split between workers.
    num_workers: int = 0
    # Items held in the shuffle buffer during training (larger = better mixing, more memory).
    shuffle_buffer: int = 256
    # Items per training epoch over all ranks; null = one pass over the shards.
    samples_per_epoch: int | None = None
    # Group items of similar length into a batch to waste less compute on padding.
    bucket_by_length: bool = True
    # Items gathered before sorting them into length buckets (at least batch_size).
    bucket_buffer: int = 64
    # Optional cap on tokens per stream, e.g. {audio: 2000}; longer streams are truncated (first tokens kept).
    max_stream_tokens: dict[str, int] | None = None
    # Optional fixed layout, e.g. {text: 16, video: 32, audio: 320}: every stream is cut (first tokens kept) and
    # padded to exactly this many tokens, so each sequence position always holds the same stream and slot
    # whatever the batch (the "fixed" mask generator's columns are absolute positions: it needs this).
    fixed_lengths: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`FieldError` naming the first field whose value is not allowed (also after edits)."""
        for name in ("streams", "required_streams"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))  # YAML gives lists
        _check(
            isinstance(self.streams, tuple) and bool(self.streams) and all(isinstance(s, str) for s in self.streams)
            and len(set(self.streams)) == len(self.streams),
            "streams", "a non-empty list of distinct stream names, e.g. ['text', 'video', 'audio']", self.streams,
        )
        _check(isinstance(self.required_streams, tuple) and set(self.required_streams) <= set(self.streams) - TASK_STREAMS,
               "required_streams", f"shard streams listed in streams {[s for s in self.streams if s not in TASK_STREAMS]}",
               self.required_streams)
        for name, minimum in (("batch_size", 1), ("num_workers", 0), ("shuffle_buffer", 1), ("bucket_buffer", 1)):
            value = getattr(self, name)
            _check(is_int(value) and value >= minimum, name, f"an int >= {minimum}", value)
        _check(self.samples_per_epoch is None or (is_int(self.samples_per_epoch) and self.samples_per_epoch >= 1),
               "samples_per_epoch", "null (one pass) or an int >= 1", self.samples_per_epoch)
        _check(isinstance(self.bucket_by_length, bool), "bucket_by_length", "true or false", self.bucket_by_length)
        _check(not self.bucket_by_length or self.bucket_buffer >= self.batch_size, "bucket_buffer",
               f"at least batch_size ({self.batch_size}) items when bucket_by_length is on", self.bucket_buffer)
        limits = self.max_stream_tokens
        _check(limits is None or (isinstance(limits, dict) and all(
            name in self.streams and is_int(n) and n >= 1 for name, n in limits.items())),
            "max_stream_tokens", f"null or {{stream: int >= 1}} with streams from {list(self.streams)}", limits)
        fixed = self.fixed_lengths
        _check(fixed is None or (isinstance(fixed, dict) and set(fixed) == set(self.streams) and all(
            is_int(n) and n >= 1 for n in fixed.values())),
            "fixed_lengths", f"null or {{stream: int >= 1}} for every stream of {list(self.streams)}", fixed)
        _check(fixed is None or limits is None, "max_stream_tokens",
               "null when fixed_lengths is set (fixed_lengths already cuts every stream)", limits)

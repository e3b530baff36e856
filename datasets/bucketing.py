"""Forming batches from a stream of items: plain chunks, or length buckets that cut padding.

Length bucketing sorts a buffer of items by their total token count and batches neighbours, so items of
similar length share a batch; the batches of each buffer are then emitted in random order so training does
not see lengths in a sweep. Both functions emit full batches until the stream ends and one final partial batch,
so a stream of n items always gives ceil(n / batch_size) batches (the loader plans epoch lengths on this).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

Item = TypeVar("Item")


def batched(items: Iterable[Item], batch_size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sorted_batches(buffer: list[Item], batch_size: int, length: Callable[[Item], int]) -> list[list[Item]]:
    ordered = sorted(buffer, key=length)  # stable: equal lengths keep stream order (determinism)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def bucket_batches(
    items: Iterable[Item],
    batch_size: int,
    buffer_size: int,
    length: Callable[[Item], int],
    rng: np.random.Generator | None,
) -> Iterator[list[Item]]:
    """Sort each buffer of ``buffer_size`` items by ``length`` and batch neighbours.

    The leftover (< batch_size longest items of a buffer) is carried into the next buffer so every batch but
    the last is full. ``rng`` shuffles the batch order within a buffer; None keeps ascending length order.
    """
    if buffer_size < batch_size:
        raise ValueError(f"bucket buffer ({buffer_size}) must hold at least one batch ({batch_size})")
    buffer: list[Item] = []
    for item in items:
        buffer.append(item)
        if len(buffer) < buffer_size:
            continue
        batches = _sorted_batches(buffer, batch_size, length)
        buffer = batches.pop() if len(batches[-1]) < batch_size else []
        order = rng.permutation(len(batches)) if rng is not None else range(len(batches))
        for index in order:
            yield batches[index]
    if buffer:
        yield from _sorted_batches(buffer, batch_size, length)

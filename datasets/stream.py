"""The streaming stages between shard urls and task items, each a small iterator -> iterator function.

Order inside one DataLoader worker (see ``lamflow.datasets.loader`` for how the stages are wired):

    shard urls -> tar_samples -> count_shard_samples -> decode_samples -> expand_items -> shuffle_items

Damaged or unusable data never stops the stream and never reaches the model: an unreadable or truncated
tar, a member with garbage bytes, a missing field, non-finite values, a feature width other than the shard
set's, or an empty required stream are counted in a ``SkipCounter`` with a logged reason and the stream
goes on. Only ``.npy`` and ``meta.json`` members of the contract are decoded (``lamflow.contract``:
``.npy`` with ``allow_pickle=False``); every other member is ignored, so no pickle path exists.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from lamflow.contract import (
    META,
    TEXT_STREAM,
    TEXT_TOKENS,
    ContractError,
    decode_meta,
    decode_npy,
    raw_samples,
    timestamps_field,
    tokens_field,
)

log = logging.getLogger(__name__)

# Streams that come from the task (per-query text), not from a shard's video-level arrays.
TASK_STREAMS = frozenset({TEXT_STREAM})
MAX_KEPT_REASONS = 100


class CorruptSample(ValueError):
    """A shard sample that does not satisfy the shard contract (counted as ``skipped_corrupt``)."""

    counter = "skipped_corrupt"


class WrongWidth(CorruptSample):
    """A stream whose feature width differs from the shard set's (another model's features)."""

    counter = "skipped_width"


class EmptyStream(CorruptSample):
    """A stream the run requires holds no token (e.g. an audio-only input has no video)."""

    counter = "skipped_empty"


@dataclass
class SkipCounter:
    """Counts and logs skipped data; ``take()`` hands the increments to the main process and resets."""

    counts: Counter = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)

    def skip(self, counter: str, reason: str, count: int = 1) -> None:
        log.warning("skipped (%s): %s", counter, reason)
        self.counts[counter] += count
        if len(self.reasons) < MAX_KEPT_REASONS:
            self.reasons.append(reason)

    def read_error(self, error: Exception) -> bool:
        """webdataset handler: count the damaged tar/url and continue with the next member or shard."""
        # webdataset appends the stream object and the url to args; keep the readable parts.
        detail = " ".join(str(a) for a in error.args if isinstance(a, (str, int)))
        self.skip("read_errors", f"{type(error).__name__}: {detail}")
        return True

    def take(self) -> dict[str, Any]:
        delta = {"counts": dict(self.counts), "reasons": list(self.reasons)}
        self.counts.clear()
        self.reasons.clear()
        return delta


def tar_samples(urls: Iterable[str], counter: SkipCounter) -> Iterator[dict]:
    """Raw webdataset samples ({"__key__", "__url__", "<field>": bytes}) of the shards in order."""
    return raw_samples(urls, handler=counter.read_error)


def count_shard_samples(
    samples: Iterable[dict], expected: Mapping[str, int], counter: SkipCounter
) -> Iterator[dict]:
    """Pass samples through; a shard that yields fewer samples than its index promised counts as missing.

    ``expected`` holds the shards this stream reads; the check runs only when the stream is read to the end.
    """
    seen: Counter = Counter()
    for sample in samples:
        seen[sample.get("__url__")] += 1
        yield sample
    for url, count in expected.items():
        if seen[url] < count:
            reason = f"{url}: read {seen[url]} of {count} samples listed in the shard index"
            counter.skip("missing_samples", reason, count=count - seen[url])


def _read_npy(sample: dict, name: str) -> np.ndarray:
    data = sample.get(name)
    if data is None:
        raise CorruptSample(f"missing field {name}")
    try:
        array = decode_npy(data, name)
    except ContractError as error:
        raise CorruptSample(str(error)) from None
    if array.dtype.kind != "f":
        raise CorruptSample(f"{name}: dtype {array.dtype}, expected float16/float32")
    if not np.isfinite(array).all():
        raise CorruptSample(f"{name}: contains NaN or inf")
    return array


def _read_meta(sample: dict) -> dict:
    data = sample.get(META)
    if data is None:
        raise CorruptSample(f"missing field {META}")
    try:
        meta = decode_meta(data, META)
    except ContractError as error:
        raise CorruptSample(str(error)) from None
    duration = meta.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration >= 0:
        raise CorruptSample(f"meta.json: 'duration' must be a number >= 0, got {duration!r}")
    return meta


def _read_texts(sample: dict, meta: dict) -> tuple[np.ndarray | None, list[str], list[int]]:
    if TEXT_TOKENS not in sample:
        return None, [], []
    tokens = _read_npy(sample, TEXT_TOKENS)
    texts = meta.get("texts")
    if tokens.ndim != 3 or not isinstance(texts, list) or len(texts) != tokens.shape[0]:
        raise CorruptSample(
            f"text.npy shape {tokens.shape} does not match meta.json texts "
            f"({len(texts) if isinstance(texts, list) else texts!r}); expected K x L_t x D_t with K texts"
        )
    ids, lengths = [], []
    for text in texts:
        length = text.get("tokens") if isinstance(text, dict) else None
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= tokens.shape[1]:
            raise CorruptSample(f"meta.json texts entry {text!r}: 'tokens' must be an int in [0, {tokens.shape[1]}]")
        ids.append(str(text.get("id")))
        lengths.append(length)
    return tokens, ids, lengths


def decode_sample(raw: dict, shard_streams: Sequence[str], widths: Mapping[str, int] | None = None,
                  required: Sequence[str] = ()) -> dict:
    """A raw webdataset sample -> the decoded shard sample that tasks expand into items.

    Returns {"key", "name" (original source name: meta.json "original_name" or "name", else the key), "url", "meta",
    "duration", "streams": {name: T x D array}, "timestamps": {name: T float32 seconds},
    "text_tokens": K x L_t x D_t array or None, "text_ids": [str], "text_lengths": [int]}.
    Raises CorruptSample (or a subclass naming its counter) when the sample breaks the shard contract, when a
    stream's width differs from ``widths`` (when given), or when a ``required`` stream is empty.
    """
    meta = _read_meta(raw)
    streams, timestamps = {}, {}
    for name in shard_streams:
        tokens = _read_npy(raw, tokens_field(name))
        times = _read_npy(raw, timestamps_field(name))
        if tokens.ndim != 2 or times.shape != (tokens.shape[0],):
            raise CorruptSample(
                f"{tokens_field(name)} shape {tokens.shape} / {timestamps_field(name)} shape {times.shape}: expected T x D and T"
            )
        expected = (widths or {}).get(name)
        # An empty stream may be stored (0, 0): its width says nothing.
        if expected is not None and len(tokens) and tokens.shape[1] != expected:
            raise WrongWidth(f"{tokens_field(name)} has width {tokens.shape[1]}, the shard set's is {expected}")
        if name in required and not len(tokens):
            raise EmptyStream(f"stream {name!r} is empty (the run requires it: data.loader.required_streams)")
        streams[name] = tokens
        timestamps[name] = times.astype(np.float32, copy=False)
    text_tokens, text_ids, text_lengths = _read_texts(raw, meta)
    key = raw["__key__"]
    return {
        "key": key,
        "name": str(meta.get("original_name") or meta.get("name") or key),
        "url": raw.get("__url__", ""),
        "meta": meta,
        "duration": float(meta["duration"]),
        "streams": streams,
        "timestamps": timestamps,
        "text_tokens": text_tokens,
        "text_ids": text_ids,
        "text_lengths": text_lengths,
    }


def decode_samples(raws: Iterable[dict], shard_streams: Sequence[str], counter: SkipCounter,
                   widths: Mapping[str, int] | None = None, required: Sequence[str] = ()) -> Iterator[dict]:
    for raw in raws:
        try:
            sample = decode_sample(raw, shard_streams, widths, required)
        except CorruptSample as error:
            counter.skip(error.counter, f"sample {raw.get('__key__')!r} in {raw.get('__url__')}: {error}")
            continue
        counter.counts["samples"] += 1
        yield sample


def expand_items(
    samples: Iterable[dict], expand: Callable[[dict], Iterable[dict]], counter: SkipCounter
) -> Iterator[dict]:
    """One decoded sample -> the task's items. Task errors (bad configuration) propagate on purpose."""
    for sample in samples:
        produced = 0
        for item in expand(sample):
            produced += 1
            yield item
        if not produced:
            counter.counts["samples_without_items"] += 1


def shuffle_items(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style buffer shuffle: memory bounded by buffer_size, deterministic for a given rng."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = int(rng.integers(len(buffer)))
        buffer[index], item = item, buffer[index]
        yield item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def assign_shards(weights: Sequence[int], slots: int) -> list[list[int]]:
    """Greedy balance: each shard (in the given order) goes to the slot holding the fewest items so far.

    Every rank computes the same assignment from the same inputs, so each shard has exactly one
    (rank, worker) slot and per-slot item counts are as even as whole shards allow.
    """
    assigned: list[list[int]] = [[] for _ in range(slots)]
    load = [0] * slots
    for shard, weight in enumerate(weights):
        slot = min(range(slots), key=lambda s: (load[s], len(assigned[s]), s))
        assigned[slot].append(shard)
        load[slot] += weight
    return assigned

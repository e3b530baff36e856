"""Task: what the loader and the trainer use of a task adapter (one per task: QVHighlights/MAD moments,
classification, captioning, audio description).

An adapter reads a task's annotations, names the videos they cover, and turns each decoded shard sample of
such a video into items (and a batch of items into the task's targets). The first five members are what
every adapter defines. The others only some tasks have; an adapter that subclasses :class:`Task` inherits
their defaults (an empty value, a no-op), so code reading them needs no ``getattr`` fallback.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar, Iterable, Protocol, Sequence

if TYPE_CHECKING:  # annotations only: the adapters import this module
    from lamflow.datasets.qvhighlights import QVHighlightsQuery
    from lamflow.datasets.texts import TextStore


class Task(Protocol):
    """A task adapter: annotations named by video name, turned into items of decoded shard samples."""

    source: str
    """The annotation file (or label file, or a description of the labels): named in every message."""

    prediction_field: ClassVar[str]
    """The field that identifies a prediction line: "qid" (moments), "key" (classification), "vid"
    (captioning), "ad_id" (audio description); the task's evaluator joins predictions on it."""

    @abstractmethod
    def names(self) -> Iterable[str]:
        """Every name the annotations use for a video; the loader joins them to the shards' samples."""
        ...

    @abstractmethod
    def num_items(self, name: str) -> int:
        """How many items the video ``name`` yields (the loader plans epochs from these counts)."""
        ...

    @abstractmethod
    def items(self, sample: dict, name: str) -> Iterable[dict]:
        """The items of the decoded shard ``sample`` joined to the annotated name ``name``."""
        ...

    @abstractmethod
    def collate(self, items: list[dict]) -> dict:
        """The task's part of a batch (targets, keys of the prediction lines) for ``items``."""
        ...

    every_name_in_shards: ClassVar[bool] = False
    """True: an annotated name that names no sample of the shards is an error (a caption of a video that was
    never extracted). False (default): such names are skipped, because e.g. a QVHighlights file covers videos
    that other shard sets hold."""

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Called in the loader worker before it makes an epoch's items, so a task drawing per-item randomness
        (QVHighlights' window cut) draws it from (seed, epoch) and a resumed epoch yields the same items.
        Default: nothing to draw."""

    class_names: Sequence[str] = ()
    """Classification: the class of each model output, in output order. Default: empty (no classes)."""

    queries: Sequence[QVHighlightsQuery] = ()
    """Moment retrieval: every query of the annotation file; prediction lines map windows back to video time
    and name the video through them. Default: empty (no queries)."""

    text_store: TextStore | None = None
    """Moment retrieval: the text shard set holding the query tokens (``data.*_texts``), whose width is the
    text stream's when the video shards hold no text. Default: None (tokens come from the shards)."""

    def token_ids(self) -> set[int]:
        """Caption tasks: every BPE id of the annotations' captions (start and end included), the caption
        decoder's vocabulary under ``model.caption_vocabulary=train``. Default: empty (no captions)."""
        return set()

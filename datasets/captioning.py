"""Video captioning over lamflow shards: captions joined to shard samples by video name.

Caption files are MSRVTT videodatainfo ``.json`` or ``{"vid", "caption"}`` JSONL, read and validated by
``lamflow.datasets.msrvtt_format.read_captions`` (the caption evaluator reads its references there too) and
tokenised with open_clip's BPE (``lamflow.datasets.caption_text``). Of an MSRVTT file the task takes one
split (``train``, ``validate`` or ``test``), which must be named when the file holds several.

Training reads one item per caption (``per_caption``: each of MSRVTT's 20 captions is a target), evaluation
one item per video (the model writes one caption, scored against all of the video's references). Every
captioned video must be in the shards: a caption naming an unknown video is an error, not a skipped line
(``every_name_in_shards``). Items carry the caption as BPE ids; ``collate`` pads them into
``caption_tokens`` / ``caption_padding`` and lists the video names predictions are written under.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lamflow.datasets.caption_text import collate_captions, encode_caption
from lamflow.datasets.msrvtt_format import CaptionFileError, read_captions
from lamflow.datasets.task import Task


@dataclass(frozen=True)
class Caption:
    vid: str
    text: str
    tokens: tuple[int, ...]  # [START, BPE ids..., END]


def load_captions(path: str | Path, split: str | None = None) -> dict[str, list[Caption]]:
    """``{video name: [Caption, ...]}``, captions in file order: MSRVTT videodatainfo (``.json``; ``split``
    picks one split, and is required when the file holds several) or ``{"vid", "caption"}`` JSONL (any other
    name; a ``split`` is an error: the file has none)."""
    file = read_captions(path, split)
    present = sorted(set(file.splits.values()))
    if split is None and len(present) > 1:
        raise CaptionFileError(f"{path} holds the splits {present}: choose one (the split setting of this task)")
    return {vid: [Caption(vid, text, tuple(encode_caption(text))) for text in texts]
            for vid, texts in file.captions.items()}


class CaptioningTask(Task):
    """Task adapter: one item per caption (``per_caption``, training) or per video (evaluation)."""

    prediction_field = "vid"  # predictions are {"vid", "caption"} lines (lamflow eval captioning)
    every_name_in_shards = True

    def __init__(self, captions: str | Path, split: str | None = None, per_caption: bool = True):
        self.source = str(captions)
        self.captions = load_captions(captions, split)
        self.per_caption = per_caption

    def names(self) -> list[str]:
        return list(self.captions)

    def num_items(self, name: str) -> int:
        return len(self.captions.get(name, ())) if self.per_caption else int(name in self.captions)

    def token_ids(self) -> set[int]:
        """Every BPE id of every caption (start and end included)."""
        return {token for captions in self.captions.values() for caption in captions for token in caption.tokens}

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        # Evaluation items carry the first caption: the target a validation loss would use.
        chosen = self.captions[name] if self.per_caption else self.captions[name][:1]
        for index, caption in enumerate(chosen):
            yield {**sample, "sample_id": f"{name}#{index}", "caption_key": name, "caption": caption.tokens}

    def collate(self, items: list[dict]) -> dict:
        return collate_captions(items)

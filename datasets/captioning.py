"""Video captioning over lamflow shards: captions joined to shard samples by video name.

Caption files (read once, validated, tokenised with open_clip's BPE, ``lamflow.datasets.caption_text``):

- MSRVTT's ``{train_val,test}_videodatainfo.json``: ``videos[{video_id, split}]`` and
  ``sentences[{video_id, caption, sen_id}]`` (20 captions per clip); ``split`` picks one split's videos
  (``train``, ``validate`` or ``test``), and is required when the file holds several;
- JSONL ``{"vid", "caption"}`` lines: several lines of one video are several captions (no splits).

Training reads one item per caption (``per_caption``: each of MSRVTT's 20 captions is a target), evaluation
one item per video (the model writes one caption, scored against all of the video's references). Every
captioned video must be in the shards: a caption naming an unknown video is an error, not a skipped line
(``every_name_in_shards``). Items carry the caption as BPE ids; ``collate`` pads them into
``caption_tokens`` / ``caption_padding`` and lists the video names predictions are written under.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from lamflow.datasets.caption_text import collate_captions, encode_caption
from lamflow.datasets.msrvtt_format import CaptionFileError, caption_field, name_field, read_videodatainfo
from lamflow.fileio import iter_jsonl


def caption_of(record: Mapping[str, Any], field: str, where: str) -> tuple[str, tuple[int, ...]]:
    """(text, BPE ids) of a record's caption field; an empty caption is a :class:`CaptionFileError`."""
    text = caption_field(record, field, where)
    return text, tuple(encode_caption(text))


@dataclass(frozen=True)
class Caption:
    vid: str
    text: str
    tokens: tuple[int, ...]  # [START, BPE ids..., END]


def _msrvtt_captions(path: Path, split: str | None) -> dict[str, list[Caption]]:
    info = read_videodatainfo(path, split)
    if split is None and len(info.present_splits()) > 1:
        raise CaptionFileError(f"{path} holds the splits {info.present_splits()}: choose one (the split setting of this task)")
    captions: dict[str, list[Caption]] = {}
    for vid, text in info.sentences:
        if split is None or info.splits[vid] == split:
            captions.setdefault(vid, []).append(Caption(vid, text, tuple(encode_caption(text))))
    return captions


def _jsonl_captions(path: Path) -> dict[str, list[Caption]]:
    captions: dict[str, list[Caption]] = {}
    for line, record in iter_jsonl(path, "caption file"):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise CaptionFileError(f"{where}: expected an object {{\"vid\", \"caption\"}}")
        vid = name_field(record, "vid", where)
        captions.setdefault(vid, []).append(Caption(vid, *caption_of(record, "caption", where)))
    return captions


def load_captions(path: str | Path, split: str | None = None) -> dict[str, list[Caption]]:
    """``{video name: [Caption, ...]}`` in file order: MSRVTT videodatainfo (``.json``; ``split`` picks one
    split) or ``{"vid", "caption"}`` JSONL (any other name; a ``split`` is an error: the file has none)."""
    path = Path(path)
    if path.suffix == ".json":
        captions = _msrvtt_captions(path, split)
    elif split is not None:
        raise CaptionFileError(f"{path}: a JSONL caption file has no splits; leave the split setting unset "
                               f"(got {split!r}) or give an MSRVTT videodatainfo .json")
    else:
        captions = _jsonl_captions(path)
    if not captions:
        raise CaptionFileError(f"{path} holds no caption" + (f" for split {split!r}" if split else ""))
    return captions


class CaptioningTask:
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

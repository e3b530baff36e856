"""The caption files of the captioning task (datasets/captioning.py) and the caption evaluator
(train/tasks/captioning_eval.py), read and validated once (docs/FORMATS.md, "Captions"):

- MSRVTT's ``{train_val,test}_videodatainfo.json``: ``videos[{video_id, split, ...}]`` and
  ``sentences[{video_id, caption, sen_id}]`` (20 per clip); ``split`` is ``train``, ``validate`` or ``test``;
- JSONL ``{"vid", "caption"}`` lines: several lines of one video are several captions (no splits).

Every error names the file and the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lamflow.errors import DataFileError
from lamflow.fileio import iter_jsonl, read_json

MSRVTT_SPLITS = ("train", "validate", "test")


class CaptionFileError(DataFileError):
    """A caption file that breaks its format (message: file and record, field, fix)."""


@dataclass(frozen=True)
class VideoDataInfo:
    splits: dict[str, str]  # video_id -> its split, every listed video
    sentences: list[tuple[str, str]]  # (video_id, caption) in file order; every video_id is listed

    def present_splits(self) -> list[str]:
        return sorted(set(self.splits.values()))


@dataclass(frozen=True)
class CaptionFile:
    captions: dict[str, list[str]]  # video name -> its captions in file order; only videos with a caption
    splits: dict[str, str]  # MSRVTT: video_id -> its split, every listed video; JSONL: empty


def name_field(record: Mapping[str, Any], field: str, where: str) -> str:
    """A record's non-empty string field naming a video."""
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise CaptionFileError(f"{where}: '{field}' must be a non-empty string (the video name), got {value!r}")
    return value


def caption_field(record: Mapping[str, Any], field: str, where: str) -> str:
    """A record's caption: a string with a non-space character."""
    text = record.get(field)
    if not isinstance(text, str) or not text.strip():
        raise CaptionFileError(f"{where}: '{field}' must be a non-empty caption, got {text!r}; fix or remove the record")
    return text


def read_videodatainfo(path: Path, split: str | None) -> VideoDataInfo:
    """The validated file; ``split`` (when given) must be one its videos have."""
    document = read_json(path, "MSRVTT videodatainfo file")
    if not isinstance(document, dict) or not isinstance(document.get("videos"), list) or not isinstance(
        document.get("sentences"), list
    ):
        raise CaptionFileError(f"{path}: expected an MSRVTT videodatainfo object with lists 'videos' and 'sentences' "
                               "(for {\"vid\", \"caption\"} lines use a .jsonl name)")
    splits: dict[str, str] = {}
    for index, video in enumerate(document["videos"]):
        where = f"{path}: videos[{index}]"
        if not isinstance(video, dict):
            raise CaptionFileError(f"{where}: expected an object with 'video_id' and 'split'")
        vid = name_field(video, "video_id", where)
        if not isinstance(video.get("split"), str):
            raise CaptionFileError(f"{where}: 'split' must be one of {', '.join(MSRVTT_SPLITS)}, got {video.get('split')!r}")
        if vid in splits:
            raise CaptionFileError(f"{where}: video_id {vid!r} is listed twice")
        splits[vid] = video["split"]
    info = VideoDataInfo(splits, [])
    if split is not None and split not in splits.values():
        raise CaptionFileError(f"{path}: no video has split {split!r}; the file's splits are {info.present_splits()}")
    for index, sentence in enumerate(document["sentences"]):
        where = f"{path}: sentences[{index}]"
        if not isinstance(sentence, dict):
            raise CaptionFileError(f"{where}: expected an object with 'video_id' and 'caption'")
        vid = name_field(sentence, "video_id", where)
        if vid not in splits:
            raise CaptionFileError(f"{where}: video_id {vid!r} is not in 'videos'")
        info.sentences.append((vid, caption_field(sentence, "caption", where)))
    return info


def read_captions(path: str | Path, split: str | None = None) -> CaptionFile:
    """The captions of a caption file: MSRVTT videodatainfo (``.json``; ``split`` keeps one split's videos, None
    every video, in the order ``videos`` lists them) or ``{"vid", "caption"}`` JSONL (any other name; a
    ``split`` is an error: the file has none). A file (or split) without a caption is an error."""
    path = Path(path)
    captions: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    if path.suffix == ".json":
        info = read_videodatainfo(path, split)
        splits = info.splits
        chosen: dict[str, list[str]] = {vid: [] for vid, video_split in splits.items() if split in (None, video_split)}
        for vid, text in info.sentences:
            if vid in chosen:
                chosen[vid].append(text)
        captions = {vid: texts for vid, texts in chosen.items() if texts}
    elif split is not None:
        raise CaptionFileError(f"{path}: a JSONL caption file has no splits (got split {split!r}); leave the split "
                               "unset or give an MSRVTT videodatainfo .json")
    else:
        for line, record in iter_jsonl(path, "caption file"):
            where = f"{path}:{line}"
            captions.setdefault(name_field(record, "vid", where), []).append(caption_field(record, "caption", where))
    if not captions:
        raise CaptionFileError(f"{path} holds no caption" + (f" for split {split!r}" if split else ""))
    return CaptionFile(captions, splits)

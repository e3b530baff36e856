"""``--texts`` files: queries or captions to encode with the CLIP text tower, grouped by video name.

A jsonl file, one text per line, with a video column (``key``, ``vid`` or ``video_id``), a text column
(``text``, ``query``, ``caption`` or ``sentence``) and an id column (``id``, ``qid`` or ``sen_id``). A
QVHighlights annotation file ({vid, query, qid, ...}) works as is. Video names join to inputs by the
shard contract's rules (:func:`lamflow.contract.join_names`), the same rules training uses to join
annotations, so ``vid`` ``NUsG9BgSes0_210.0_360.0`` matches the file ``NUsG9BgSes0_210.0_360.0.mp4``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from lamflow.errors import DataFileError
from lamflow.fileio import iter_jsonl

VIDEO_COLUMNS = ("key", "vid", "video_id")
TEXT_COLUMNS = ("text", "query", "caption", "sentence")
ID_COLUMNS = ("id", "qid", "sen_id")


def _pick(row: dict, columns: tuple[str, ...], path: Path, number: int, what: str) -> object:
    for name in columns:
        if name in row:
            return row[name]
    raise DataFileError(f"{path}:{number} has no {what} column; name it one of {list(columns)} (found {sorted(row)})")


def load_texts(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Read a texts jsonl into {video name: [{"id", "text"}, ...]} in file order (duplicate ids dropped)."""
    path = Path(path)
    grouped: dict[str, list[dict[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for number, row in iter_jsonl(path, "--texts file"):
        video = str(_pick(row, VIDEO_COLUMNS, path, number, "video"))
        text = _pick(row, TEXT_COLUMNS, path, number, "text")
        if not isinstance(text, str) or not text.strip():
            raise DataFileError(f"{path}:{number}: the text is empty or not a string; give a non-empty text")
        text_id = str(_pick(row, ID_COLUMNS, path, number, "id"))
        if (video, text_id) in seen:
            continue
        seen.add((video, text_id))
        grouped.setdefault(video, []).append({"id": text_id, "text": text})
    if not grouped:
        raise DataFileError(f"{path}: no texts; expected one JSON object per line with a video, a text and an id")
    return grouped


def texts_fingerprint(path: str | Path) -> str:
    """SHA-256 of the texts file: part of a run's identity, since it decides text.npy."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

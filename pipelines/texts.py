"""``--texts`` files: queries or captions to encode with the CLIP text tower, grouped by video key.

A jsonl file, one text per line, with a video column (``key`` or ``vid``), a text column (``text``,
``query`` or ``caption``) and an id column (``id``, ``qid`` or ``sen_id``). A QVHighlights annotation
file ({vid, query, qid, ...}) works as is. Video ids go through the same :func:`safe_key` as file
names, so ``vid`` ``NUsG9BgSes0_210.0_360.0`` matches the file ``NUsG9BgSes0_210.0_360.0.mp4``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lamflow.pipelines.keys import safe_key

VIDEO_COLUMNS = ("key", "vid", "video_id")
TEXT_COLUMNS = ("text", "query", "caption", "sentence")
ID_COLUMNS = ("id", "qid", "sen_id")


def _pick(row: dict, columns: tuple[str, ...], path: Path, number: int, what: str) -> object:
    for name in columns:
        if name in row:
            return row[name]
    raise ValueError(f"{path}:{number} has no {what} column; name it one of {list(columns)} (found {sorted(row)})")


def load_texts(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Read a texts jsonl into {video key: [{"id", "text"}, ...]} in file order (duplicate ids dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--texts file {path} does not exist")
    grouped: dict[str, list[dict[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error.msg})") from None
            key = safe_key(str(_pick(row, VIDEO_COLUMNS, path, number, "video")))
            text = _pick(row, TEXT_COLUMNS, path, number, "text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{number}: the text is empty or not a string; give a non-empty text")
            text_id = str(_pick(row, ID_COLUMNS, path, number, "id"))
            if (key, text_id) in seen:
                continue
            seen.add((key, text_id))
            grouped.setdefault(key, []).append({"id": text_id, "text": text})
    return grouped


def texts_fingerprint(path: str | Path) -> str:
    """SHA-256 of the texts file: part of a run's identity, since it decides text.npy."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

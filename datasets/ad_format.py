"""The audio description (AD) file, MAD-v2 / AutoAD style, read and validated once for the AD task
(datasets/audio_description.py) and the R@k/N evaluator (train/tasks/audio_description_eval.py).

JSONL, one AD per line: ``ad_id`` (string or integer), the movie (``movie`` or ``movie_id``), ``start``
and ``end`` in seconds, and the text (``text`` or ``ad``): the field names MAD-v2's loaders write. The
first spelling present is used. Every error names the file and line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamflow.datasets.msrvtt_format import CaptionFileError
from lamflow.fileio import iter_jsonl

MOVIE_FIELDS = ("movie", "movie_id")
TEXT_FIELDS = ("text", "ad")


@dataclass(frozen=True)
class ADRecord:
    ad_id: str
    movie: str
    start: float
    end: float
    text: str


def ad_id_field(record: Mapping[str, Any], where: str) -> str:
    """A record's ``ad_id`` as a string (integers and their string spellings are the same AD)."""
    ad_id = record.get("ad_id")
    if isinstance(ad_id, bool) or not isinstance(ad_id, (str, int)) or ad_id == "":
        raise CaptionFileError(f"{where}: 'ad_id' must be a string or an integer, got {ad_id!r}")
    return str(ad_id)


def _first_present(record: Mapping[str, Any], fields: Sequence[str], where: str) -> Any:
    for field in fields:
        if field in record:
            return record[field]
    raise CaptionFileError(f"{where}: missing field '{fields[0]}' (or '{fields[1]}'); keys present: {sorted(record)}")


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def read_ads(path: str | Path, what: str) -> list[ADRecord]:
    """Every AD of the file in file order: ``ad_id`` unique, a movie id, ``0 <= start <= end``, a non-empty
    text; a file without ADs is an error. ``what`` names the file in messages ("AD reference file")."""
    ads: list[ADRecord] = []
    first_line: dict[str, str] = {}
    for line, record in iter_jsonl(path, what):
        where = f"{path}:{line}"
        ad_id = ad_id_field(record, where)
        if ad_id in first_line:
            raise CaptionFileError(f"{where}: duplicate ad_id {ad_id!r} (first at {first_line[ad_id]})")
        first_line[ad_id] = where
        movie = _first_present(record, MOVIE_FIELDS, where)
        if isinstance(movie, bool) or not isinstance(movie, (str, int)) or movie == "":
            raise CaptionFileError(f"{where}: the movie id must be a string or an integer, got {movie!r}")
        start, end = record.get("start"), record.get("end")
        if not (_seconds(start) and _seconds(end) and start <= end):
            raise CaptionFileError(f"{where}: need seconds 0 <= 'start' <= 'end', got start={start!r}, end={end!r}")
        text = _first_present(record, TEXT_FIELDS, where)
        if not isinstance(text, str) or not text.strip():
            raise CaptionFileError(f"{where}: the AD text ('text' or 'ad') must be a non-empty caption, got {text!r}")
        ads.append(ADRecord(ad_id, str(movie), float(start), float(end), text))
    if not ads:
        raise CaptionFileError(f"{path} holds no audio description")
    return ads


def ads_by_movie(path: str | Path, what: str) -> dict[str, list[ADRecord]]:
    """``{movie: [ADRecord, ...]}`` in file order (``read_ads``'s checks)."""
    movies: dict[str, list[ADRecord]] = {}
    for ad in read_ads(path, what):
        movies.setdefault(ad.movie, []).append(ad)
    return movies

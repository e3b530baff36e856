"""Audio description (MAD-v2 / AutoAD style) over lamflow shards: one item per AD, cut out of its movie.

AD files are JSONL, one AD per line: ``ad_id`` (string or integer), the movie (``movie`` or ``movie_id``),
``start`` and ``end`` in seconds, and the text (``text`` or ``ad``) -- the field names MAD-v2's loaders
write, and the reference format of ``lamflow eval ad``. A movie is one shard sample (frames imported with
``lamflow import-h5`` or extracted), joined by its name like any video.

An item is the AD's context: the tokens of every stream whose timestamps fall in
``[start - context_before, end + context_after]`` (clipped to the movie), with times relative to the
window's start, so a two-hour movie never becomes one sequence and the time embedding sees the same
range for every AD. A window that catches no token of a non-empty stream (an AD shorter than the frame
spacing) takes the stream's token nearest to the AD's middle, widening the window. An AD that starts after the movie ends, or
ends more than ``END_SLACK_SECONDS`` after it, is an error naming the AD: its annotation and features
do not belong together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from lamflow.datasets.caption_text import collate_captions
from lamflow.datasets.captioning import CaptionFileError, caption_of
from lamflow.fileio import iter_jsonl

# Field names of an AD record, the first one present is used (the second spelling is the one third-party
# MAD-v2 loaders write; ``lamflow eval ad`` reads the same names).
MOVIE_FIELDS = ("movie", "movie_id")
TEXT_FIELDS = ("text", "ad")
# Features end on a whole frame (MAD: 5 fps) while AD times do not: an AD may end this much after the
# movie's last feature and is clipped there.
END_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class AudioDescription:
    ad_id: str
    movie: str
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]  # [START, BPE ids..., END]


def _first_present(record: Mapping[str, Any], fields: Sequence[str], where: str) -> Any:
    for field in fields:
        if field in record:
            return record[field]
    raise CaptionFileError(f"{where}: missing field '{fields[0]}' (or '{fields[1]}'); keys present: {sorted(record)}")


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def load_ads(path: str | Path) -> dict[str, list[AudioDescription]]:
    """``{movie: [AudioDescription, ...]}`` in file order, validated (``ad_id`` unique, ``0 <= start <= end``)."""
    movies: dict[str, list[AudioDescription]] = {}
    first_line: dict[str, str] = {}
    for line, record in iter_jsonl(path, "audio description file"):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise CaptionFileError(f"{where}: expected an object {{\"ad_id\", \"movie\", \"start\", \"end\", \"text\"}}")
        ad_id = record.get("ad_id")
        if isinstance(ad_id, bool) or not isinstance(ad_id, (str, int)) or ad_id == "":
            raise CaptionFileError(f"{where}: 'ad_id' must be a string or an integer, got {ad_id!r}")
        ad_id = str(ad_id)
        if ad_id in first_line:
            raise CaptionFileError(f"{where}: duplicate ad_id {ad_id!r} (first at {first_line[ad_id]})")
        first_line[ad_id] = where
        movie = _first_present(record, MOVIE_FIELDS, where)
        if isinstance(movie, bool) or not isinstance(movie, (str, int)) or movie == "":
            raise CaptionFileError(f"{where}: the movie id must be a string or an integer, got {movie!r}")
        start, end = record.get("start"), record.get("end")
        if not (_seconds(start) and _seconds(end) and start <= end):
            raise CaptionFileError(f"{where}: need seconds 0 <= 'start' <= 'end', got start={start!r}, end={end!r}")
        record = {**record, "text": _first_present(record, TEXT_FIELDS, where)}
        text, tokens = caption_of(record, "text", where)
        movies.setdefault(str(movie), []).append(AudioDescription(ad_id, str(movie), float(start), float(end), text, tokens))
    if not movies:
        raise CaptionFileError(f"{path} holds no audio description")
    return movies


def cut_window(sample: Mapping[str, Any], start: float, end: float, anchor: float) -> tuple[dict, dict, float, float]:
    """(streams, timestamps, start, end) of ``sample`` inside ``[start, end]`` seconds. A non-empty stream with
    no token inside keeps the one nearest to ``anchor``, and the window widens to hold it; times are relative
    to the window's start."""
    chosen = {}
    for name, times in sample["timestamps"].items():
        inside = np.flatnonzero((times >= start) & (times <= end))
        chosen[name] = inside if len(inside) or not len(times) else np.array([np.abs(times - anchor).argmin()])
    kept = [sample["timestamps"][name][indices] for name, indices in chosen.items() if len(indices)]
    start = min([start, *(float(times.min()) for times in kept)])
    end = max([end, *(float(times.max()) for times in kept)])
    # Copies, not views: an item in the shuffle buffer must not keep its whole movie alive.
    streams = {name: sample["streams"][name][indices].copy() for name, indices in chosen.items()}
    timestamps = {name: (sample["timestamps"][name][indices] - start).astype(np.float32) for name, indices in chosen.items()}
    return streams, timestamps, start, end


class AudioDescriptionTask:
    """Task adapter: one item per AD, the movie's streams cut to the AD's context window."""

    prediction_field = "ad_id"  # predictions are {"ad_id", "caption"} lines (lamflow eval ad)
    every_name_in_shards = True

    def __init__(self, ads: str | Path, context_before: float, context_after: float):
        self.source = str(ads)
        self.ads = load_ads(ads)
        self.context_before, self.context_after = context_before, context_after

    def names(self) -> list[str]:
        return list(self.ads)

    def num_items(self, name: str) -> int:
        return len(self.ads.get(name, ()))

    def token_ids(self) -> set[int]:
        """Every BPE id of every AD text (start and end included)."""
        return {token for ads in self.ads.values() for ad in ads for token in ad.tokens}

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        duration = sample["duration"]
        for ad in self.ads[name]:
            if ad.start >= duration or ad.end > duration + END_SLACK_SECONDS:
                raise CaptionFileError(
                    f"{self.source}: AD {ad.ad_id!r} ({ad.start:g}-{ad.end:g} s) lies outside movie {name!r}, whose "
                    f"features (shard sample {sample['key']!r}) last {duration:g} s; check that the ADs and the "
                    "features are of the same movie"
                )
            start = max(0.0, ad.start - self.context_before)
            end = min(duration, ad.end + self.context_after)
            streams, timestamps, start, end = cut_window(sample, start, end, anchor=(ad.start + min(ad.end, duration)) / 2)
            yield {**sample, "sample_id": ad.ad_id, "caption_key": ad.ad_id, "caption": ad.tokens,
                   "streams": streams, "timestamps": timestamps, "duration": end - start}

    def collate(self, items: list[dict]) -> dict:
        return collate_captions(items)

"""Audio description (MAD-v2 / AutoAD style) over lamflow shards: one item per AD, cut out of its movie.

AD files are JSONL, one AD per line (``datasets/ad_format.py``; also the reference format of ``lamflow
eval ad``). A movie is one shard sample (frames imported with ``lamflow import-h5`` or extracted), joined
by its name like any video.

An item is the AD's context: the tokens of every stream whose timestamps fall in
``[start - context_before, end + context_after]`` (clipped to the movie), with times relative to the
window's start, so a two-hour movie never becomes one sequence and the time embedding sees the same
range for every AD. A window that catches no token of a non-empty stream (an AD shorter than the frame
spacing) takes the stream's token nearest to the AD's middle, widening the window. An AD that starts after the movie ends, or
ends more than ``END_SLACK_SECONDS`` after it, is an error naming the AD: its annotation and features
do not belong together.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lamflow.datasets.ad_format import ads_by_movie
from lamflow.datasets.caption_text import collate_captions, encode_caption
from lamflow.datasets.msrvtt_format import CaptionFileError
from lamflow.datasets.task import Task
from lamflow.datasets.windows import cut_window

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


def load_ads(path: str | Path) -> dict[str, list[AudioDescription]]:
    """``{movie: [AudioDescription, ...]}`` in file order, validated (``datasets/ad_format.py``)."""
    return {movie: [AudioDescription(ad.ad_id, ad.movie, ad.start, ad.end, ad.text, tuple(encode_caption(ad.text)))
                    for ad in ads]
            for movie, ads in ads_by_movie(path, "audio description file").items()}


class AudioDescriptionTask(Task):
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
            cut = cut_window(sample["streams"], sample["timestamps"], start, end, include_end=True,
                             nearest_to=(ad.start + min(ad.end, duration)) / 2)
            yield {**sample, "sample_id": ad.ad_id, "caption_key": ad.ad_id, "caption": ad.tokens,
                   "streams": cut.streams, "timestamps": cut.timestamps, "duration": cut.end - cut.start}

    def collate(self, items: list[dict]) -> dict:
        return collate_captions(items)

"""The one window cutter of MAD queries (data.window_seconds) and audio descriptions: which tokens it keeps,
their rebased times, and that it copies them (an item in the shuffle buffer must not pin its whole movie)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lamflow.datasets.audio_description import AudioDescriptionTask
from lamflow.datasets.qvhighlights import QVHighlightsTask
from lamflow.datasets.windows import cut_window

FPS, HOP, SECONDS = 5.0, 0.1, 600.0  # a ten-minute "movie"


def movie_sample() -> dict:
    rng = np.random.default_rng(0)
    video_ts = np.arange(0, SECONDS, 1 / FPS, dtype=np.float32)
    audio_ts = np.arange(0, SECONDS, HOP, dtype=np.float32)
    return {"key": "movie", "name": "movie", "url": "", "meta": {}, "duration": SECONDS,
            "streams": {"video": rng.standard_normal((len(video_ts), 8)).astype(np.float32),
                        "audio": rng.standard_normal((len(audio_ts), 4)).astype(np.float32)},
            "timestamps": {"video": video_ts, "audio": audio_ts},
            "text_tokens": rng.standard_normal((1, 3, 6)).astype(np.float32), "text_ids": ["7"], "text_lengths": [3]}


def assert_copied(item: dict, sample: dict) -> None:
    for name in ("video", "audio"):
        for part in ("streams", "timestamps"):
            kept, source = item[part][name], sample[part][name]
            assert len(kept) < len(source) and not np.shares_memory(kept, source) and kept.base is None


def test_a_mad_window_is_half_open_rebased_and_copied(tmp_path):
    annotations = tmp_path / "MAD_train.json"
    annotations.write_text(json.dumps({"7": {"movie": "movie", "sentence": "A door opens.", "timestamps": [209.5, 215.0],
                                             "movie_duration": SECONDS}}))
    task = QVHighlightsTask(annotations, window_seconds=20.0, placement="fixed")
    sample = movie_sample()
    (item,) = task.items(sample, "movie")
    assert_copied(item, sample)
    start = item["window_start"]
    video = item["timestamps"]["video"]
    first = int(np.searchsorted(sample["timestamps"]["video"], np.float32(start)))
    assert len(video) == 100 and np.array_equal(item["streams"]["video"], sample["streams"]["video"][first:first + 100])
    assert np.array_equal(video, sample["timestamps"]["video"][first:first + 100] - np.float32(start))
    assert 0 <= video[0] < 1 / FPS and video[-1] < 20.0
    assert item["streams"]["text"].shape == (3, 6)  # the query is not in time: not cut


def test_an_ad_context_is_closed_widened_to_the_nearest_frame_and_copied(tmp_path):
    ads = tmp_path / "ads.jsonl"
    ads.write_text(json.dumps({"ad_id": "a1", "movie": "movie", "start": 100.0, "end": 102.0, "text": "Rain."}) + "\n"
                   + json.dumps({"ad_id": "a2", "movie": "movie", "start": 300.05, "end": 300.1, "text": "A flash."}) + "\n")
    sample = movie_sample()
    one, _ = AudioDescriptionTask(ads, context_before=1.0, context_after=2.0).items(sample, "movie")
    assert_copied(one, sample)
    assert one["timestamps"]["video"].tolist() == pytest.approx(np.arange(0, 5.01, 0.2).tolist(), abs=1e-4)  # 99..104 s, both ends
    assert len(one["timestamps"]["audio"]) == 51 and one["duration"] == pytest.approx(5.0)
    # 300.05..300.1 s holds no frame (every 0.2 s): the nearest one, at 300.0 s, widens the window.
    _, flash = AudioDescriptionTask(ads, context_before=0.0, context_after=0.0).items(sample, "movie")
    assert flash["timestamps"]["video"].tolist() == [0.0] and flash["duration"] == pytest.approx(0.1, abs=1e-4)


def test_bounds_compare_in_the_timestamps_precision():
    # 209.2 s is stored as 209.19999695 in float32: the frame at the window's start is inside it, and the one at
    # its end (229.2 s) is not, as for any window [start, start + width).
    times = np.arange(0, 300, 0.2, dtype=np.float32)
    cut = cut_window({"video": np.arange(len(times))[:, None]}, {"video": times}, 209.2, 229.2, include_end=False)
    assert cut.streams["video"][0, 0] == 1046 and len(cut.streams["video"]) == 100 and cut.timestamps["video"][0] >= 0
    closed = cut_window({"video": np.arange(len(times))[:, None]}, {"video": times}, 209.2, 229.2, include_end=True)
    assert len(closed.streams["video"]) == 101
    # Without nearest_to, a window between two tokens keeps none of them.
    empty = cut_window({"video": np.zeros((len(times), 2))}, {"video": times}, 10.05, 10.1, include_end=True)
    assert empty.streams["video"].shape == (0, 2) and (empty.start, empty.end) == (10.05, 10.1)

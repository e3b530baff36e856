"""One real video -> one shard sample: fields, shapes, timestamps, missing streams, provenance, memory."""
from __future__ import annotations

import dataclasses
import json
import math
import tracemalloc

import numpy as np
import pytest

from lamflow import __version__
from lamflow.pipelines.ffmpeg_process import DecodeError
from lamflow.pipelines.featurize import featurize_video, load_encoders
from lamflow.pipelines.settings import ExtractSettings
from media import rewrite_mp4_durations

SETTINGS = ExtractSettings(clip_model="lamflow-tiny", pretrained="none", frame_batch=4)
ARRAY_FIELDS = ("video.npy", "video_ts.npy", "audio.npy", "audio_ts.npy")


@pytest.fixture(scope="module")
def encoders():
    return load_encoders(SETTINGS)


def run(path, encoders, settings=SETTINGS, **kwargs):
    clip, audio = encoders
    return featurize_video(str(path), "clip_key", settings, clip, audio, **kwargs)


def test_video_with_audio_gives_every_contract_field(media, encoders):
    sample = run(media("clip.mp4", duration=3.0, rate=30, size="160x120"), encoders)
    assert sample["__key__"] == "clip_key"
    assert sample["video.npy"].shape == (3, 64) and sample["video.npy"].dtype == np.float16
    np.testing.assert_allclose(sample["video_ts.npy"], [0.0, 1.0, 2.0])
    assert sample["audio.npy"].shape == (30, 64) and sample["audio.npy"].dtype == np.float16
    np.testing.assert_allclose(sample["audio_ts.npy"], np.arange(30) * 0.1, atol=1e-6)
    assert all(sample[f"{name}_ts.npy"].dtype == np.float32 for name in ("video", "audio"))
    assert "text.npy" not in sample
    meta = sample["meta.json"]
    json.dumps(meta)  # plain JSON, written as-is by the shard writer
    assert meta["duration"] == pytest.approx(3.0, abs=0.05)
    assert meta["streams"]["width"] == 160 and meta["streams"]["video_fps"] == 30
    assert meta["lamflow_version"] == __version__
    video, audio = meta["provenance"]["video"], meta["provenance"]["audio"]
    assert video["model"] == "lamflow-tiny" and video["random_init"] is True and video["quick_gelu"] is False
    assert video["fps"] == 1.0 and video["frame_rule"] == "start" and video["decoder"].startswith("ffmpeg version")
    assert audio["sample_rate"] == 16000 and audio["hop_seconds"] == 0.1 and audio["n_mels"] == 64
    assert audio["dtype"] == video["dtype"] == "float16"
    assert any("RANDOM CLIP WEIGHTS" in note for note in meta["notes"])


def test_video_without_audio_has_empty_audio_with_the_token_dim_and_a_note(media, encoders):
    sample = run(media("silent.mp4", duration=2.0, audio=False, size="97x61"), encoders)
    assert sample["video.npy"].shape == (2, 64)
    assert sample["audio.npy"].shape == (0, 64) and sample["audio_ts.npy"].shape == (0,)
    assert any("no audio stream" in note for note in sample["meta.json"]["notes"])


def test_audio_only_wav_has_empty_video_with_the_embedding_dim_and_a_note(media, encoders):
    sample = run(media("tone.wav", duration=1.25, video=False), encoders)
    assert sample["video.npy"].shape == (0, 64) and sample["video_ts.npy"].shape == (0,)
    assert sample["audio.npy"].shape == (13, 64)
    assert any("no video stream" in note for note in sample["meta.json"]["notes"])


def test_middle_rule_fractional_fps_and_float32_are_applied_and_recorded(media, encoders):
    settings = dataclasses.replace(SETTINGS, fps=2.0, frame_rule="middle", dtype="float32")
    sample = run(media("clip.mp4", duration=2.2, rate=25), encoders, settings)
    np.testing.assert_allclose(sample["video_ts.npy"], [0.25, 0.75, 1.25, 1.75, 2.2], atol=1e-6)
    assert sample["video.npy"].dtype == sample["audio.npy"].dtype == np.float32
    video = sample["meta.json"]["provenance"]["video"]
    assert video["frame_rule"] == "middle" and video["fps"] == 2.0 and video["dtype"] == "float32"


def test_a_header_claiming_400_s_for_4_s_of_streams_records_the_decoded_duration_and_what_it_claimed(media, encoders):
    sample = run(rewrite_mp4_durations(media("edited.mp4", duration=4.0), 400.0), encoders)
    meta = sample["meta.json"]
    assert meta["streams"]["duration"] == 400.0  # the probe's view is kept as it was
    assert meta["duration"] == pytest.approx(4.0, abs=0.03)
    assert meta["counts"] == {"video": 4, "audio": 40}
    assert [n for n in meta["notes"] if n.startswith("duration:")] == [
        "duration: the header claims the container 400.000 s, the decoded streams last 4.000 s (video 4.000 s, "
        "audio 4.000 s); duration, token counts and timestamps follow the decoded streams"
    ]


def test_middle_rule_gives_a_4_004_s_video_a_token_per_started_interval_and_no_note(media, encoders):
    settings = dataclasses.replace(SETTINGS, fps=2.0, frame_rule="middle")
    sample = run(media("ntsc.mp4", duration=4.004, rate="30000/1001", audio=False), encoders, settings)
    assert len(sample["video.npy"]) == math.ceil(4.004 * 2) == 9
    assert sample["video_ts.npy"][-1] == pytest.approx(4.004)
    assert [n for n in sample["meta.json"]["notes"] if n.startswith(("video", "duration"))] == []


def test_texts_add_per_token_and_pooled_arrays_in_the_given_order(media, encoders):
    texts = [{"id": 7, "text": "a colourful test pattern"}, {"id": "q2", "text": "beep"}]
    sample = run(media("clip.mp4", duration=1.0), encoders, texts=texts)
    meta = sample["meta.json"]
    assert [t["id"] for t in meta["texts"]] == ["7", "q2"]
    longest = max(t["tokens"] for t in meta["texts"])
    assert sample["text.npy"].shape == (2, longest, 64) and sample["text_pooled.npy"].shape == (2, 64)
    assert meta["provenance"]["text"]["model"] == "lamflow-tiny"
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        run(media("clip.mp4", duration=1.0), encoders, texts=[{"query": "no id"}])


def test_same_video_gives_identical_arrays_every_time(media, encoders):
    path = media("clip.mp4", duration=2.0)
    first, second = run(path, encoders), run(path, encoders)
    for field in ARRAY_FIELDS:
        np.testing.assert_array_equal(first[field], second[field])
    assert np.abs(first["video.npy"][0].astype(np.float32) - first["video.npy"][1]).max() > 1e-3


def test_bad_media_raises_decode_error_naming_the_file(tmp_path, encoders):
    bad = tmp_path / "broken.mkv"
    bad.write_bytes(b"\x1aE\xdf\xa3 definitely not a matroska file" * 100)
    with pytest.raises(DecodeError, match="broken.mkv"):
        run(bad, encoders)


def test_encoders_built_for_other_settings_are_refused(media, encoders):
    with pytest.raises(ValueError, match="n_mels"):
        run(media("clip.mp4", duration=1.0), encoders, dataclasses.replace(SETTINGS, n_mels=40))


def test_memory_stays_bounded_on_a_long_high_rate_video(media, encoders):
    """60 s at 320x240, 30 fps: a full-rate decode would hold 415 MB of frames; streaming holds a batch."""
    path = media("long.mp4", duration=60.0, size="320x240", rate=30)
    tracemalloc.start()
    try:
        sample = run(path, encoders)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sample["video.npy"].shape == (60, 64) and sample["audio.npy"].shape == (600, 64)
    # Largest live buffers: 60 s of 16 kHz float audio (3.8 MB, plus its chunked read) and one batch of frames.
    assert peak < 16 * 2**20, f"peak traced allocation {peak / 2**20:.1f} MB"
    assert math.isclose(sample["video_ts.npy"][-1], 59.0)

"""Probing and ffmpeg decoding of real generated media: frame selection, timestamps, audio, bad files."""
from __future__ import annotations

import math
import os
import re
import subprocess
import threading
import time

import numpy as np
import pytest

from lamflow.pipelines.audio_decode import decode_audio
from lamflow.pipelines.ffmpeg_process import DecodeError, ffmpeg_version
from lamflow.pipelines.probe import DecodeLog, decoded_duration, duration_note, probe
from lamflow.pipelines.video_decode import frame_count, iter_frames
from media import rewrite_mp4_durations


def all_frames(path, info, size):
    """Every frame of the file, each once, through the same scale/crop filters (no frame selection)."""
    crop = f"scale=iw*sar:ih,setsar=1,scale={size}:{size}:force_original_aspect_ratio=increase:flags=bicubic,crop={size}:{size}"
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-vf", crop, "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


def test_probe_reports_duration_size_rate_and_both_streams(media):
    path = media("clip.mp4", duration=2.0, size="160x120", rate=25)
    info = probe(str(path))
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.video_fps) == (160, 120, 25.0)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.audio_rate == 16000 and info.audio_channels == 1
    assert info.video_codec == "h264" and info.audio_codec == "aac"


def test_probe_of_wav_has_audio_but_no_video(media):
    info = probe(str(media("tone.wav", duration=1.5, video=False)))
    assert info.has_audio and not info.has_video
    assert info.duration == pytest.approx(1.5, abs=0.01)


@pytest.mark.parametrize("rate", [25, 30])
@pytest.mark.parametrize("duration", [0.3, 2.4, 3.0])
@pytest.mark.parametrize("rule", ["start", "middle"])
def test_one_frame_per_interval_including_partial_and_shorter_than_one_interval(media, rate, duration, rule):
    path = media(f"v{rate}_{duration}.mp4", duration=duration, rate=rate, audio=False)
    info = probe(str(path))
    batches = list(iter_frames(str(path), info, 1.0, 32, rule, batch=2))
    ts = np.concatenate([t for _, t in batches])
    assert len(ts) == math.ceil(duration)  # at least one frame, even for 0.3 s
    assert all(len(f) <= 2 and f.shape[1:] == (32, 32, 3) and f.dtype == np.uint8 for f, _ in batches)
    expected = np.arange(len(ts)) + (0.5 if rule == "middle" else 0.0)
    np.testing.assert_allclose(ts, np.minimum(expected, info.video_duration), atol=1e-6)


@pytest.mark.parametrize("rate", [25, 30])
def test_start_rule_picks_frame_on_screen_at_k_over_fps_and_middle_at_k_plus_half(media, rate):
    path = media("pick.mp4", duration=3.0, rate=rate, size="96x64", audio=False)
    info = probe(str(path))
    full = all_frames(str(path), info, 32)
    assert len(full) == 3 * rate
    start = np.concatenate([f for f, _ in iter_frames(str(path), info, 1.0, 32, "start", 8)])
    middle = np.concatenate([f for f, _ in iter_frames(str(path), info, 1.0, 32, "middle", 8)])
    for k in range(3):
        assert np.array_equal(start[k], full[k * rate])
        # The frame on screen at (k + 0.5) s is the last one whose time is <= (k + 0.5) s.
        assert np.array_equal(middle[k], full[math.floor((k + 0.5) * rate)])
    assert not np.array_equal(start[0], start[1])  # testsrc2 moves: frames really differ


def test_fractional_fps_gives_exact_timestamps(media):
    path = media("half.mp4", duration=4.0, rate=30, audio=False)
    info = probe(str(path))
    ts = np.concatenate([t for _, t in iter_frames(str(path), info, 2.5, 32, "start", 4)])
    np.testing.assert_allclose(ts, np.arange(10) / 2.5, atol=1e-6)


@pytest.mark.parametrize("rule, stamps", [
    ("start", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
    ("middle", [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.004]),
])
def test_a_4_004_s_video_at_2_fps_gets_the_9_frames_of_its_9_started_intervals(tmp_path, rule, stamps):
    """120 frames at 30000/1001 fps last 4.004 s: the ninth interval starts at 4.0 s, before the end."""
    path = tmp_path / "ntsc.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30000/1001:duration=4.004",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
    info = probe(str(path))
    log = DecodeLog()
    batches = list(iter_frames(str(path), info, 2.0, 32, rule, 4, log=log))
    frames, ts = np.concatenate([f for f, _ in batches]), np.concatenate([t for _, t in batches])
    assert log.video_seconds == pytest.approx(4.004) and frame_count(log.video_seconds, 2.0) == 9
    np.testing.assert_allclose(ts, stamps, atol=1e-6)
    assert log.notes == [] and duration_note(info, log) is None
    full = all_frames(str(path), info, 32)
    assert len(full) == 120
    for k, t in enumerate(stamps):  # each frame is the one on screen at its timestamp
        assert np.array_equal(frames[k], full[min(math.floor(t * 30000 / 1001), 119)])


def test_raw_m1v_whose_header_guesses_a_fraction_of_a_second_is_decoded_to_its_real_end(tmp_path):
    """A raw MPEG-1 elementary stream has no duration field: ffprobe guesses one from the bitrate."""
    path = tmp_path / "raw.m1v"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=6",
                    "-c:v", "mpeg1video", "-f", "mpeg1video", str(path)], check=True)
    info = probe(str(path))
    assert info.duration < 1.0 and info.video_duration < 1.0  # what the header claims
    log = DecodeLog()
    ts = np.concatenate([t for _, t in iter_frames(str(path), info, 1.0, 32, "start", 4, log=log)])
    np.testing.assert_allclose(ts, [0, 1, 2, 3, 4, 5])
    assert log.video_seconds == pytest.approx(6.0) and decoded_duration(info, log) == pytest.approx(6.0)
    note = duration_note(info, log)
    assert note.startswith(f"duration: the header claims the container {info.duration:.3f} s, "
                           "the decoded streams last 6.000 s (video 6.000 s)")


@pytest.mark.parametrize("claimed, media_too", [(400.0, False), (1.0, True)])
def test_mp4_whose_header_lies_about_its_duration_gets_the_decoded_one(media, claimed, media_too):
    """Movie and track headers edited to claim 400 s (or every header, media ones too, 1 s) for 4 s of streams."""
    path = rewrite_mp4_durations(media("edited.mp4", duration=4.0, rate=25), claimed, media_too=media_too)
    info = probe(str(path))
    assert info.duration == pytest.approx(claimed)
    log = DecodeLog()
    frames = sum(len(f) for f, _ in iter_frames(str(path), info, 1.0, 32, "start", 4, log=log))
    wave = decode_audio(str(path), info, 16000, log=log)
    assert frames == 4 and log.video_seconds == pytest.approx(4.0)
    assert len(wave) / 16000 == pytest.approx(4.0, abs=0.07)  # all of it, AAC's last padded frame included
    assert decoded_duration(info, log) == pytest.approx(4.0, abs=0.07)
    assert f"the header claims the container {claimed:.3f} s, the decoded streams last 4.0" in duration_note(info, log)
    assert log.notes == []  # nothing is damaged: the header is wrong, the streams are whole


def test_a_file_whose_header_has_no_duration_is_measured_by_decoding(tmp_path):
    path = tmp_path / "flash.swf"  # the swf muxer writes no duration at all
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=3",
                    "-f", "lavfi", "-i", "sine=sample_rate=44100:duration=3", "-c:v", "flv1", "-c:a", "libmp3lame",
                    str(path)], check=True)
    info = probe(str(path))
    assert info.duration == 0.0
    log = DecodeLog()
    assert sum(len(f) for f, _ in iter_frames(str(path), info, 1.0, 32, "start", 4, log=log)) == 3
    assert len(decode_audio(str(path), info, 16000, log=log)) / 16000 == pytest.approx(3.0, abs=0.05)
    assert duration_note(info, log).startswith("duration: the header claims no duration, the decoded streams last 3.0")


def test_odd_frame_size_is_scaled_and_center_cropped_to_a_square(tmp_path):
    # testsrc2 and libx264 4:2:0 round to even sizes; a scale filter and ffv1 in mkv keep 97x61.
    path = tmp_path / "odd.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=2",
         "-vf", "scale=97:61", "-c:v", "ffv1", "-pix_fmt", "yuv444p", str(path)], check=True,
    )
    info = probe(str(path))
    assert (info.width, info.height) == (97, 61)
    frames = np.concatenate([f for f, _ in iter_frames(str(path), info, 1.0, 48, "start", 4)])
    assert frames.shape == (2, 48, 48, 3)


def test_anamorphic_pixels_are_squared_before_the_crop(tmp_path):
    """A 2:1 sample aspect ratio doubles the displayed width; the crop must see the displayed picture."""
    square, wide = tmp_path / "square.mkv", tmp_path / "anamorphic.mkv"
    source = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=128x64:rate=10:duration=1"]
    subprocess.run(source + ["-c:v", "ffv1", str(square)], check=True)
    subprocess.run(source + ["-vf", "scale=64:64,setsar=2", "-c:v", "ffv1", str(wide)], check=True)
    frames = [next(iter_frames(str(p), probe(str(p)), 1.0, 32, "start", 1))[0][0].astype(int) for p in (square, wide)]
    assert np.abs(frames[0] - frames[1]).mean() < 12  # same picture up to the resampling blur


def test_batches_stream_the_same_frames_as_one_big_batch(media):
    path = media("b.mp4", duration=5.0, audio=False)
    info = probe(str(path))
    small = list(iter_frames(str(path), info, 2.0, 32, "start", batch=3))
    big = list(iter_frames(str(path), info, 2.0, 32, "start", batch=100))
    assert all(len(f) <= 3 for f, _ in small) and sum(len(f) for f, _ in small) == 10
    for part in (0, 1):  # frames, then timestamps
        assert np.array_equal(np.concatenate([b[part] for b in small]), np.concatenate([b[part] for b in big]))


def test_audio_is_mono_float_at_the_requested_rate_and_keeps_the_tone(tmp_path):
    path = tmp_path / "stereo.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100:duration=2",
         "-ac", "2", str(path)], check=True,
    )
    info = probe(str(path))
    assert info.audio_channels == 2 and info.audio_rate == 44100
    wave = decode_audio(str(path), info, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == pytest.approx(32000, abs=16)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16000 / len(wave) == pytest.approx(1000, abs=2)


def test_aac_padding_past_the_duration_is_cut(media):
    path = media("a.mp4", duration=3.0)
    info = probe(str(path))
    assert len(decode_audio(str(path), info, 16000)) == math.ceil(info.duration * 16000)


def test_file_without_audio_decodes_to_empty_wave_and_wav_to_no_frames(media):
    silent = media("silent.mp4", duration=1.0, audio=False)
    assert decode_audio(str(silent), probe(str(silent)), 16000).shape == (0,)
    wav = media("tone.wav", duration=1.0, video=False)
    assert list(iter_frames(str(wav), probe(str(wav)), 1.0, 32, "start", 4)) == []


def corrupt_files(tmp_path, make):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    whole = make("whole.mp4", duration=2.0).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    return [empty, garbage, truncated]


def test_corrupt_inputs_raise_decode_error_naming_the_file_quickly(tmp_path, media):
    for bad in corrupt_files(tmp_path, media):
        started = time.monotonic()
        with pytest.raises(DecodeError, match=bad.name) as error:
            probe(str(bad))
        assert time.monotonic() - started < 10
        # ffprobe's own last word, not a line before it ("moov atom not found" comes first on the cut file)
        assert str(error.value).endswith("Invalid data found when processing input)")


def test_failure_reason_is_ffmpegs_error_line_not_a_repeat_counter_or_the_wrap_up(tmp_path, media):
    """Every sample of this mp4 is noise, its header intact: h264 fails on each packet, ffmpeg prints
    'Error while decoding stream #0:0: Invalid data found when processing input', then 'Last message
    repeated 1 times', then its own wrap-up ('Error marking filters as finished'), and exits 1."""
    data = bytearray(media("noise.mp4", duration=2.0, audio=False).read_bytes())
    at = data.index(b"mdat") + 4
    size = int.from_bytes(data[at - 8 : at - 4], "big") - 8
    data[at : at + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "noise.mp4"
    path.write_bytes(bytes(data))
    info = probe(str(path))
    with pytest.raises(DecodeError) as error:
        list(iter_frames(str(path), info, 1.0, 32, "start", 4))
    message = str(error.value)
    assert re.search(r"noise.mp4: ffmpeg video decode failed \(exit \d+\): .*Invalid data found when processing input$",
                     message), message
    assert "repeated" not in message and "marking filters" not in message


def test_truncated_streamable_mp4_probes_but_decoding_reports_the_damage(tmp_path, media):
    """With the index up front (faststart) a cut file still probes; ffmpeg conceals the loss and exits 0."""
    whole = media("whole.mp4", duration=3.0)
    faststart = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(whole), "-c", "copy", "-movflags", "+faststart",
                    str(faststart)], check=True)
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe(str(cut))
    assert info.video_duration == pytest.approx(3.0, abs=0.05)
    with pytest.raises(DecodeError, match=r"cut.mp4: video stream truncated or damaged: decoded 1\.\d+ s of the 3\.00 s its header claims "
                       r"\(.*partial file\)"):
        list(iter_frames(str(cut), info, 1.0, 32, "start", 4))
    with pytest.raises(DecodeError, match=r"cut.mp4: audio stream truncated"):
        decode_audio(str(cut), info, 16000)


def test_intact_file_leaves_no_notes_and_decodes_to_its_header_duration(media):
    path = media("ok.mp4", duration=2.0)
    info = probe(str(path))
    log = DecodeLog()
    list(iter_frames(str(path), info, 1.0, 32, "middle", 4, log=log))
    decode_audio(str(path), info, 16000, log=log)
    assert log.notes == [] and duration_note(info, log) is None
    assert log.video_seconds == pytest.approx(2.0) and log.audio_seconds == pytest.approx(2.0)


def test_local_names_with_colons_are_files_not_protocols(media):
    path = media("talk: part 1.mp4", duration=1.0)
    info = probe(str(path))
    assert len(list(iter_frames(str(path), info, 1.0, 32, "start", 4))) == 1
    assert len(decode_audio(str(path), info, 16000)) == 16000


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="nope.mp4"):
        probe(str(tmp_path / "nope.mp4"))


def test_hung_input_is_killed_by_timeouts_not_waited_on_forever(tmp_path, media):
    """A pipe that stops delivering data (stalled network mount, dead writer) must not hang a worker."""
    source = media("stream.mkv", duration=3.0).read_bytes()
    fifo = tmp_path / "hung.mkv"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="hung.mkv: ffprobe did not finish"):
        probe(str(fifo), timeout=1.0)  # nobody writes: ffprobe blocks opening the fifo

    info = probe(str(tmp_path / "stream.mkv"))
    writer_done = threading.Event()

    def write_half_then_hang():
        with open(fifo, "wb") as pipe:
            pipe.write(source[: len(source) // 2])
            pipe.flush()
            writer_done.wait(10)  # keep the pipe open without writing

    threading.Thread(target=write_half_then_hang, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(DecodeError, match="hung.mkv: ffmpeg video decode stalled for 1 s"):
            for _ in iter_frames(str(fifo), info, 1.0, 32, "start", 1, stall_timeout=1.0):
                pass
    finally:
        writer_done.set()
    assert time.monotonic() - started < 8


def test_ffmpeg_version_is_recorded():
    assert ffmpeg_version().startswith("ffmpeg version")

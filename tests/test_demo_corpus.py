"""`lamflow make-demo-data`: a generated corpus whose moments need both the picture and the sound.

The corpus is rendered for real with ffmpeg once per module (the quick size) and then decoded back
with ffmpeg to check that the scheduled shapes and beeps really are where corpus.json says, and that
each caption says what the decoded picture and sound show.
"""
from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from lamflow.datasets.qvhighlights_format import CLIP_SECONDS

from lamflow.cli import main as lamflow_main
from lamflow.demo.annotations import annotation_jsonl, corpus_document
from lamflow.demo.captions import caption, captions as video_captions
from lamflow.demo.corpus import build_corpus
from lamflow.demo.schedule import BEEP_SECONDS, COLOURS, TONES, CorpusConfig, plan_corpus
from lamflow.fileio import read_jsonl

SEED = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = build_corpus(CorpusConfig.quick(seed=SEED), out, jobs=2)
    document = json.loads(result.corpus_json.read_text())
    return result, document


def test_quick_corpus_writes_mp4s_annotations_texts_and_schedule(corpus):
    result, document = corpus
    config = CorpusConfig.quick(seed=SEED)
    videos = sorted(result.videos_dir.glob("*.mp4"))
    assert len(videos) == config.train_videos + config.val_videos == len(document["videos"])
    assert result.videos_generated == len(videos) and result.videos_reused == 0
    # Each video is rendered under a temporary name (fileio.temp_path) and renamed: none may be left behind.
    assert sorted(p.name for p in result.videos_dir.iterdir()) == sorted(Path(v["file"]).name for v in document["videos"])
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height,sample_rate",
         "-show_entries", "format=duration", "-of", "json", str(videos[0])],
        check=True, capture_output=True, text=True,
    )
    info = json.loads(probe.stdout)
    codecs = {s["codec_name"]: s for s in info["streams"]}
    assert set(codecs) == {"h264", "aac"}
    assert (codecs["h264"]["width"], codecs["h264"]["height"]) == (config.width, config.height)
    assert codecs["aac"]["sample_rate"] == str(config.sample_rate)
    planned = next(v["duration"] for v in document["videos"] if v["file"].endswith(videos[0].name))
    assert abs(float(info["format"]["duration"]) - planned) < 0.1


def test_annotations_follow_the_qvhighlights_schema(corpus):
    result, document = corpus
    durations = {v["vid"]: v["duration"] for v in document["videos"]}
    lines = {split: read_jsonl(path) for split, path in (("train", result.train_annotations),
                                                          ("val", result.val_annotations))}
    assert lines["train"] and lines["val"]
    for line in lines["train"] + lines["val"]:
        assert list(line) == ["qid", "query", "duration", "vid", "relevant_clip_ids", "saliency_scores",
                              "relevant_windows"]
        assert isinstance(line["qid"], int) and isinstance(line["query"], str) and line["query"]
        assert line["duration"] == durations[line["vid"]]
        assert (result.out_dir / "videos" / f"{line['vid']}.mp4").exists()
        clip_ids = []
        for start, end in line["relevant_windows"]:
            assert 0 <= start < end <= line["duration"]
            assert start % CLIP_SECONDS == 0 and end % CLIP_SECONDS == 0, "windows sit on the 2-s clip grid"
            clip_ids += range(start // CLIP_SECONDS, end // CLIP_SECONDS)
        assert line["relevant_clip_ids"] == clip_ids
        assert len(line["saliency_scores"]) == len(clip_ids)
        for scores in line["saliency_scores"]:
            assert len(scores) == 3 and all(isinstance(s, int) and 0 <= s <= 4 for s in scores)
        # Every annotator marks at least one clip VeryGood, so HL-VeryGood has positives for every query.
        assert all(max(column) == 4 for column in zip(*line["saliency_scores"]))
    qids = [line["qid"] for line in lines["train"] + lines["val"]]
    assert len(set(qids)) == len(qids)
    train_vids = {line["vid"] for line in lines["train"]}
    assert train_vids.isdisjoint(line["vid"] for line in lines["val"])
    assert len(document["videos"]) == len({v["vid"] for v in document["videos"]})


def test_texts_file_lists_every_query_for_extraction(corpus):
    result, _ = corpus
    annotations = read_jsonl(result.train_annotations) + read_jsonl(result.val_annotations)
    texts = read_jsonl(result.texts)
    assert texts == [{"vid": a["vid"], "id": str(a["qid"]), "text": a["query"]} for a in annotations]


def test_same_seed_reproduces_byte_identical_files_and_another_seed_differs(corpus, tmp_path):
    result, _ = corpus
    again = build_corpus(CorpusConfig.quick(seed=SEED), tmp_path, jobs=2)
    for name in ("train.jsonl", "val.jsonl", "texts.jsonl", "train_captions.jsonl", "val_captions.jsonl", "corpus.json"):
        assert (again.out_dir / name).read_bytes() == (result.out_dir / name).read_bytes(), name

    other = plan_corpus(CorpusConfig.quick(seed=SEED + 1))
    same = plan_corpus(CorpusConfig.quick(seed=SEED))
    assert annotation_jsonl(other, "train") != annotation_jsonl(same, "train")
    other_schedule = corpus_document(CorpusConfig.quick(seed=SEED + 1), other)["videos"]
    same_schedule = corpus_document(CorpusConfig.quick(seed=SEED), same)["videos"]
    assert [v["segments"] for v in other_schedule] != [v["segments"] for v in same_schedule]


def test_adding_videos_keeps_the_existing_schedules():
    small = plan_corpus(CorpusConfig.quick(seed=SEED))
    larger = plan_corpus(replace(CorpusConfig.quick(seed=SEED), train_videos=6))
    assert [p.segments for p in small if p.split == "train"] == [p.segments for p in larger[:4]]


def test_every_query_has_visual_only_and_audio_only_distractors(corpus):
    _, document = corpus
    for video in document["videos"]:
        assert video["queries"]
        segments = video["segments"]
        visual = [(s["shape"]["colour"], s["shape"]["shape"]) if s["shape"] else None for s in segments]
        for query in video["queries"]:
            wanted = (query["colour"], query["shape"])
            assert all(word in query["query"] for word in (*wanted, query["tone"]))
            both = [i for i, s in enumerate(segments) if visual[i] == wanted and s["tone"] == query["tone"]]
            visual_only = [i for i, s in enumerate(segments) if visual[i] == wanted and s["tone"] != query["tone"]]
            audio_only = [i for i, s in enumerate(segments) if visual[i] != wanted and s["tone"] == query["tone"]]
            assert len(both) == 1 and query["window"] == [segments[both[0]]["start"], segments[both[0]]["end"]]
            assert visual_only == query["visual_only_distractors"] and visual_only
            assert audio_only == query["audio_only_distractors"] and audio_only
        for start_end in zip(segments, segments[1:]):
            assert start_end[0]["end"] <= start_end[1]["start"], "segments never overlap"


def test_every_video_has_one_caption_naming_its_first_two_crossed_events_in_order(corpus):
    result, document = corpus
    lines = {split: read_jsonl(path) for split, path in (("train", result.train_captions), ("val", result.val_captions))}
    for video in document["videos"]:
        captions = [line["caption"] for line in lines[video["split"]] if line["vid"] == video["vid"]]
        crossed = [(s["shape"]["colour"], s["tone"]) for s in video["segments"] if s["shape"] and s["tone"]]
        assert captions == [caption(crossed[0], crossed[1])] and len(crossed) == 4


def test_the_four_kinds_of_change_read_as_their_captions():
    assert caption(("red", "high"), ("red", "low")) == "a red shape with a high tone, then the tone turns low"
    assert caption(("red", "high"), ("blue", "high")) == "a red shape with a high tone, then the shape turns blue"
    assert caption(("red", "high"), ("blue", "low")) == "a red shape with a high tone, then a blue shape with a low tone"
    assert caption(("red", "high"), ("red", "high")) == "a red shape with a high tone, then another red shape with a high tone"
    plans = plan_corpus(CorpusConfig())  # the default corpus has every kind, and no caption dominates
    captions = [line for p in plans for line in video_captions(p)]
    assert {kind for kind in ("the tone turns", "the shape turns", "then a ", "another") if any(kind in c for c in captions)} == {
        "the tone turns", "the shape turns", "then a ", "another"}
    assert max(captions.count(c) for c in captions) <= 0.1 * len(captions)


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sample_rate), "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32)


def tone_amplitude(audio: np.ndarray, sample_rate: int, start: float, hz: float, window: float = 0.1) -> float:
    """Amplitude of the ``hz`` sinusoid in ``[start, start + window)`` (Hann-windowed Goertzel sum)."""
    first = int(round(start * sample_rate))
    chunk = audio[first:first + int(window * sample_rate)].astype(np.float64)
    taper = np.hanning(len(chunk))
    t = np.arange(len(chunk)) / sample_rate
    return 2 * abs(np.sum(chunk * taper * np.exp(-2j * math.pi * hz * t))) / np.sum(taper)


def test_beeps_sound_only_inside_their_scheduled_times_and_are_shorter_than_a_video_frame(corpus):
    result, document = corpus
    video = document["videos"][0]
    rate = document["config"]["sample_rate"]
    audio = decode_audio(result.out_dir / video["file"], rate)
    assert len(audio) == pytest.approx(video["duration"] * rate, abs=0.05 * rate)
    for tone, hz in TONES.items():
        beeps = [b for s in video["segments"] if s["tone"] == tone for b in s["beeps"]]
        for start, end in beeps:
            assert BEEP_SECONDS[0] - 1e-9 <= end - start <= BEEP_SECONDS[1] + 1e-9 < 1.0
            centre = (start + end) / 2
            assert tone_amplitude(audio, rate, centre - 0.05, hz) > 0.3, f"{tone} beep at {start} s is missing"
        # Slide a 0.1 s window over the whole video: the tone is loud exactly where a beep is scheduled.
        loud_runs, run_start = [], None
        for step in range(int((video["duration"] - 0.1) / 0.02) + 1):
            t = step * 0.02
            near_beep = any(t - 0.03 < end and start < t + 0.1 + 0.03 for start, end in beeps)
            amplitude = tone_amplitude(audio, rate, t, hz)
            if not near_beep:
                assert amplitude < 0.05, f"{tone} tone heard at {t:.2f} s where no beep is scheduled"
            if amplitude > 0.15 and run_start is None:
                run_start = t
            elif amplitude <= 0.15 and run_start is not None:
                loud_runs.append((run_start, t))
                run_start = None
        if run_start is not None:  # a beep right at the end of the video
            loud_runs.append((run_start, video["duration"]))
        assert len(loud_runs) == len(beeps)
        assert all(end - start < 1.0 for start, end in loud_runs), "every beep is shorter than one second"


def frame_rgb(path: Path, seconds: float, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", f"{seconds}", "-i", str(path), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).astype(int)


def test_shapes_are_drawn_in_their_box_only_while_scheduled(corpus):
    result, document = corpus
    video = document["videos"][0]
    width, height = document["config"]["width"], document["config"]["height"]
    path = result.out_dir / video["file"]
    shown = [s for s in video["segments"] if s["shape"]]
    assert shown
    for segment in shown:
        x, y, w, h = segment["shape"]["box"]
        thickness = segment["shape"]["thickness"]
        # Inside a filled box its centre; inside an outline the middle of its left edge.
        px, py = (x + thickness // 2, y + h // 2) if thickness else (x + w // 2, y + h // 2)
        colour = np.array(COLOURS[segment["shape"]["colour"]])
        during = frame_rgb(path, (segment["start"] + segment["end"]) / 2, width, height)[py, px]
        assert np.abs(during - colour).max() < 40, f"{segment['shape']} not drawn at {segment['start']} s"
        quiet = next((t for t in np.arange(0.5, video["duration"], 1.0)
                      if not any(s["start"] <= t < s["end"] for s in shown)), None)
        if quiet is not None:
            before = frame_rgb(path, quiet, width, height)[py, px]
            assert np.abs(before - np.array(video["background_rgb"])).max() < 20, (
                f"{segment['shape']} box shows something at {quiet} s, when no shape is scheduled")


def clip_frames(path: Path, fps: int, width: int, height: int) -> np.ndarray:
    """The frame at the centre of every 2-s clip (frame number fps * (2k + 1)), decoded in one ffmpeg call."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"select='eq(mod(n,{2 * fps}),{fps})'", "-vsync", "0",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3).astype(int)


def seen(frame: np.ndarray, background: np.ndarray) -> tuple[str, tuple[int, ...]] | None:
    """The colour on screen (nearest of the palette) and its bounding box, or None for an empty screen."""
    ys, xs = np.nonzero(np.abs(frame - background).max(axis=2) > 40)
    if len(ys) < 50:
        return None
    pixel = np.median(frame[ys, xs], axis=0)
    colour = min(COLOURS, key=lambda name: np.abs(pixel - np.array(COLOURS[name])).sum())
    return colour, (xs.min(), ys.min(), xs.max(), ys.max())


def heard(audio: np.ndarray, rate: int, start: float) -> str | None:
    """The pitch that beeps in the clip starting at ``start`` (0.1-s windows every 0.05 s), or None."""
    loudest = {tone: max(tone_amplitude(audio, rate, start + offset, hz) for offset in np.arange(0.05, 1.85, 0.05))
               for tone, hz in TONES.items()}
    tone = max(loudest, key=loudest.get)
    return tone if loudest[tone] > 0.15 else None


def test_each_caption_says_what_the_decoded_picture_and_sound_show_in_that_order(corpus):
    """Read the events back from the media alone (colour and box on screen, pitch heard, per 2-s clip), take
    the first two moments where a shape is seen while a tone beeps, and caption them: that is the caption."""
    result, document = corpus
    config = document["config"]
    captions = {line["vid"]: line["caption"] for path in (result.train_captions, result.val_captions)
                for line in read_jsonl(path)}
    for video in document["videos"]:
        path = result.out_dir / video["file"]
        frames = clip_frames(path, config["fps"], config["width"], config["height"])
        audio = decode_audio(path, config["sample_rate"])
        clips = [(seen(frame, np.array(video["background_rgb"])), heard(audio, config["sample_rate"], 2 * k))
                 for k, frame in enumerate(frames)]
        assert len(clips) == video["duration"] // CLIP_SECONDS
        events = []  # runs of clips with the same shape (colour and box, give or take coding noise) and pitch
        for previous, clip in zip([(None, None), *clips], clips):
            same = previous[0] and clip[0] and previous[0][0] == clip[0][0] and previous[1] == clip[1] and max(
                abs(a - b) for a, b in zip(previous[0][1], clip[0][1])) <= 4
            if clip[0] and clip[1] and not same:
                events.append((clip[0][0], clip[1]))
        assert captions[video["vid"]] == caption(events[0], events[1]), video["vid"]


def test_rerun_with_same_settings_reuses_every_video(corpus):
    result, _ = corpus
    before = {p.name: p.stat().st_mtime_ns for p in result.out_dir.rglob("*") if p.is_file()}
    again = build_corpus(CorpusConfig.quick(seed=SEED), result.out_dir, jobs=2)
    assert again.videos_generated == 0 and again.videos_reused == len(list(result.videos_dir.glob("*.mp4")))
    after = {p.name: p.stat().st_mtime_ns for p in result.out_dir.rglob("*") if p.is_file()}
    assert after == before, "nothing is rewritten when nothing changed"


def test_cli_rerun_with_another_seed_replaces_the_videos(tmp_path):
    args = ["make-demo-data", "--out", str(tmp_path), "--quick", "--train-videos", "1", "--val-videos", "1"]
    assert lamflow_main([*args, "--seed", "1"]) == 0
    first = json.loads((tmp_path / "corpus.json").read_text())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "videos").glob("*.mp4")}
    assert sorted(mtimes) == ["train_0000.mp4", "val_0000.mp4"]
    assert lamflow_main([*args, "--seed", "2"]) == 0
    second = json.loads((tmp_path / "corpus.json").read_text())
    assert first["videos"][0]["render_sha256"] != second["videos"][0]["render_sha256"]
    assert all((tmp_path / "videos" / name).stat().st_mtime_ns != mtime for name, mtime in mtimes.items())


@pytest.mark.parametrize(
    "field_name, value",
    [("duration", 15), ("duration", 10), ("duration_jitter", 3), ("queries_per_video", 5), ("train_videos", 0)],
)
def test_config_rejects_bad_sizes_naming_the_field(field_name, value):
    with pytest.raises(ValueError, match=f"CorpusConfig.{field_name}="):
        CorpusConfig(**{field_name: value})

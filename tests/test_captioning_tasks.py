"""Captions and audio descriptions joined to the same shards: MSRVTT videodatainfo and {vid, caption} jsonl,
MAD-v2-style ADs cut out of their movie by time, and the one-line errors for files that do not fit."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from contract_shards import Video, write_extraction_dir

from lamflow.datasets.audio_description import AudioDescriptionTask
from lamflow.datasets.caption_text import decode_caption, end_id, start_id
from lamflow.datasets.captioning import CaptioningTask
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.errors import DataFileError, LamflowError
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import import_h5

STREAMS = ("video", "audio")


def msrvtt(path, videos, sentences):
    path.write_text(json.dumps({
        "info": {"year": 2016}, "videos": [{"video_id": v, "split": s, "category": 0} for v, s in videos],
        "sentences": [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(sentences)],
    }))
    return path


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_all(root, task, streams=STREAMS):
    loader = StreamingLoader(str(root), task, LoaderConfig(streams=streams, batch_size=2, bucket_by_length=False),
                             mode="eval")
    return [batch for batch in loader]


@pytest.fixture
def shards(tmp_path):
    return write_extraction_dir(tmp_path / "shards", [[Video("video1"), Video("video2")], [Video("video3"), Video("clip.4")]])


@pytest.fixture
def videodatainfo(tmp_path):
    return msrvtt(tmp_path / "train_val_videodatainfo.json",
                  [("video1", "train"), ("video2", "train"), ("video3", "validate")],
                  [("video1", "A man is cooking."), ("video2", "a dog runs"), ("video1", "someone cooks food"),
                   ("video3", "a car drives")])


def test_msrvtt_training_reads_one_item_per_caption_of_the_chosen_split(shards, videodatainfo):
    batches = read_all(shards, CaptioningTask(videodatainfo, split="train"))
    keys = [key for batch in batches for key in batch["caption_keys"]]
    captions = [decode_caption(row[~pad].tolist()) for batch in batches
                for row, pad in zip(batch["caption_tokens"], batch["caption_padding"])]
    assert sorted(zip(keys, captions)) == [("video1", "a man is cooking ."), ("video1", "someone cooks food"),
                                           ("video2", "a dog runs")]
    for batch in batches:
        lengths = (~batch["caption_padding"]).sum(1)
        assert (batch["caption_tokens"][:, 0] == start_id()).all()
        assert all(row[n - 1] == end_id() and not row[n:].any() for row, n in zip(batch["caption_tokens"], lengths))


def test_evaluation_reads_one_item_per_video(shards, videodatainfo):
    task = CaptioningTask(videodatainfo, split="train", per_caption=False)
    assert sorted(key for batch in read_all(shards, task) for key in batch["caption_keys"]) == ["video1", "video2"]
    validate = CaptioningTask(videodatainfo, split="validate", per_caption=False)
    assert [key for batch in read_all(shards, validate) for key in batch["caption_keys"]] == ["video3"]


def test_jsonl_captions_join_by_the_recorded_name(shards, tmp_path):
    captions = jsonl(tmp_path / "captions.jsonl", [{"vid": "clip.4", "caption": "a red shape"},
                                                   {"vid": "clip.4", "caption": "a high tone"}])
    [batch] = read_all(shards, CaptioningTask(captions))
    assert batch["keys"] == ["clip_4", "clip_4"] and batch["caption_keys"] == ["clip.4", "clip.4"]
    assert [name for name, _, _ in batch["segments"]] == ["video", "audio"]  # the caption is no input stream


@pytest.mark.parametrize("records, message", [
    ([{"vid": "video1", "caption": "fine"}, {"vid": "ghost", "caption": "a caption"}],
     r"1 annotated video\(s\) are not in the shards .*: ghost; extract them"),
    ([{"vid": "video1", "caption": "  "}], r"captions.jsonl:1: 'caption' must be a non-empty caption"),
    ([{"vid": "video1"}], r"captions.jsonl:1: 'caption' must be a non-empty caption, got None"),
    ([{"vid": "", "caption": "x"}], r"captions.jsonl:1: 'vid' must be a non-empty string"),
])
def test_jsonl_captions_that_do_not_fit_are_one_line_errors(shards, tmp_path, records, message):
    captions = jsonl(tmp_path / "captions.jsonl", records)
    with pytest.raises(DataFileError, match=message) as error:
        read_all(shards, CaptioningTask(captions))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("videos, sentences, split, message", [
    ([("video1", "train")], [("video9", "a cat")], "train", r"sentences\[0\]: video_id 'video9' is not in 'videos'"),
    ([("video1", "train"), ("video2", "validate")], [("video1", "a cat")], None,
     r"holds the splits \['train', 'validate'\]: choose one"),
    ([("video1", "train")], [("video1", "a cat")], "test", r"no video has split 'test'; the file's splits are \['train'\]"),
    ([("video1", "train")], [("video1", "")], "train", r"sentences\[0\]: 'caption' must be a non-empty caption"),
])
def test_msrvtt_files_that_do_not_fit_are_one_line_errors(tmp_path, videos, sentences, split, message):
    with pytest.raises(DataFileError, match=message):
        CaptioningTask(msrvtt(tmp_path / "info.json", videos, sentences), split=split)


def test_a_jsonl_caption_file_has_no_split(tmp_path):
    with pytest.raises(DataFileError, match="a JSONL caption file has no splits"):
        CaptioningTask(jsonl(tmp_path / "c.jsonl", [{"vid": "a", "caption": "b"}]), split="train")


# ---- audio description ------------------------------------------------------------------------------------


def movie(name, duration=20.0):
    return Video(name, duration=duration)  # video every 0.5 s, audio every 0.1 s


def ad_items(root, ads, before, after, streams=STREAMS):
    task = AudioDescriptionTask(ads, before, after)
    loader = StreamingLoader(str(root), task, LoaderConfig(streams=streams, batch_size=1, bucket_by_length=False),
                             mode="eval")
    return {batch["caption_keys"][0]: batch for batch in loader}


def test_an_ad_item_is_its_context_window_cut_from_the_movie_with_times_from_the_window_start(tmp_path):
    root = write_extraction_dir(tmp_path / "movies", [[movie("tt001"), movie("tt002")]])
    ads = jsonl(tmp_path / "ads.jsonl", [
        {"ad_id": 1, "movie": "tt001", "start": 5.0, "end": 7.0, "text": "He opens the door."},
        {"ad_id": "a2", "movie": "tt002", "start": 0.5, "end": 1.0, "text": "Night falls."},
        {"ad_id": 3, "movie": "tt002", "start": 19.0, "end": 20.4, "text": "She leaves."},  # ends after the features
    ])
    items = ad_items(root, ads, before=1.0, after=2.0)

    def times(key, stream):
        batch = items[key]
        return batch["stream_timestamps"][stream][0][~batch["stream_padding"][stream][0]].tolist()

    assert times("1", "video") == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])  # 4..9 s
    assert len(times("1", "audio")) == 51 and items["1"]["duration"].item() == pytest.approx(5.0)
    assert times("a2", "video") == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])  # clipped at 0: 0..3 s
    assert items["3"]["duration"].item() == pytest.approx(2.0)  # 18 s .. the movie's end at 20 s
    assert decode_caption(items["1"]["caption_tokens"][0].tolist()) == "he opens the door ."


def test_an_ad_shorter_than_the_frame_spacing_keeps_the_nearest_frame(tmp_path):
    root = write_extraction_dir(tmp_path / "movies", [[movie("tt001")]])
    ads = jsonl(tmp_path / "ads.jsonl", [{"ad_id": 1, "movie": "tt001", "start": 6.2, "end": 6.3, "text": "A flash."}])
    batch = ad_items(root, ads, before=0.0, after=0.0, streams=("video",))["1"]
    assert batch["stream_timestamps"]["video"][0].tolist() == [0.0] and batch["streams"]["video"].shape[1] == 1


@pytest.mark.parametrize("fields", [("movie", "text"), ("movie_id", "ad")])
def test_ad_files_use_either_spelling_of_the_movie_and_text_fields(tmp_path, fields):
    root = write_extraction_dir(tmp_path / "movies", [[movie("tt001")]])
    movie_field, text_field = fields
    ads = jsonl(tmp_path / "ads.jsonl", [{"ad_id": 7, movie_field: "tt001", "start": 1, "end": 2, text_field: "Rain."}])
    assert list(ad_items(root, ads, 1.0, 1.0)) == ["7"]


def test_an_ad_outside_its_movie_is_a_one_line_error_naming_it(tmp_path):
    root = write_extraction_dir(tmp_path / "movies", [[movie("tt001")]])
    ads = jsonl(tmp_path / "ads.jsonl", [{"ad_id": 9, "movie": "tt001", "start": 25.0, "end": 26.0, "text": "Credits."}])
    with pytest.raises(LamflowError, match=r"AD '9' \(25-26 s\) lies outside movie 'tt001'.* last 20 s") as error:
        ad_items(root, ads, 1.0, 1.0)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("records, message", [
    ([{"ad_id": 1, "movie": "tt001", "start": 1, "end": 2, "text": "a"},
      {"ad_id": 1, "movie": "tt001", "start": 3, "end": 4, "text": "b"}], r"ads.jsonl:2: duplicate ad_id '1' \(first at .*ads.jsonl:1\)"),
    ([{"ad_id": 1, "movie": "tt001", "start": 3, "end": 2, "text": "a"}], r"ads.jsonl:1: need seconds 0 <= 'start' <= 'end'"),
    ([{"ad_id": 1, "start": 1, "end": 2, "text": "a"}], r"ads.jsonl:1: missing field 'movie' \(or 'movie_id'\)"),
    ([{"ad_id": 1, "movie": "tt001", "start": 1, "end": 2, "text": ""}], r"ads.jsonl:1: the AD text .* must be a non-empty caption"),
    ([{"ad_id": 1, "movie": "tt404", "start": 1, "end": 2, "text": "a"}], r"not in the shards .*: tt404"),
])
def test_ad_files_that_do_not_fit_are_one_line_errors(tmp_path, records, message):
    root = write_extraction_dir(tmp_path / "movies", [[movie("tt001")]])
    with pytest.raises(DataFileError, match=message):
        ad_items(root, jsonl(tmp_path / "ads.jsonl", records), 1.0, 1.0)


def test_ads_read_frames_imported_from_a_mad_style_h5_file(tmp_path):
    fps, seconds = 5.0, 120.0
    with h5py.File(tmp_path / "frames.h5", "w") as h5:
        h5["tt0111161"] = np.random.default_rng(0).standard_normal((int(seconds * fps), 16)).astype(np.float32)
    import_h5(tmp_path / "frames.h5", tmp_path / "mad", ImportOptions(stream="video", fps=fps))
    ads = jsonl(tmp_path / "ads.jsonl", [{"ad_id": "m1", "movie_id": "tt0111161", "start": 60.0, "end": 63.0,
                                          "ad": "Andy walks in the rain."}])
    batch = ad_items(tmp_path / "mad", ads, before=2.0, after=1.0, streams=("video",))["m1"]
    # 58..64 s at 5 fps: 31 frames, not the movie's 600.
    assert batch["streams"]["video"].shape == (1, 31, 16)
    assert batch["stream_timestamps"]["video"][0, -1].item() == pytest.approx(6.0)

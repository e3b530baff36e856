"""`lamflow extract --preset moment_detr` gives the features of moment_detr's own extractor.

The reference is moment_detr's ``run_on_video`` extractor re-implemented from its code
(tests/moment_detr_reference.py: ffprobe, its ffmpeg-python chain, numpy preprocessing, its CLIP forward in
plain torch), run on the same OpenAI-format state dict that lamflow loads with ``--pretrained PATH``: a
random ViT-B/32-shaped toy (224 px, patch 32, 2 heads; text width 128 projected to 64, so a projected token
could not pass for an unprojected one). Videos: odd sizes, portrait and landscape, NTSC and PAL-ish rates,
a 1.5-s clip (sampled at 2 fps by its rule), a 2.05-s one (1 fps) and a 1.5-s mkv, whose header states no
frame count, so the rule does not apply (0.5 fps).
"""
import subprocess

import numpy as np
import pytest
import torch
import webdataset as wds

import moment_detr_reference as reference
from lamflow.cli import main
from lamflow.pipelines.clip_encoder import ClipWeightsError
from lamflow.pipelines.featurize import load_encoders
from lamflow.pipelines.settings import ExtractSettings

# name: (testsrc2 size, stored size, frame rate, seconds, container, pixel format)
VIDEOS = {
    "wide_odd_ntsc": ("320x180", "321:179", "30000/1001", 7.3, "mp4", "yuv444p"),
    "tall_odd_film": ("180x320", "181:327", "24000/1001", 5.0, "mp4", "yuv444p"),
    "small_upscaled": ("96x64", "97:61", "12.5", 4.1, "mp4", "yuv444p"),
    "short_1500ms": ("250x140", "250:140", "25", 1.5, "mp4", "yuv420p"),
    "short_2050ms": ("160x120", "160:120", "25", 2.05, "mp4", "yuv420p"),
    "short_mkv": ("180x320", "181:327", "30", 1.5, "mkv", "yuv444p"),
}
# (clips, frames per second) moment_detr's extractor gives each video: computed by it, stated here so the
# test also says what the rule is.
EXPECTED_CLIPS = {"wide_odd_ntsc": (4, 0.5), "tall_odd_film": (3, 0.5), "small_upscaled": (2, 0.5),
                  "short_1500ms": (3, 2.0), "short_2050ms": (2, 1.0), "short_mkv": (1, 0.5)}
QUERIES = [
    {"qid": 7, "vid": "wide_odd_ntsc", "query": "A man in a gray top walks from outside to inside."},
    {"qid": 8, "vid": "wide_odd_ntsc", "query": "Colourful BARS; then numbers count up!!"},
    {"qid": 9012, "vid": "short_1500ms", "query": "dog"},
]
RELATIVE = 1e-3  # the bound: max |ours - theirs| / max |theirs|, float32 on CPU


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def make_video(path, size, stored, rate, seconds, pix_fmt):
    codec = ["-c:v", "ffv1"] if path.suffix == ".mkv" else ["-c:v", "libx264", "-preset", "ultrafast"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
                    "-vf", f"scale={stored}", *codec, "-pix_fmt", pix_fmt, str(path)], check=True)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """lamflow's extraction of the videos with the preset (samples by video name), and the reference extractor's
    features of the same videos and queries with the same weights."""
    root = tmp_path_factory.mktemp("moment_detr")
    (root / "videos").mkdir()
    for name, (size, stored, rate, seconds, container, pix_fmt) in VIDEOS.items():
        make_video(root / "videos" / f"{name}.{container}", size, stored, rate, seconds, pix_fmt)
    state = reference.openai_state_dict(seed=0)
    torch.save(state, root / "ViT-toy.pt")
    queries = root / "queries.jsonl"
    queries.write_text("".join(f'{{"qid": {q["qid"]}, "vid": "{q["vid"]}", "query": "{q["query"]}"}}\n' for q in QUERIES))
    out = root / "features"
    assert main(["extract", str(root / "videos"), "--out", str(out), "--preset", "moment_detr", "--clip-model",
                 "lamflow-tiny-224", "--pretrained", str(root / "ViT-toy.pt"), "--texts", str(queries),
                 "--no-progress"]) == 0
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = {s["meta.json"]["original_name"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    model = reference.OpenAIClip(state)
    videos = {name: reference.encode_video(root / "videos" / f"{name}.{VIDEOS[name][4]}", model) for name in VIDEOS}
    queries = dict(zip((q["qid"] for q in QUERIES), reference.encode_queries([q["query"] for q in QUERIES], model)))
    return {"out": out, "samples": samples, "videos": videos, "queries": queries}


@pytest.mark.parametrize("name", VIDEOS)
def test_each_video_has_moment_detr_clip_count_and_features(extracted, name):
    theirs = extracted["videos"][name]
    sample = extracted["samples"][name]
    ours = sample["video.npy"]
    clips, rate = EXPECTED_CLIPS[name]
    assert len(theirs) == clips and ours.shape == theirs.shape and ours.dtype == np.float32
    assert relative_error(ours, theirs) < RELATIVE
    # Clips differ from one another (by 7 % or more here), so features a clip off would fail the bound above.
    if clips > 1:
        assert relative_error(ours[1:], theirs[:-1]) > 10 * RELATIVE
    assert np.array_equal(sample["video_ts.npy"], np.arange(clips, dtype=np.float32) / rate)  # clip k starts at k / rate
    provenance = sample["meta.json"]["provenance"]["video"]
    assert provenance["preset"] == "moment_detr" and provenance["fps"] == rate and provenance["normalisation"].startswith("none")


def test_the_short_video_rule_is_noted_where_it_applied(extracted):
    notes = {name: " ".join(extracted["samples"][name]["meta.json"]["notes"]) for name in VIDEOS}
    assert "sampled at 2 fps" in notes["short_1500ms"] and "sampled at 1 fps" in notes["short_2050ms"]
    assert "sampled at" not in notes["short_mkv"] + notes["wide_odd_ntsc"]


def test_queries_have_moment_detr_last_hidden_state_and_pooler_output(extracted):
    for query in QUERIES:
        sample = extracted["samples"][query["vid"]]
        row = [text["id"] for text in sample["meta.json"]["texts"]].index(str(query["qid"]))
        tokens = sample["meta.json"]["texts"][row]["tokens"]
        hidden, pooled = extracted["queries"][query["qid"]]
        assert hidden.shape == (tokens, 128)  # start token to end token, before the projection (width 128)
        assert relative_error(sample["text.npy"][row, :tokens], hidden) < RELATIVE
        assert not sample["text.npy"][row, tokens:].any()  # padding past the text's tokens
        assert pooled.shape == (64,) and relative_error(sample["text_pooled.npy"][row], pooled) < RELATIVE
    provenance = extracted["samples"]["wide_odd_ntsc"]["meta.json"]["provenance"]["text"]
    assert provenance["preset"] == "moment_detr" and provenance["normalisation"] == "none"


def test_an_export_is_what_moment_detr_trains_on(extracted, tmp_path, capsys):
    assert main(["export", str(extracted["out"]), "--layout", "moment_detr", "--out", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err  # the preset's features are the published kind
    for name, theirs in extracted["videos"].items():  # read as StartEndDataset reads them: L2-normalised rows
        loaded = reference.load_video_features([tmp_path / "clip_features"], name)
        assert loaded.shape == theirs.shape and relative_error(loaded, reference.l2_normalize(theirs)) < RELATIVE
    for qid, (hidden, pooled) in extracted["queries"].items():
        tokens = reference.load_query_features(tmp_path / "clip_text_features", qid)
        assert tokens.shape == hidden.shape and relative_error(tokens, reference.l2_normalize(hidden)) < RELATIVE
        pooler = reference.load_query_features(tmp_path / "clip_text_features", qid, "pooler_output")
        assert relative_error(pooler, reference.l2_normalize(pooled)) < RELATIVE


def test_the_preset_sets_fps_and_dtype_and_refuses_other_values(tmp_path, media, capsys):
    settings = ExtractSettings(preset="moment_detr")
    assert (settings.fps, settings.dtype) == (0.5, "float32")
    video = media("clip.mp4", duration=1.0, audio=False)
    assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--preset", "moment_detr", "--fps", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("lamflow extract: error: fps=2.0 contradicts preset 'moment_detr', which fixes fps=0.5; leave fps at "
                   "its default")


def test_the_preset_refuses_a_model_that_does_not_take_224_px_crops():
    # Where a worker loads its encoders: the run stops there instead of failing every video.
    with pytest.raises(ClipWeightsError, match=r"preset 'moment_detr' crops 224 x 224 frames, but 'lamflow-tiny' takes "
                                               r"64 x 64; use a 224-px CLIP such as ViT-B-32-quickgelu"):
        load_encoders(ExtractSettings(preset="moment_detr", clip_model="lamflow-tiny"))

"""moment_detr-style npz feature folders <-> lamflow shards (import-npz / export --layout moment_detr).

The folders are written with numpy as moment_detr's features.tar.gz holds them (clip_features/{vid}.npz,
slowfast_features/{vid}.npz, clip_text_features/qid{qid}.npz, QD-DETR's pann_features/{vid}.npy); exports
are read back by moment_detr's StartEndDataset logic (tests/moment_detr_reference.py).
"""
import json
import pickle
import re

import numpy as np
import pytest
import webdataset as wds

import moment_detr_reference as reference
from contract_shards import D_TEXT, D_VIDEO, Video, write_extraction_dir
from test_trainer import CONFIGS, FRUGAL, SMALL_MODEL

from lamflow.cli import main
from lamflow.contract import PARTITIONS_DIR, partition_dir_name
from lamflow.datasets.texts import TextStore
from lamflow.fileio import read_jsonl
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.npzio import export_npz, import_npz
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics
from lamflow.train.trainer import train

CLIP_D, SLOWFAST_D, TEXT_D, PANN_D = 16, 24, 12, 8
# vid: seconds (QVHighlights vids carry dots, which keys cannot: the import keeps them as names)
VIDEOS = {"NUsG9BgSes0_210.0_360.0": 30, "bP5KfdFJzC4_660.0_810.0": 24, "j7rJstUseKg_360.0_510.0": 20}
QUERIES = [  # QVHighlights annotation lines, 2-s clips
    {"qid": 2579, "query": "A girl and her mother cooked while talking.", "vid": "NUsG9BgSes0_210.0_360.0",
     "relevant_windows": [[4, 12]], "relevant_clip_ids": [2, 3, 4, 5], "saliency_scores": [[1, 2, 3]] * 4},
    {"qid": 5071, "query": "A woman shows a drawing.", "vid": "bP5KfdFJzC4_660.0_810.0",
     "relevant_windows": [[10, 18]], "relevant_clip_ids": [5, 6, 7, 8], "saliency_scores": [[3, 3, 4]] * 4},
    {"qid": 77, "query": "Men play cards at a table.", "vid": "j7rJstUseKg_360.0_510.0",
     "relevant_windows": [[0, 6]], "relevant_clip_ids": [0, 1, 2], "saliency_scores": [[2, 4, 4]] * 3},
]


def npz_folder(root, name, arrays, save=np.savez):
    folder = root / name
    folder.mkdir(parents=True)
    for stem, members in arrays.items():
        save(folder / f"{stem}.npz", **members)
    return folder


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A features/ folder as moment_detr's tarball lays it out, with the arrays written."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    clip = {vid: rng.standard_normal((seconds // 2, CLIP_D)).astype(np.float32) for vid, seconds in VIDEOS.items()}
    # SlowFast has one row more on one video ("some features are slightly longer than the others")
    slowfast = {vid: rng.standard_normal((seconds // 2 + (vid == "j7rJstUseKg_360.0_510.0"), SLOWFAST_D))
                .astype(np.float16) for vid, seconds in VIDEOS.items()}
    texts = {q["qid"]: (rng.standard_normal((3 + len(q["query"].split()), TEXT_D)).astype(np.float32),
                        rng.standard_normal(TEXT_D).astype(np.float32)) for q in QUERIES}
    npz_folder(root, "clip_features", {vid: {"features": a} for vid, a in clip.items()})
    npz_folder(root, "slowfast_features", {vid: {"features": a} for vid, a in slowfast.items()}, save=np.savez_compressed)
    npz_folder(root, "clip_text_features", {f"qid{qid}": {"last_hidden_state": h, "pooler_output": p}
                                             for qid, (h, p) in texts.items()})
    (root / "pann_features").mkdir()
    pann = {vid: rng.standard_normal((seconds // 2, PANN_D)).astype(np.float32) for vid, seconds in VIDEOS.items()}
    for vid, array in pann.items():
        np.save(root / "pann_features" / f"{vid}.npy", array)
    annotations = root / "highlight_train_release.jsonl"
    annotations.write_text("".join(json.dumps({**q, "duration": VIDEOS[q["vid"]]}) + "\n" for q in QUERIES))
    return {"root": root, "clip": clip, "slowfast": slowfast, "texts": texts, "pann": pann, "annotations": annotations}


@pytest.fixture(scope="module")
def imported(features, tmp_path_factory):
    """Each folder of ``features`` imported with `lamflow import-npz`."""
    out = tmp_path_factory.mktemp("imported")
    root = features["root"]
    assert main(["import-npz", str(root / "clip_features"), "--out", str(out / "clip"), "--fps", "0.5"]) == 0
    assert main(["import-npz", str(root / "slowfast_features"), "--out", str(out / "slowfast"), "--fps", "0.5"]) == 0
    assert main(["import-npz", str(root / "clip_text_features"), "--out", str(out / "text"), "--stream", "text"]) == 0
    assert main(["import-npz", str(root / "pann_features"), "--out", str(out / "pann"), "--stream", "audio",
                 "--fps", "0.5"]) == 0
    return out


def samples_of(out):
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {s["meta.json"]["original_name"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}


def test_a_feature_folder_becomes_one_sample_per_vid_with_a_row_every_two_seconds(features, imported):
    samples = samples_of(imported / "clip")
    assert sorted(samples) == sorted(VIDEOS)
    sample = samples["NUsG9BgSes0_210.0_360.0"]
    assert sample["__key__"] == "NUsG9BgSes0_210_0_360_0"  # the vid, with its dots, stays the sample's name
    assert np.array_equal(sample["video.npy"], features["clip"]["NUsG9BgSes0_210.0_360.0"])
    assert np.array_equal(sample["video_ts.npy"], np.arange(15, dtype=np.float32) * 2)
    assert sample["audio.npy"].shape == (0, 0)
    provenance = sample["meta.json"]["provenance"]["video"]
    assert (provenance["feature_dir"], provenance["key"], provenance["fps"]) == ("clip_features", "features", 0.5)
    assert samples_of(imported / "slowfast")["j7rJstUseKg_360.0_510.0"]["video.npy"].dtype == np.float16  # kept
    pann = samples_of(imported / "pann")["bP5KfdFJzC4_660.0_810.0"]
    assert np.array_equal(pann["audio.npy"], features["pann"]["bP5KfdFJzC4_660.0_810.0"]) and pann["video.npy"].shape == (0, 0)


def test_a_query_folder_becomes_text_samples_read_by_qid(features, imported):
    samples = samples_of(imported / "text")
    assert sorted(samples) == sorted(str(q["qid"]) for q in QUERIES)
    hidden, pooled = features["texts"][5071]
    sample = samples["5071"]
    assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"text.npy", "text_pooled.npy", "meta.json"}
    assert np.array_equal(sample["text.npy"][0], hidden) and np.array_equal(sample["text_pooled.npy"][0], pooled)
    assert sample["meta.json"]["texts"] == [{"id": "5071", "tokens": len(hidden)}]
    store = TextStore(imported / "text")  # what data.train_texts reads
    assert np.array_equal(store.tokens("2579"), features["texts"][2579][0])


def test_import_resumes_and_refuses_other_settings(features, imported, capsys):
    folder = features["root"] / "clip_features"
    again = import_npz(folder, imported / "clip", ImportOptions(fps=0.5))
    assert (again.imported, again.skipped_done) == (0, 3)
    assert main(["import-npz", str(folder), "--out", str(imported / "clip"), "--fps", "1"]) == 2
    assert "fps: 0.5 -> 1.0" in capsys.readouterr().err


def test_import_then_export_writes_the_same_files_back(features, imported, tmp_path, capsys):
    out = tmp_path / "features"
    assert main(["export", *(str(imported / name) for name in ("clip", "slowfast", "text", "pann")),
                 "--layout", "moment_detr", "--out", str(out)]) == 0
    assert "wrote 12 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["clip_features", "clip_text_features", "pann_features",
                                                    "slowfast_features"]
    for vid in VIDEOS:
        with np.load(out / "clip_features" / f"{vid}.npz") as npz:
            assert npz.files == ["features"] and np.array_equal(npz["features"], features["clip"][vid])
        with np.load(out / "slowfast_features" / f"{vid}.npz") as npz:  # float16 in, float32 out: exact
            assert npz["features"].dtype == np.float32 and np.array_equal(npz["features"], features["slowfast"][vid])
    for qid, (hidden, pooled) in features["texts"].items():
        with np.load(out / "clip_text_features" / f"qid{qid}.npz") as npz:
            assert sorted(npz.files) == ["last_hidden_state", "pooler_output"]
            assert np.array_equal(npz["last_hidden_state"], hidden) and np.array_equal(npz["pooler_output"], pooled)
    # pann_features came from .npy files; the layout writes npz
    assert np.array_equal(np.load(out / "pann_features" / "j7rJstUseKg_360.0_510.0.npz")["features"],
                          features["pann"]["j7rJstUseKg_360.0_510.0"])


def test_an_export_is_what_moment_detrs_dataset_reads(features, imported, tmp_path):
    out = tmp_path / "features"
    export_npz([imported / "slowfast", imported / "clip", imported / "text"], out)
    for query in QUERIES:
        video = reference.load_video_features([out / "slowfast_features", out / "clip_features"], query["vid"])
        rows = VIDEOS[query["vid"]] // 2  # SlowFast's extra row is cut to CLIP's count
        assert video.shape == (rows, SLOWFAST_D + CLIP_D) and video.dtype == np.float32
        expected = np.concatenate([features["slowfast"][query["vid"]][:rows].astype(np.float32),
                                   features["clip"][query["vid"]]], axis=1)
        np.testing.assert_allclose(video[:, SLOWFAST_D:], reference.l2_normalize(expected[:, SLOWFAST_D:]), rtol=1e-6)
        tokens = reference.load_query_features(out / "clip_text_features", query["qid"])
        pooled = reference.load_query_features(out / "clip_text_features", query["qid"], "pooler_output")
        assert tokens.shape == (len(features["texts"][query["qid"]][0]), TEXT_D) and tokens.dtype == np.float32
        assert pooled.shape == (TEXT_D,) and pooled.dtype == np.float32


def test_an_extraction_exports_its_videos_and_queries_and_a_partitioned_tree_reads_as_one(tmp_path):
    root = tmp_path / "feats"
    halves = [[Video("NUsG9BgSes0_210.0_360.0", texts=[("2579", "a girl cooks", 5)])],
              [Video("bP5KfdFJzC4_660.0_810.0", audio=False, texts=[("5071", "a drawing", 4), ("5072", "cards", 3)])]]
    for index, videos in enumerate(halves):
        write_extraction_dir(root / PARTITIONS_DIR / partition_dir_name(index, 2), [videos])
    summary = export_npz([root], tmp_path / "out")
    # lamflow's test shards name no encoder: <stream>_features; one video has no audio and is counted, not written
    assert summary.files == {"video_features": 2, "audio_features": 1, "text_features": 3} and summary.skipped == {"audio": 1}
    with np.load(tmp_path / "out" / "video_features" / "bP5KfdFJzC4_660.0_810.0.npz") as npz:
        assert npz["features"].shape == (8, D_VIDEO) and npz["features"].dtype == np.float32
    with np.load(tmp_path / "out" / "text_features" / "qid5072.npz") as npz:
        assert npz["last_hidden_state"].shape == (3, D_TEXT) and npz["pooler_output"].shape == (D_TEXT,)
    with pytest.raises(ValueError, match=r"both write .*video_features; export them to different --out folders"):
        export_npz([root, root / PARTITIONS_DIR / partition_dir_name(0, 2)], tmp_path / "again")


def test_export_h5_is_export_layout_h5(imported, tmp_path):
    assert main(["export-h5", str(imported / "clip"), "--out", str(tmp_path / "a.h5")]) == 0
    assert main(["export", str(imported / "clip"), "--layout", "h5", "--out", str(tmp_path / "b.h5")]) == 0
    import h5py

    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        assert sorted(a) == sorted(b) == sorted(VIDEOS)
        assert all(np.array_equal(a[vid][()], b[vid][()]) for vid in VIDEOS)


def test_qvhighlights_lam_trains_on_an_imported_feature_folder(features, imported, tmp_path):
    out = tmp_path / "run"
    annotations = features["annotations"]
    config = load_config(CONFIGS / "qvhighlights_lam.yaml", [
        f"data.train_shards={imported / 'clip'}", f"data.train_annotations={annotations}",
        f"data.train_texts={imported / 'text'}", f"data.val_shards={imported / 'clip'}",
        f"data.val_annotations={annotations}", f"data.val_texts={imported / 'text'}",
        "data.loader.streams=[text,video]", "model.downsample={}", "data.loader.batch_size=2", "data.eval_batch_size=2",
        *SMALL_MODEL, *FRUGAL, "optim.max_steps=3", "optim.warmup_steps=1", "run.log_every=1", "run.eval_every=3",
        "run.progress=false", f"run.out_dir={out}",
    ])
    train(config)
    metrics = read_metrics(out / "metrics.jsonl")
    steps = [r for r in metrics if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    rows = read_jsonl(out / "predictions" / "val-step-00000003.jsonl")
    assert sorted((r["qid"], r["vid"]) for r in rows) == sorted((q["qid"], q["vid"]) for q in QUERIES)
    # one saliency score per 2-s clip: the imported rows are the annotation's clips
    assert {r["vid"]: len(r["pred_saliency_scores"]) for r in rows} == {vid: s // 2 for vid, s in VIDEOS.items()}


# ---- bad folders: one line each, nothing written ----

class Unpicklable:
    """An object whose unpickling would run code: it must never be unpickled."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def write_bad(folder, case):
    folder.mkdir()
    good = np.ones((4, 8), np.float32)
    if case == "pickled":
        np.savez(folder / "v.npz", features=np.array([Unpicklable()], dtype=object))
    elif case == "raw_pickle":
        (folder / "v.npz").write_bytes(pickle.dumps({"features": good}))
    elif case == "no_features":
        np.savez(folder / "v.npz", frames=good)
    elif case == "query_file":
        np.savez(folder / "v.npz", last_hidden_state=good, pooler_output=good[0])
    elif case == "widths":
        np.savez(folder / "a.npz", features=good)
        np.savez(folder / "b.npz", features=good)
        np.savez(folder / "c.npz", features=np.ones((4, 9), np.float32))
    elif case == "empty":
        np.savez(folder / "v.npz", features=np.ones((0, 8), np.float32))
    elif case == "three_d":
        np.savez(folder / "v.npz", features=np.ones((1, 4, 8), np.float32))
    elif case == "nothing":
        (folder / "README.txt").write_text("no features here")


@pytest.mark.parametrize("case, fragment", [
    ("pickled", r"v\.npz: 'features' has dtype object; expected numeric features"),
    ("raw_pickle", r"v\.npz: not a readable \.npz array file"),
    ("no_features", r"v\.npz has no key 'features' \(it holds \['frames'\]\); a feature folder holds one \{vid\}\.npz"),
    ("query_file", r"v\.npz holds \['last_hidden_state', 'pooler_output'\]: query features; import a query folder "
                   r"with --stream text"),
    ("widths", r"'c' has 9 features per row where 2 files have 8; one folder holds one feature type"),
    ("empty", r"v\.npz: 'features' is empty \(shape \(0, 8\)\)"),
    ("three_d", r"v\.npz: 'features' has shape \(1, 4, 8\)"),
    ("nothing", r"holds no \.npz files; a feature folder holds one \{vid\}\.npz per video"),
])
def test_a_bad_feature_folder_is_one_error_line_before_anything_is_written(tmp_path, capsys, case, fragment):
    write_bad(tmp_path / "feats", case)
    assert main(["import-npz", str(tmp_path / "feats"), "--out", str(tmp_path / "o"), "--fps", "0.5"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lamflow import-npz: error: ") and re.search(fragment, err), err
    assert "unpickled!" not in captured.out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("files, fragment", [
    ({"qid1.npz": {"features": np.ones((4, 8), np.float32)}}, r"qid1\.npz holds \['features'\]: video features; "
                                                              r"import a feature folder with --stream video --fps RATE"),
    ({"query1.npz": {"last_hidden_state": np.ones((4, 8), np.float32)}}, r"query1\.npz: not named qid<qid>\.npz"),
    ({"qid1.npz": {"last_hidden_state": np.ones((600, 8), np.float32)}}, r"file '1' has 600 rows .*looks like a frames"),
    ({"qid1.npz": {"last_hidden_state": np.ones((4, 8), np.float32), "pooler_output": np.ones((2, 8), np.float32)}},
     r"qid1\.npz: 'pooler_output' has shape \(2, 8\); pooler_output is one D-wide vector"),
])
def test_a_bad_query_folder_is_one_error_line(tmp_path, capsys, files, fragment):
    npz_folder(tmp_path, "texts", {name[:-4]: members for name, members in files.items()})
    assert main(["import-npz", str(tmp_path / "texts"), "--out", str(tmp_path / "o"), "--stream", "text"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(fragment, err), err


def test_fps_is_required_for_features_and_a_nan_file_is_a_recorded_failure(tmp_path, capsys):
    npz_folder(tmp_path, "feats", {"ok": {"features": np.ones((4, 8), np.float32)},
                                   "bad": {"features": np.full((4, 8), np.nan, np.float32)}})
    assert main(["import-npz", str(tmp_path / "feats"), "--out", str(tmp_path / "o")]) == 2
    assert "--fps is required for --stream video" in capsys.readouterr().err
    assert main(["import-npz", str(tmp_path / "feats"), "--out", str(tmp_path / "o"), "--fps", "0.5"]) == 0
    assert "imported 1 of 2 files (0 already done, 1 failed)" in capsys.readouterr().out
    assert list(samples_of(tmp_path / "o")) == ["ok"]

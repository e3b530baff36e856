"""MAD-style HDF5 feature and language files <-> lamflow shards (import-h5 / export-h5), on real h5py files and tars."""
import hashlib
import json
import re

import h5py
import numpy as np
import pytest
import webdataset as wds

from lamflow.cli import main
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import export_h5, import_h5
from lamflow.pipelines.manifest import SettingsMismatchError
from contract_shards import D_TEXT, Video, write_extraction_dir
from mad_layout import D_FRAMES, D_WORDS, write_language


@pytest.fixture
def mad_file(tmp_path):
    """A MAD-style file: one T x D dataset per movie id, float32 and float16, ids with dots and groups."""
    rng = np.random.default_rng(0)
    data = {
        "movie_1": rng.standard_normal((50, 16)).astype(np.float32),
        "tt0001.v2": rng.standard_normal((31, 16)).astype(np.float16),
        "group/nested": rng.standard_normal((7, 16)).astype(np.float32),
    }
    path = tmp_path / "CLIP_frames_features_5fps.h5"
    with h5py.File(path, "w") as h5:
        for name, array in data.items():
            h5.create_dataset(name, data=array)
    return path, data


def read_samples(out):
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}


def test_import_writes_the_shard_contract_with_timestamps_and_an_empty_other_stream(mad_file, tmp_path):
    path, data = mad_file
    summary = import_h5(path, tmp_path / "out", ImportOptions(stream="video", fps=5.0, shard_samples=2))
    assert (summary.datasets, summary.imported) == (3, 3)
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["group_nested", "movie_1", "tt0001_v2"]
    movie = samples["movie_1"]
    assert np.array_equal(movie["video.npy"], data["movie_1"])
    assert np.allclose(movie["video_ts.npy"], np.arange(50) / 5.0) and movie["video_ts.npy"].dtype == np.float32
    assert movie["audio.npy"].shape == (0, 0) and movie["audio_ts.npy"].shape == (0,)
    assert any("no audio stream" in note for note in movie["meta.json"]["notes"])
    assert movie["meta.json"]["duration"] == 10.0
    assert samples["tt0001_v2"]["meta.json"]["original_name"] == "tt0001.v2"
    assert samples["tt0001_v2"]["video.npy"].dtype == np.float16  # the file's dtype is kept
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"shard-000000.tar": 2, "shard-000001.tar": 1}


def test_import_then_export_round_trips_every_dataset_exactly(mad_file, tmp_path):
    path, data = mad_file
    assert main(["import-h5", str(path), "--out", str(tmp_path / "out"), "--fps", "5"]) == 0
    assert main(["export-h5", str(tmp_path / "out"), "--out", str(tmp_path / "back.h5")]) == 0
    with h5py.File(tmp_path / "back.h5", "r") as h5:
        names = []
        h5.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
        assert sorted(names) == sorted(data)
        for name, array in data.items():
            assert h5[name].dtype == array.dtype and np.array_equal(h5[name][()], array)
        assert h5["movie_1"].attrs["fps"] == 5.0 and h5["movie_1"].attrs["key"] == "movie_1"


def test_import_audio_stream_and_dtype_conversion(mad_file, tmp_path):
    path, data = mad_file
    import_h5(path, tmp_path / "out", ImportOptions(stream="audio", fps=10.0, dtype="float32"))
    sample = read_samples(tmp_path / "out")["tt0001_v2"]
    assert sample["audio.npy"].dtype == np.float32 and np.array_equal(sample["audio.npy"], data["tt0001.v2"].astype(np.float32))
    assert sample["video.npy"].shape == (0, 0)
    export_h5(tmp_path / "out", tmp_path / "audio.h5", stream="audio")
    with h5py.File(tmp_path / "audio.h5", "r") as h5:
        assert h5["tt0001.v2"].shape == (31, 16)


def test_reimport_resumes_and_other_settings_are_refused(mad_file, tmp_path):
    path, _ = mad_file
    import_h5(path, tmp_path / "out", ImportOptions(fps=5.0))
    again = import_h5(path, tmp_path / "out", ImportOptions(fps=5.0))
    assert (again.imported, again.skipped_done, again.shards_written) == (0, 3, [])
    with pytest.raises(SettingsMismatchError, match=r"fps: 5\.0 -> 2\.0"):
        import_h5(path, tmp_path / "out", ImportOptions(fps=2.0))


def test_datasets_that_are_not_t_by_d_features_are_named_in_the_error(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("vid/labels", data=np.arange(5))
    with pytest.raises(ValueError, match=r"dataset 'vid/labels' has shape \(5,\)"):
        import_h5(path, tmp_path / "out", ImportOptions(fps=1.0))
    assert main(["import-h5", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o"), "--fps", "1"]) == 2


# ---- language files (MAD's CLIP_language_tokens_features.h5): one n_words x D dataset per sentence id ----

@pytest.fixture
def language_file(tmp_path):
    rng = np.random.default_rng(1)
    words = {"1050": 9, "1051": 14, "27": 3, "400117": 21}
    path = tmp_path / "CLIP_language_tokens_features.h5"
    return path, write_language(path, words, rng, dtype="float16")


def test_a_language_file_imports_one_text_sample_per_sentence_id(language_file, tmp_path, capsys):
    path, arrays = language_file
    assert main(["import-h5", str(path), "--out", str(tmp_path / "texts"), "--stream", "text"]) == 0  # no --fps
    assert "warning" not in capsys.readouterr().err
    samples = read_samples(tmp_path / "texts")
    assert sorted(samples) == sorted(arrays)
    sample = samples["1051"]
    assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"text.npy", "meta.json"}  # no video, no audio
    assert sample["text.npy"].shape == (1, 14, D_WORDS) and sample["text.npy"].dtype == np.float16
    assert np.array_equal(sample["text.npy"][0], arrays["1051"])
    assert sample["meta.json"]["texts"] == [{"id": "1051", "tokens": 14}]
    records = [json.loads(line) for line in (tmp_path / "texts" / "manifest.jsonl").read_text().splitlines()]
    assert {r["original_name"]: r["dims"] for r in records} == {name: {"text": D_WORDS} for name in arrays}
    assert all(r["duration"] is None for r in records)  # text has no time

    again = import_h5(path, tmp_path / "texts", ImportOptions(stream="text"))  # resumable like every import
    assert (again.imported, again.skipped_done) == (0, 4)
    assert main(["export-h5", str(tmp_path / "texts"), "--out", str(tmp_path / "back.h5"), "--stream", "text"]) == 0
    with h5py.File(tmp_path / "back.h5", "r") as h5:
        assert sorted(h5) == sorted(arrays)
        for name, array in arrays.items():
            assert h5[name].dtype == array.dtype and np.array_equal(h5[name][()], array)
    assert main(["export-h5", str(tmp_path / "texts"), "--out", str(tmp_path / "v.h5")]) == 2  # it holds no video
    assert "sample '1050' has no video stream" in capsys.readouterr().err
    assert not (tmp_path / "v.h5").exists() and not list(tmp_path.glob(".v.h5*"))


def test_export_text_writes_the_queries_of_an_extraction_one_dataset_per_id(tmp_path):
    shards = write_extraction_dir(tmp_path / "out", [[Video("a", texts=[("1", "x", 3), ("2", "y", 5)])],
                                                     [Video("b", texts=[("3", "z", 4)])]])
    assert export_h5(shards, tmp_path / "lang.h5", stream="text") == 3
    with h5py.File(tmp_path / "lang.h5", "r") as h5:
        assert {name: h5[name].shape for name in h5} == {"1": (3, D_TEXT), "2": (5, D_TEXT), "3": (4, D_TEXT)}


@pytest.mark.parametrize("shapes, fragment", [
    ({"3001_MOVIE": (3000, D_FRAMES), "27": (9, D_FRAMES)}, r"dataset '3001_MOVIE' has 3000 rows .*looks like a frames "
                                                            r"file: import it with --stream video --fps RATE"),
    ({"1050": (1, 9, D_WORDS)}, r"dataset '1050' has shape \(1, 9, 12\); a MAD-style language file holds one "
                                r"n_words x D token array per sentence id"),
    ({"1050": (0, D_WORDS)}, r"dataset '1050' is empty \(shape \(0, 12\)\)"),
])
def test_what_is_not_a_language_file_is_refused_as_text_in_one_line(tmp_path, capsys, shapes, fragment):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as h5:
        for name, shape in shapes.items():
            h5.create_dataset(name, data=np.ones(shape, np.float32))
    assert main(["import-h5", str(path), "--out", str(tmp_path / "o"), "--stream", "text"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(fragment, err), err
    assert not (tmp_path / "o").exists()  # refused before the output directory is made


def test_fps_is_required_for_features_and_refused_for_text(language_file, tmp_path, capsys):
    path, _ = language_file
    assert main(["import-h5", str(path), "--out", str(tmp_path / "o"), "--stream", "video"]) == 2
    assert "--fps is required for --stream video" in capsys.readouterr().err
    assert main(["import-h5", str(path), "--out", str(tmp_path / "o"), "--stream", "text", "--fps", "5"]) == 2
    assert "does not apply to stream text" in capsys.readouterr().err


def test_a_language_file_imported_as_video_is_flagged(language_file, mad_file, tmp_path, capsys):
    path, _ = language_file
    assert main(["import-h5", str(path), "--out", str(tmp_path / "o"), "--fps", "5"]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 of 4 datasets are named by integers" in err and "import it with --stream text" in err
    # Frame files are not flagged, short or long: movie ids are not sentence ids.
    assert import_h5(mad_file[0], tmp_path / "frames", ImportOptions(fps=5.0)).warnings == []


# ---- ids that sanitise to one key, and features that are not numbers ----

def test_ids_that_sanitise_to_one_key_all_import_under_their_own_keys_and_export_back_exactly(tmp_path):
    rng = np.random.default_rng(2)
    data = {name: rng.standard_normal((5 + i, 16)).astype(np.float32)
            for i, name in enumerate(["a.b.c", "a_b_c", "a b c", "movie.1"])}
    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as h5:
        for name, array in data.items():
            h5.create_dataset(name, data=array)
    assert main(["import-h5", str(path), "--out", str(tmp_path / "out"), "--fps", "5"]) == 0

    def digest(name):  # of the id alone: the same id gets the same key in every file where it clashes
        return hashlib.sha1(name.encode()).hexdigest()[:8]

    samples = read_samples(tmp_path / "out")
    # a_b_c is a key already and keeps it; movie.1 clashes with nothing and keeps its readable key
    assert {key: s["meta.json"]["original_name"] for key, s in samples.items()} == {
        "a_b_c": "a_b_c", f"a_b_c-{digest('a.b.c')}": "a.b.c", f"a_b_c-{digest('a b c')}": "a b c", "movie_1": "movie.1"}
    assert (import_h5(path, tmp_path / "out", ImportOptions(fps=5.0)).skipped_done) == 4  # resumes: the keys are the same again
    assert main(["export-h5", str(tmp_path / "out"), "--out", str(tmp_path / "back.h5")]) == 0
    with h5py.File(tmp_path / "back.h5", "r") as h5:
        assert sorted(h5) == sorted(data)
        for name, array in data.items():
            assert np.array_equal(h5[name][()], array)


def test_a_dataset_holding_nan_or_inf_is_a_failure_of_its_id_and_the_rest_is_imported(tmp_path, capsys):
    rng = np.random.default_rng(3)
    ok = rng.standard_normal((50, 16)).astype(np.float32)
    one_inf, loud = ok.copy(), ok.copy()
    one_inf[7, 3] = np.inf
    loud[:2] = 1e6  # finite in the file, beyond float16's 65504
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as h5:
        for name, array in {"ok": ok, "all_nan": np.full((50, 16), np.nan, np.float32), "one_inf": one_inf, "loud": loud}.items():
            h5.create_dataset(name, data=array)
    assert main(["import-h5", str(path), "--out", str(tmp_path / "out"), "--fps", "5", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "imported 1 of 4 datasets (0 already done, 3 failed)" in out
    assert "failed: all_nan: NaN or inf in the features (800 of 800 values, in 50 of 50 rows)" in out
    assert "failed: one_inf: NaN or inf in the features (1 of 800 values, in 1 of 50 rows)" in out
    assert "failed: loud: NaN or inf in the features (32 of 800 values, in 2 of 50 rows): the file's float32 values " \
           "overflow float16; import with a wider --dtype" in out
    assert list(read_samples(tmp_path / "out")) == ["ok"]
    records = {r["original_name"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert {name: r["status"] for name, r in records.items()} == {"ok": "ok", "all_nan": "error", "one_inf": "error", "loud": "error"}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["failed"] == 3

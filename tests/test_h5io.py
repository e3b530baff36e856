"""MAD-style HDF5 feature files <-> lamflow shards (import-h5 / export-h5), on real h5py files and tars."""
import json

import h5py
import numpy as np
import pytest
import webdataset as wds

from lamflow.cli import main
from lamflow.pipelines.h5io import export_h5, import_h5
from lamflow.pipelines.manifest import SettingsMismatchError


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
    summary = import_h5(path, tmp_path / "out", stream="video", fps=5.0, shard_samples=2)
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
    import_h5(path, tmp_path / "out", stream="audio", fps=10.0, dtype="float32")
    sample = read_samples(tmp_path / "out")["tt0001_v2"]
    assert sample["audio.npy"].dtype == np.float32 and np.array_equal(sample["audio.npy"], data["tt0001.v2"].astype(np.float32))
    assert sample["video.npy"].shape == (0, 0)
    export_h5(tmp_path / "out", tmp_path / "audio.h5", stream="audio")
    with h5py.File(tmp_path / "audio.h5", "r") as h5:
        assert h5["tt0001.v2"].shape == (31, 16)


def test_reimport_resumes_and_other_settings_are_refused(mad_file, tmp_path):
    path, _ = mad_file
    import_h5(path, tmp_path / "out", fps=5.0)
    again = import_h5(path, tmp_path / "out", fps=5.0)
    assert (again.imported, again.skipped_done, again.shards_written) == (0, 3, [])
    with pytest.raises(SettingsMismatchError, match=r"fps: 5\.0 -> 2\.0"):
        import_h5(path, tmp_path / "out", fps=2.0)


def test_datasets_that_are_not_t_by_d_features_are_named_in_the_error(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("vid/labels", data=np.arange(5))
    with pytest.raises(ValueError, match=r"dataset 'vid/labels' has shape \(5,\)"):
        import_h5(path, tmp_path / "out", fps=1.0)
    assert main(["import-h5", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o"), "--fps", "1"]) == 2

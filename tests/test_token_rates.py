"""Train and val shards must share their token rates (fps, audio hop): read from each set's records, refused
in one line naming both sets and both values."""
from __future__ import annotations

import pytest
from contract_shards import Video, contract_sample, write_extraction_dir

from lamflow.datasets.classification import ClassificationTask
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.token_rates import TokenRates, check_same_rates, meta_rates, shard_rates
from lamflow.errors import ConfigError


def shard_set(root, **recorded):
    """One sample whose meta.json records ``recorded`` (e.g. settings={...} as lamflow extract writes it)."""
    video = Video("v0")
    meta = {**contract_sample(video)["meta.json"], **recorded}
    return write_extraction_dir(root, [[Video("v0", extra={"meta.json": meta})]])


def extracted(root, fps, audio_hop):
    return shard_set(root, settings={"fps": fps, "audio_hop": audio_hop, "sample_rate": 16000})


def loader(shards, streams=("video", "audio")):
    return StreamingLoader(str(shards), ClassificationTask({"v0": "cat"}), LoaderConfig(streams=streams), mode="eval")


def test_the_rates_come_from_extraction_settings_or_the_imported_streams_rows_per_second():
    assert meta_rates({"settings": {"fps": 0.5, "audio_hop": 0.02}}) == TokenRates(0.5, 0.02)
    imported_video = {"provenance": {"video": {"fps": 5}, "audio": {"missing": "not in frames.h5"}}}
    assert meta_rates(imported_video) == TokenRates(fps=5.0)
    assert meta_rates({"provenance": {"audio": {"fps": 50}, "video": {"missing": "x"}}}) == TokenRates(audio_hop=0.02)
    assert meta_rates({"settings": {"clip_model": "ViT-B-32"}, "provenance": {"image": {}}}) == TokenRates()  # images


def test_train_and_val_shards_at_different_rates_are_one_clear_error(tmp_path):
    train = loader(extracted(tmp_path / "train", fps=2.0, audio_hop=0.1))
    assert shard_rates(train.shards) == TokenRates(2.0, 0.1)
    check_same_rates(train, loader(extracted(tmp_path / "same", fps=2.0, audio_hop=0.1)))

    val = loader(extracted(tmp_path / "val", fps=1.0, audio_hop=0.02))
    with pytest.raises(ConfigError) as error:
        check_same_rates(train, val)
    message = str(error.value)
    assert "\n" not in message
    assert f"train shards {str(tmp_path / 'train')!r} and the val shards {str(tmp_path / 'val')!r}" in message
    assert "fps 2 vs 1 (video tokens per second); audio hop 0.1 s vs 0.02 s" in message

    # Only the streams both loaders read are compared.
    with pytest.raises(ConfigError, match=r"rates: fps 2 vs 1 \(video tokens per second\); a model"):
        check_same_rates(loader(tmp_path / "train", streams=("video",)), val)


def test_imported_sets_compare_by_their_rows_per_second_and_tar_patterns_by_their_first_sample(tmp_path):
    frames_5 = shard_set(tmp_path / "five", provenance={"video": {"fps": 5.0}, "audio": {"missing": "not in h5"}})
    frames_2 = shard_set(tmp_path / "two", provenance={"video": {"fps": 2.0}, "audio": {"missing": "not in h5"}})
    tars = sorted(str(path) for path in (frames_2 / "shards").glob("*.tar"))
    with pytest.raises(ConfigError, match=r"fps 5 vs 2 \(video tokens per second\)"):
        check_same_rates(loader(frames_5), StreamingLoader(tars, ClassificationTask({"v0": "cat"}),
                                                           LoaderConfig(streams=("video", "audio")), mode="eval"))


def test_a_set_that_records_no_rate_is_not_compared(tmp_path):
    unknown = loader(write_extraction_dir(tmp_path / "plain", [[Video("v0")]]))
    assert shard_rates(unknown.shards) == TokenRates()
    check_same_rates(loader(extracted(tmp_path / "train", fps=2.0, audio_hop=0.1)), unknown)

"""StreamingLoader over real WebDataset shards with real DataLoader worker processes.

Items are videos labelled for classification (one item per video), so sample ids are video keys.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from contract_shards import Video, damage_members, grid, write_extraction_dir

from lamflow.datasets.classification import ClassificationTask
from lamflow.datasets.loader import STATE_VERSION, LoaderConfig, LoaderStateError, StreamingLoader
from lamflow.errors import DataFileError, FieldError

STREAMS = ("video", "audio")


def make_dataset(tmp_path, shards):
    root = write_extraction_dir(tmp_path / "extraction", shards)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({video.name: f"class{i % 3}" for shard in shards for i, video in enumerate(shard)}))
    return root, ClassificationTask(labels)


def loader(root, task, rank=0, world_size=1, mode="train", seed=0, **config):
    config = {"streams": STREAMS, "batch_size": 3, "num_workers": 2, "shuffle_buffer": 8, "bucket_buffer": 6, **config}
    return StreamingLoader(str(root), task, LoaderConfig(**config), seed=seed, rank=rank, world_size=world_size, mode=mode)


def position(state) -> tuple[int, int, int]:
    return state["epoch"], state["batches_done"], state["seed"]


def ids_per_rank(root, task, world_size=2, **kwargs):
    result = []
    for rank in range(world_size):
        current = loader(root, task, rank, world_size, **kwargs)
        result.append([sample_id for batch in current for sample_id in batch["sample_ids"]])
    return result


def all_keys(shards):
    return sorted(video.key for shard in shards for video in shard)


def test_eval_mode_gives_every_item_to_exactly_one_rank_and_worker_even_with_unbalanced_shards(tmp_path):
    shards = [[Video(f"s{s}.{i}") for i in range(size)] for s, size in enumerate([1, 7, 3, 5, 2, 6, 4, 2])]
    root, task = make_dataset(tmp_path, shards)
    per_rank = ids_per_rank(root, task, mode="eval")
    assert sorted(per_rank[0] + per_rank[1]) == all_keys(shards)  # nothing lost, nothing twice
    assert per_rank[0] and per_rank[1]


def test_one_pass_train_epoch_gives_every_item_exactly_once_with_balanced_shards(tmp_path):
    shards = grid(8, 4)
    root, task = make_dataset(tmp_path, shards)
    per_rank = ids_per_rank(root, task, mode="train")
    assert sorted(per_rank[0] + per_rank[1]) == all_keys(shards)
    assert len(per_rank[0]) == len(per_rank[1]) == 16


def test_train_mode_gives_every_rank_the_same_number_of_batches_with_unbalanced_shards(tmp_path):
    shards = [[Video(f"s{s}.{i}") for i in range(size)] for s, size in enumerate([1, 9, 2, 5, 3])]
    root, task = make_dataset(tmp_path, shards)
    for samples_per_epoch, items_per_rank in ((None, 10), (13, 7)):
        loaders = [loader(root, task, rank, 2, samples_per_epoch=samples_per_epoch) for rank in range(2)]
        batches = [list(current) for current in loaders]
        assert len(batches[0]) == len(batches[1]) == len(loaders[0]) == len(loaders[1])
        for rank_batches in batches:
            assert sum(len(batch["sample_ids"]) for batch in rank_batches) == items_per_rank


def epoch_order(current, epoch):
    current.set_epoch(epoch)
    return [sample_id for batch in current for sample_id in batch["sample_ids"]]


def test_train_epochs_are_reshuffled_and_reproducible_with_the_same_seed(tmp_path):
    shards = grid(6, 5)
    root, task = make_dataset(tmp_path, shards)
    first = loader(root, task, num_workers=0)
    epoch0, epoch1 = epoch_order(first, 0), epoch_order(first, 1)
    assert sorted(epoch0) == sorted(epoch1) == all_keys(shards)
    assert epoch0 != epoch1
    again = loader(root, task, num_workers=0)
    assert (epoch_order(again, 0), epoch_order(again, 1)) == (epoch0, epoch1)
    assert epoch_order(loader(root, task, num_workers=0, seed=7), 0) != epoch0


def test_finishing_a_train_epoch_moves_the_loader_to_the_next_epoch(tmp_path):
    root, task = make_dataset(tmp_path, grid(2, 3))
    current = loader(root, task, num_workers=0)
    first = [batch["sample_ids"] for batch in current]
    assert position(current.state_dict()) == (1, 0, 0)
    assert [batch["sample_ids"] for batch in current] != first


def assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a["sample_ids"] == b["sample_ids"]
        assert torch.equal(a["padding_mask"], b["padding_mask"])
        for name in STREAMS:
            assert torch.equal(a["streams"][name], b["streams"][name])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_batches_the_uninterrupted_run_yields_next(tmp_path, num_workers):
    shards = [[Video(f"s{s}.{i}", duration=1.0 + i) for i in range(size)] for s, size in enumerate([4, 6, 3, 5])]
    root, task = make_dataset(tmp_path, shards)
    uninterrupted = loader(root, task, num_workers=num_workers)
    uninterrupted.set_epoch(1)
    expected = list(uninterrupted)

    interrupted = loader(root, task, num_workers=num_workers)
    interrupted.set_epoch(1)
    stream = iter(interrupted)
    taken = [next(stream) for _ in range(3)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain python types: survives a checkpoint
    assert position(state) == (1, 3, 0)

    resumed = loader(root, task, num_workers=num_workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a trainer re-selecting the saved epoch keeps the position
    assert_same_batches(taken + list(resumed), expected)


class CollatingProcessTask(ClassificationTask):
    """Classification whose batches also name the process that collated them (a DataLoader worker)."""

    def collate(self, items: list[dict]) -> dict:
        return {**super().collate(items), "collated_by": os.getpid()}


def test_worker_processes_persist_across_epochs(tmp_path):
    root, _ = make_dataset(tmp_path, grid(6, 4))
    current = loader(root, CollatingProcessTask(tmp_path / "labels.json"), num_workers=2)
    epoch0 = {batch["collated_by"] for batch in current}
    epoch1 = {batch["collated_by"] for batch in current}
    assert current.state_dict()["epoch"] == 2
    assert len(epoch0) == 2 and os.getpid() not in epoch0
    assert epoch1 == epoch0  # the same two worker processes served both epochs


def test_running_workers_follow_an_abandoned_epoch_load_state_dict_and_set_epoch(tmp_path):
    root, task = make_dataset(tmp_path, [[Video(f"s{s}.{i}", duration=1.0 + i) for i in range(6)] for s in range(5)])

    def fresh(epoch, seed=0):
        reference = loader(root, task, seed=seed)
        reference.set_epoch(epoch)
        return list(reference)

    current = loader(root, task)
    assert_same_batches(list(current), fresh(0))  # starts the workers
    abandoned = iter(current)
    taken = [next(abandoned), next(abandoned)]  # workers keep prefetching batches of epoch 1 for it
    assert_same_batches(taken + list(current), fresh(1))
    current.load_state_dict({**current.state_dict(), "epoch": 0, "batches_done": 3, "seed": 5})  # the workers hold seed 0
    assert_same_batches(list(current), fresh(0, seed=5)[3:])
    current.set_epoch(4)
    assert_same_batches(list(current), fresh(4, seed=5))


def test_a_state_saved_with_the_last_batch_of_an_epoch_resumes_at_the_next_epoch(tmp_path):
    root, task = make_dataset(tmp_path, grid(4, 3))
    uninterrupted = loader(root, task)
    epoch0 = list(uninterrupted)
    epoch1 = list(uninterrupted)
    interrupted = loader(root, task)
    stream = iter(interrupted)
    for _ in epoch0:
        next(stream)
    state = interrupted.state_dict()
    assert position(state) == (0, len(epoch0), 0)
    resumed = loader(root, task)
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed), epoch1)


def test_load_state_dict_rejects_a_position_beyond_the_epoch(tmp_path):
    root, task = make_dataset(tmp_path, grid(2, 3))
    current = loader(root, task)
    with pytest.raises(LoaderStateError, match="batches_done=99 exceeds"):
        current.load_state_dict({**current.state_dict(), "batches_done": 99})


def test_the_state_records_its_version_and_plan_and_an_old_version_is_refused(tmp_path):
    root, task = make_dataset(tmp_path, grid(2, 3))
    current = loader(root, task, world_size=2)
    assert current.state_dict() == {"version": STATE_VERSION, "epoch": 0, "batches_done": 0, "seed": 0,
                                    "world_size": 2, "num_workers": 2, "items": 6}
    with pytest.raises(LoaderStateError, match="version"):
        current.load_state_dict({"epoch": 0, "batches_done": 1, "seed": 0})  # written before states had a version


def test_a_resume_under_another_world_size_is_replanned_at_the_same_fraction_of_the_epoch(tmp_path, caplog):
    root, task = make_dataset(tmp_path, grid(4, 6))
    two_ranks = loader(root, task, rank=0, world_size=2, num_workers=0, batch_size=2)
    stream = iter(two_ranks)
    for _ in range(len(two_ranks) // 2):  # half of rank 0's epoch
        next(stream)
    one_rank = loader(root, task, num_workers=0, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="lamflow.datasets.loader"):
        one_rank.load_state_dict(two_ranks.state_dict())
    assert "re-planned" in caplog.text
    assert position(one_rank.state_dict()) == (0, len(one_rank) // 2, 0)  # half of the one-rank epoch
    assert len(list(one_rank)) == len(one_rank) - len(one_rank) // 2


def pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def damaged_dataset(tmp_path):
    """Shard 0: garbage .npy bytes, a pickled object array, a shape mismatch; shard 1: truncated tar."""
    shards = grid(3, 4)
    shards[0][3].extra = {"video_ts.npy": np.zeros(3, np.float32)}
    root, task = make_dataset(tmp_path, shards)
    damage_members(root / "shards" / "shard-000000.tar", {"v0_1.video.npy": b"not an npy file",
                                                          "v0_2.audio.npy": pickled_npy()})
    tar = root / "shards" / "shard-000001.tar"
    with tarfile.open(tar) as archive:  # cut inside the 3rd sample's video.npy: 2 samples stay whole
        cut = next(m.offset_data + 10 for m in archive if m.name == "v1_2.video.npy")
    tar.write_bytes(tar.read_bytes()[:cut])
    return root, task


def test_corrupt_samples_and_a_truncated_tar_are_skipped_counted_and_logged(tmp_path, caplog):
    root, task = damaged_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lamflow.datasets.stream"):
        current = loader(root, task, mode="eval", num_workers=0)
        ids = [sample_id for batch in current for sample_id in batch["sample_ids"]]
    assert sorted(ids) == ["v0_0", "v1_0", "v1_1", "v2_0", "v2_1", "v2_2", "v2_3"]
    # 3 bad members in shard 0, the half-written sample where shard 1 was cut, the unreadable rest of it
    assert current.stats["skipped_corrupt"] == 4
    assert current.stats["read_errors"] >= 1  # how often webdataset's reader trips on the cut is its business
    assert current.stats["missing_samples"] == 1
    logged = caplog.text
    assert "v0_1" in logged and "video.npy: not a valid .npy array" in logged
    assert "v0_2" in logged and "allow_pickle=False" in logged
    assert "v0_3" in logged and "video_ts.npy shape (3,)" in logged
    assert "shard-000001.tar: read 3 of 4 samples" in logged
    assert len(current.stats["skip_reasons"]) == 5 + current.stats["read_errors"]


def test_damaged_shards_never_hang_workers_and_train_ranks_still_get_equal_batches(tmp_path):
    root, task = damaged_dataset(tmp_path)
    loaders = [loader(root, task, rank, 2, num_workers=2) for rank in range(2)]
    counts = [sum(1 for _ in current) for current in loaders]
    assert counts == [len(loaders[0]), len(loaders[1])] and counts[0] == counts[1]
    assert sum(current.stats["skipped_corrupt"] for current in loaders) >= 4  # counted inside worker processes
    evaluated = loader(root, task, mode="eval", num_workers=2)
    assert sum(len(batch["sample_ids"]) for batch in evaluated) == 7
    assert evaluated.stats["skipped_corrupt"] == 4 and evaluated.stats["read_errors"] >= 1


def test_batches_follow_the_batch_contract(tmp_path):
    root, task = make_dataset(tmp_path, [[Video("a.0", duration=2.0, audio=False), Video("b.0", duration=3.0)]])
    batch = next(iter(loader(root, task, mode="eval", batch_size=2, num_workers=0, bucket_by_length=False)))
    assert batch["keys"] == ["a_0", "b_0"] and batch["sample_ids"] == ["a_0", "b_0"]
    assert batch["streams"]["video"].shape == (2, 6, 8) and batch["streams"]["audio"].shape == (2, 30, 4)
    assert batch["segments"] == [("video", 0, 6), ("audio", 6, 36)]
    assert batch["padding_mask"][0, 6:].all()  # "a.0" has no audio track: an empty stream, all padding
    assert batch["labels"].dtype == torch.long and batch["duration"].tolist() == [2.0, 3.0]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(FieldError, match="LoaderConfig.batch_size"):
        LoaderConfig(batch_size=0)
    with pytest.raises(FieldError, match="LoaderConfig.bucket_buffer"):
        LoaderConfig(batch_size=16, bucket_buffer=8)
    with pytest.raises(FieldError, match="LoaderConfig.max_stream_tokens"):
        LoaderConfig(max_stream_tokens={"depth": 3})
    with pytest.raises(FieldError, match="LoaderConfig.required_streams"):
        LoaderConfig(streams=("text", "audio"))  # the default required stream, video, is not streamed
    root, task = make_dataset(tmp_path, grid(1, 2))
    with pytest.raises(ValueError, match="mode"):
        StreamingLoader(str(root), task, mode="test")


def test_items_per_rank_are_ceil_of_items_over_world_size_in_train(tmp_path):
    shards = grid(3, 5)
    root, task = make_dataset(tmp_path, shards)
    per_rank = ids_per_rank(root, task, world_size=4, num_workers=0)
    assert [len(ids) for ids in per_rank] == [math.ceil(15 / 4)] * 4
    assert set(Counter(sum(per_rank, [])).keys()) <= set(all_keys(shards))


def test_a_sample_with_another_feature_width_is_an_error_naming_it_before_anything_streams(tmp_path):
    shards = grid(2, 3)
    shards[1][2].extra = {"video.npy": np.zeros((8, 16), np.float16)}  # another model's 16-d features
    root, task = make_dataset(tmp_path, shards)
    with pytest.raises(DataFileError, match=r"stream 'video' has width 8 in 5 samples but 16 in 1 \(keys v1_2\)"):
        loader(root, task)


def test_without_recorded_widths_an_odd_sample_is_skipped_and_counted_as_it_streams(tmp_path):
    shards = grid(2, 3)
    shards[1][2].extra = {"video.npy": np.zeros((8, 16), np.float16)}
    root, task = make_dataset(tmp_path, shards)
    pattern = str(root / "shards" / "shard-{000000..000001}.tar")  # tar urls: no manifest, widths from the first sample
    current = StreamingLoader(pattern, task, LoaderConfig(streams=STREAMS, batch_size=2), mode="eval")
    ids = [sample_id for batch in current for sample_id in batch["sample_ids"]]
    assert "v1_2" not in ids and len(ids) == 5
    assert current.stats["skipped_width"] == 1 and "video.npy has width 16, the shard set's is 8" in current.stats["skip_reasons"][0]


def test_a_sample_with_an_empty_required_stream_is_skipped_and_counted(tmp_path):
    shards = grid(1, 3)
    shards[0][1].extra = {"video.npy": np.zeros((0, 8), np.float16), "video_ts.npy": np.zeros(0, np.float32)}  # audio-only input
    root, task = make_dataset(tmp_path, shards)
    current = loader(root, task, mode="eval", num_workers=0)
    ids = [sample_id for batch in current for sample_id in batch["sample_ids"]]
    assert ids == ["v0_0", "v0_2"] and current.stats["skipped_empty"] == 1
    assert "stream 'video' is empty" in current.stats["skip_reasons"][0]
    # Audio is not required by default: a video without sound still trains.
    assert len(list(loader(root, task, mode="eval", num_workers=0, required_streams=("audio",)))) >= 1


def test_a_stream_the_shards_do_not_hold_is_an_error_before_anything_streams(tmp_path):
    root, task = make_dataset(tmp_path, grid(1, 2))
    with pytest.raises(DataFileError, match=r"stream\(s\) \['depth'\] are not in the shards"):
        loader(root, task, streams=("video", "depth"))

"""Streaming stages and shard resolution, on real WebDataset tars in the shard contract."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from contract_shards import D_AUDIO, D_TEXT, Video, damage_members, grid, write_extraction_dir

from lamflow.datasets.shardlist import resolve_shards
from lamflow.errors import DataFileError
from lamflow.datasets.stream import (
    SkipCounter,
    assign_shards,
    count_shard_samples,
    decode_samples,
    shuffle_items,
    tar_samples,
)


def test_an_extraction_dir_resolves_to_its_shards_counts_and_keys(tmp_path):
    root = write_extraction_dir(tmp_path, grid(3, 2))
    shards = resolve_shards(str(root))
    assert [s.url for s in shards] == [str(root / "shards" / f"shard-{n:06d}.tar") for n in range(3)]
    assert [shards.keys(n) for n in range(3)] == [[f"v{n}_0", f"v{n}_1"] for n in range(3)]
    assert [shards.names(n) for n in range(3)] == [[f"v{n}.0", f"v{n}.1"] for n in range(3)]


def test_brace_patterns_and_lists_resolve_by_reading_tar_headers(tmp_path):
    root = write_extraction_dir(tmp_path, [[Video("a.1"), Video("b")], [Video("c")]])
    pattern = str(root / "shards" / "shard-{000000..000001}.tar")
    from_pattern = resolve_shards(pattern)
    assert [from_pattern.keys(n) for n in range(2)] == [["a_1", "b"], ["c"]]
    assert [from_pattern.names(n) for n in range(2)] == [["a_1", "b"], ["c"]]  # a tar records no names
    from_list = resolve_shards([s.url for s in from_pattern])
    assert list(from_list) == list(from_pattern) and [from_list.keys(n) for n in range(2)] == [["a_1", "b"], ["c"]]


def test_a_manifest_that_disagrees_with_sizes_json_falls_back_to_the_tar(tmp_path):
    root = write_extraction_dir(tmp_path, grid(2, 2))
    (root / "manifest.jsonl").write_text("")  # e.g. an interrupted run
    assert [s.num_samples for s in resolve_shards(str(root))] == [2, 2]


def test_bad_shard_specifications_are_clear_errors(tmp_path):
    with pytest.raises(DataFileError, match="no sizes.json"):
        resolve_shards(str(tmp_path))
    with pytest.raises(DataFileError, match="not found"):
        resolve_shards(str(tmp_path / "shard-{000000..000003}.tar"))
    root = write_extraction_dir(tmp_path / "x", grid(1, 1))
    (root / "sizes.json").write_text(json.dumps({"shard-000009.tar": 1}))
    with pytest.raises(DataFileError, match="shard-000009.tar"):
        resolve_shards(str(root))


def test_decoding_returns_the_contract_arrays_and_the_original_name(tmp_path):
    video = Video("j7rJstUseKg_360.0_510.0", duration=3.0, audio=False, texts=[("7", "a dog", 2), ("9", "a cat runs", 4)])
    root = write_extraction_dir(tmp_path, [[video]])
    counter = SkipCounter()
    [sample] = decode_samples(tar_samples([str(root / "shards" / "shard-000000.tar")], counter), ("video", "audio"), counter)
    assert sample["key"] == "j7rJstUseKg_360_0_510_0" and sample["name"] == "j7rJstUseKg_360.0_510.0"
    assert sample["streams"]["video"].shape == (6, 8) and sample["streams"]["video"].dtype == np.float16
    assert sample["streams"]["audio"].shape == (0, D_AUDIO)  # no audio track: empty, never missing
    assert sample["timestamps"]["video"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert sample["text_tokens"].shape == (2, 4, D_TEXT)
    assert (sample["text_ids"], sample["text_lengths"]) == (["7", "9"], [2, 4])
    assert sample["duration"] == 3.0 and counter.counts["samples"] == 1


def test_non_contract_members_are_never_decoded(tmp_path):
    # A pickle member sits next to the contract fields; only .npy (no pickle) and meta.json are read.
    root = write_extraction_dir(tmp_path, [[Video("a")]])
    damage_members(root / "shards" / "shard-000000.tar", {"a.evil.pyd": pickle.dumps({"x": 1})})
    counter = SkipCounter()
    [sample] = decode_samples(tar_samples([str(root / "shards" / "shard-000000.tar")], counter), ("video",), counter)
    assert "evil.pyd" not in sample and set(sample["streams"]) == {"video"}


def test_an_unreadable_shard_is_counted_and_the_stream_goes_on(tmp_path):
    root = write_extraction_dir(tmp_path, grid(1, 2))
    counter = SkipCounter()
    urls = [str(tmp_path / "gone.tar"), str(root / "shards" / "shard-000000.tar")]
    expected = {urls[0]: 3, urls[1]: 2}
    keys = [raw["__key__"] for raw in count_shard_samples(tar_samples(urls, counter), expected, counter)]
    assert keys == ["v0_0", "v0_1"]
    assert counter.counts["read_errors"] == 1 and counter.counts["missing_samples"] == 3
    assert counter.take()["reasons"][0].startswith("FileNotFoundError")
    assert not counter.counts  # take() hands the increments over and resets


def test_each_shard_gets_exactly_one_slot_and_slots_are_balanced():
    weights = [5, 1, 7, 3, 3, 2, 8, 1]
    slots = assign_shards(weights, 4)
    assert sorted(i for slot in slots for i in slot) == list(range(len(weights)))
    loads = [sum(weights[i] for i in slot) for slot in slots]
    assert max(loads) - min(loads) <= max(weights)
    assert assign_shards([1, 1], 4) == [[0], [1], [], []]


def test_buffer_shuffle_is_a_seeded_permutation():
    items = list(range(50))
    once = list(shuffle_items(items, 10, np.random.default_rng(3)))
    assert sorted(once) == items and once != items
    assert list(shuffle_items(items, 10, np.random.default_rng(3))) == once
    assert list(shuffle_items(items, 10, np.random.default_rng(4))) != once

"""The shard contract: one definition of file names, the key rule, member encoding and the annotation join."""
import re

import numpy as np
import pytest
import webdataset as wds
from contract_shards import Video, write_extraction_dir

from lamflow.contract import (
    MAX_KEY_LENGTH,
    AmbiguousJoin,
    ContractError,
    decode_meta,
    encode_sample,
    join_names,
    parse_manifest,
    read_samples,
    safe_key,
    sample_dims,
    shard_index,
    split_member,
)

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_safe_key_keeps_only_safe_characters_and_folds_accents():
    assert safe_key("my clip.v1 (final)") == "my_clip_v1__final_"
    assert safe_key("café") == "cafe"
    assert safe_key("NUsG9BgSes0_210.0_360.0") == "NUsG9BgSes0_210_0_360_0"
    assert safe_key("part1/clip") == "part1_clip"
    assert SAFE.match(safe_key("日本語/動画"))
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_key(long_a)) == MAX_KEY_LENGTH and safe_key(long_a) != safe_key(long_b)


def test_member_names_split_exactly_as_webdataset_groups_them():
    assert split_member("NUsG9BgSes0_210_0_360_0.video_ts.npy") == ("NUsG9BgSes0_210_0_360_0", "video_ts.npy")
    assert split_member("a.meta.json") == ("a", "meta.json")
    assert shard_index("shard-000012.tar") == 12 and shard_index(".shard-000012.tar.tmp") is None


def test_encoding_refuses_what_would_break_a_reader():
    with pytest.raises(ContractError, match="key must be"):
        encode_sample({"__key__": "a.b", "meta.json": {}})
    with pytest.raises(ContractError, match="dtype object"):
        encode_sample({"__key__": "a", "x.npy": np.array([{}], dtype=object)})
    with pytest.raises(ContractError, match="neither .npy nor .json"):
        encode_sample({"__key__": "a", "x.pyd": b"pickle"})
    with pytest.raises(ValueError):  # NaN is not JSON
        encode_sample({"__key__": "a", "meta.json": {"duration": float("nan")}})


def test_meta_json_is_a_json_object_or_an_error_naming_the_member():
    assert decode_meta(b'{"duration": 2.0}', "a.meta.json") == {"duration": 2.0}
    with pytest.raises(ContractError, match=r"a\.meta\.json: expected a JSON object, got list"):
        decode_meta(b"[1, 2]", "a.meta.json")
    with pytest.raises(ContractError, match=r"a\.meta\.json: not valid JSON"):
        decode_meta(b"{cut", "a.meta.json")


def test_written_shards_read_back_the_same_with_lamflow_and_with_plain_webdataset(tmp_path):
    root = write_extraction_dir(tmp_path, [[Video("clip.a", texts=[("1", "a dog", 2)]), Video("b", audio=False)]])
    shard = root / "shards" / "shard-000000.tar"
    ours = list(read_samples(shard))
    theirs = list(wds.WebDataset(str(shard), shardshuffle=False).decode())
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs] == ["clip_a", "b"]
    for mine, plain in zip(ours, theirs):
        assert set(mine) - {"__key__", "__url__"} == set(plain) - {"__key__", "__url__", "__local_path__"}
        assert np.array_equal(mine["video.npy"], plain["video.npy"]) and mine["meta.json"] == plain["meta.json"]
    assert sample_dims(ours[0]) == {"video": 8, "audio": 4, "text": 6}
    assert list(read_samples(shard, {"meta.json"}))[1].keys() == {"__key__", "__url__", "meta.json"}


def test_the_manifest_records_widths_and_a_cut_last_line_is_reported_not_fatal(tmp_path):
    root = write_extraction_dir(tmp_path, [[Video("a"), Video("b")]])
    manifest = root / "manifest.jsonl"
    records, torn = parse_manifest(manifest)
    assert [r.key for r in records] == ["a", "b"] and not torn
    assert records[0].dims == {"video": 8, "audio": 4}
    manifest.write_text(manifest.read_text() + '{"key": "c", "sou')
    records, torn = parse_manifest(manifest)
    assert len(records) == 2 and torn


SAMPLES = [("NUsG9BgSes0_210_0_360_0", "NUsG9BgSes0_210.0_360.0"), ("part1_clip", "part1/clip"),
           ("part2_clip", "part2/clip"), ("solo", "deep/solo"), ("legacy_key", "legacy_key")]


def test_annotations_join_by_recorded_name_then_key_then_last_path_component():
    joined = join_names(["NUsG9BgSes0_210.0_360.0", "part1/clip", "solo", "legacy.key", "unknown"], SAMPLES)
    assert joined == {"NUsG9BgSes0_210_0_360_0": "NUsG9BgSes0_210.0_360.0", "part1_clip": "part1/clip",
                      "solo": "solo", "legacy_key": "legacy.key"}


def test_a_name_that_names_two_samples_is_an_error_listing_both():
    with pytest.raises(AmbiguousJoin, match=r"annotation name 'clip' names 2 samples \(part1_clip, part2_clip\)"):
        join_names(["clip"], SAMPLES)


def test_a_sample_named_twice_is_an_error():
    with pytest.raises(AmbiguousJoin, match="sample 'part1_clip' is named by two labels names, 'part1/clip' and 'part1_clip'"):
        join_names(["part1/clip", "part1_clip"], SAMPLES, what="labels")


# Keys are made from the relative path WITH the extension, recorded names without it: two files of one name.
TWO_FILES = [("clip_mkv", "clip"), ("clip_mp4", "clip"), ("part1_clip_mkv", "part1/clip"),
             ("part1_clip_mp4", "part1/clip"), ("solo_mp4", "deep/solo"), ("other_mp4", "other")]


def test_a_name_two_files_share_is_an_error_naming_both_only_for_the_annotation_that_uses_it():
    with pytest.raises(AmbiguousJoin, match=r"annotation name 'clip' names 2 samples \(clip_mkv, clip_mp4\); .*'clip\.mp4'"):
        join_names(["other", "clip"], TWO_FILES)
    with pytest.raises(AmbiguousJoin, match=r"'part1/clip' names 2 samples \(part1_clip_mkv, part1_clip_mp4\)"):
        join_names(["part1/clip"], TWO_FILES)
    assert join_names(["other", "solo"], TWO_FILES) == {"other_mp4": "other", "solo_mp4": "solo"}


def test_a_file_name_with_its_extension_names_that_one_file():
    joined = join_names(["clip.mp4", "part1/clip.mkv", "solo.mp4", "solo.mkv", "other.mp4"], TWO_FILES)
    assert joined == {"clip_mp4": "clip.mp4", "part1_clip_mkv": "part1/clip.mkv", "solo_mp4": "solo.mp4",
                      "other_mp4": "other.mp4"}  # solo.mkv: no such file
    with pytest.raises(AmbiguousJoin, match=r"'clip\.mkv' names 2 samples \(part1_clip_mkv, part2_clip_mkv\)"):
        join_names(["clip.mkv"], [("part1_clip_mkv", "part1/clip"), ("part2_clip_mkv", "part2/clip")])
    long = "x" * 200  # its key is cut and ends with a digest: the full path with its extension still names it
    assert join_names([f"{long}.mp4"], [(safe_key(f"{long}.mp4"), long)]) == {safe_key(f"{long}.mp4"): f"{long}.mp4"}


def test_shards_without_recorded_names_join_on_the_name_without_its_media_extension():
    """Tar urls give keys only: a key made from clip.mp4 (clip_mp4) is still named by 'clip', and 'clip' for
    clip_mkv and clip_mp4 is ambiguous; a key that merely starts like the name (clip_2) is not named by it."""
    from lamflow.contract import AmbiguousJoin, join_names

    samples = [("clip_mp4", "clip_mp4"), ("NUsG9BgSes0_210_0_360_0_mp4", "NUsG9BgSes0_210_0_360_0_mp4"), ("other_2", "other_2")]
    assert join_names(["clip", "NUsG9BgSes0_210.0_360.0", "other"], samples) == {
        "clip_mp4": "clip", "NUsG9BgSes0_210_0_360_0_mp4": "NUsG9BgSes0_210.0_360.0"}
    with pytest.raises(AmbiguousJoin, match=r"'clip' names 2 samples \(clip_mkv, clip_mp4\)"):
        join_names(["clip"], [("clip_mp4", "clip_mp4"), ("clip_mkv", "clip_mkv")])

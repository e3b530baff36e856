"""The sample index (lamflow.sample_index) and the shard sets read through it (lamflow.datasets.shardlist).

The index must hold exactly what the loader used to build per sample from manifest.jsonl + sizes.json (the
latest record of each input, per shard, in manifest order; a shard the manifest disagrees with from its tar),
join annotations exactly as lamflow.contract.join_names does, be rebuilt when its sources change and only then,
be built once by concurrent first opens, and read a partitioned tree as one dataset.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from contract_shards import Video, grid, write_extraction_dir

from lamflow.contract import (
    MANIFEST,
    PARTITIONS_DIR,
    SAMPLE_INDEX,
    SHARD_PATTERN,
    SHARDS_DIR,
    SIZES,
    AmbiguousJoin,
    Record,
    join_names,
    latest_records,
    parse_manifest,
    partition_dir_name,
    read_samples,
)
from lamflow.datasets.classification import ClassificationTask
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.shardlist import resolve_shards
from lamflow import sample_index
from lamflow.errors import DataFileError
from lamflow.sample_index import HEADER, build_index, open_index


def manifest_line(**fields) -> str:
    """A manifest line as the extractor writes it."""
    return json.dumps(Record(**{"status": "ok", **fields}).to_json(), sort_keys=True) + "\n"


def placeholder_dir(root: Path, shards: list[list[tuple[str, str]]]) -> Path:
    """An output directory of (key, name) samples whose shard files are empty: an index reads the manifest and
    sizes.json, and a tar only where they disagree."""
    (root / SHARDS_DIR).mkdir(parents=True)
    sizes, lines = {}, []
    for number, samples in enumerate(shards):
        shard = SHARD_PATTERN % number
        (root / SHARDS_DIR / shard).touch()
        sizes[shard] = len(samples)
        lines += [manifest_line(key=key, source=f"/in/{key}", original_name=name, shard=shard, dims={"video": 8})
                  for key, name in samples]
    (root / MANIFEST).write_text("".join(lines))
    (root / SIZES).write_text(json.dumps(sizes))
    return root


def per_sample_view(root: Path) -> list[tuple[str, list[tuple[str, str, dict]]]]:
    """(shard url, [(key, name, dims)]) as readers took them one Python object per sample, before the index: the
    latest record of each input (lamflow.contract), per shard of sizes.json; from the tar where they disagree."""
    sizes = json.loads((root / SIZES).read_text())
    by_shard: dict[str, list[Record]] = {}
    for record in latest_records(parse_manifest(root / MANIFEST)[0]).values():
        if record.status == "ok" and record.shard:
            by_shard.setdefault(Path(record.shard).name, []).append(record)
    view = []
    for name in sorted(sizes):
        url = str(root / SHARDS_DIR / name)
        recorded = by_shard.get(name, [])
        if len(recorded) == sizes[name]:
            view.append((url, [(r.key, r.name, r.dims if all(s.dims for s in recorded) else {}) for r in recorded]))
        else:
            view.append((url, [(s["__key__"], s["__key__"], {}) for s in read_samples(url, {"meta.json"})]))
    return view


def latest_ok_per_shard(root: Path) -> dict[str, int]:
    """Samples per shard file name that the latest records give (what sizes.json says after a finished run)."""
    counts = {path.name: 0 for path in (root / SHARDS_DIR).iterdir()}
    for record in latest_records(parse_manifest(root / MANIFEST)[0]).values():
        if record.status == "ok" and record.shard and Path(record.shard).name in counts:
            counts[Path(record.shard).name] += 1
    return counts


def index_view(root: Path) -> list[tuple[str, list[tuple[str, str, dict]]]]:
    """The same, read from the index (a shard without every sample's widths records none)."""
    shards, index = resolve_shards(str(root)), open_index(root)
    dims = np.asarray(index.arrays["dims"])[np.asarray(index.arrays["rows"])]
    view = []
    for number, shard in enumerate(shards):
        positions = index.shard_positions(number)
        entries = [index.dims[d] for d in dims[positions]]
        whole = all(entries)
        view.append((shard.url, [(key, name, entry if whole else {})
                                 for key, name, entry in zip(shards.keys(number), shards.names(number), entries)]))
    return view


def test_an_output_dir_of_todays_extractor_gets_its_index_on_first_open(tmp_path):
    root = write_extraction_dir(tmp_path / "out", grid(3, 2))
    (root / SAMPLE_INDEX / HEADER).unlink()  # an output directory written before the index existed
    shards = resolve_shards(str(root))
    assert (root / SAMPLE_INDEX / HEADER).is_file()
    assert [shards.keys(n) for n in range(3)] == [[f"v{n}_0", f"v{n}_1"] for n in range(3)]
    assert index_view(root) == per_sample_view(root)


@pytest.mark.parametrize("readers", [1, 3])
def test_the_index_holds_what_the_per_sample_reading_of_the_manifest_gave(tmp_path, readers):
    root = write_extraction_dir(tmp_path / "out", [[Video(f"s{s}.{i}") for i in range(4)] for s in range(5)])
    lines = (root / MANIFEST).read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    odd_lines = [  # lines the extractor writes rarely, or an older one wrote, among the canonical ones
        manifest_line(key="x1", source="/in/ünï.mp4", original_name="ünï", shard="shard-000001.tar", dims={"video": 8}),
        manifest_line(key="x2", source='/in/a"b.mp4', original_name='a"b', shard="shard-000001.tar", dims={"video": 8}),
        manifest_line(key="x3", source="/in/x3.mp4", original_name=None, shard="shard-000002.tar", dims={"video": 8}),
        manifest_line(key="x4", source="/in/x4.mp4", original_name="", shard="shard-000002.tar", dims={}),
        manifest_line(key="x5", source="C:\\in\\x5.mp4", original_name="part\\x5", shard="shard-000003.tar",
                      dims={"audio": 4, "video": 8}),
        manifest_line(key="x6", source="/in/x6.mp4", original_name="a/b/x6", shard="out/shard-000003.tar", dims={"video": 8}),
        manifest_line(key="x7", source="/in/x7.mp4", original_name="x7", shard="shard-000099.tar", dims={"video": 8}),
        json.dumps({"status": "ok", "shard": "shard-000004.tar", "source": "/in/x8.mp4", "key": "x8"}) + "\n",
        manifest_line(key="e1", source="/in/e1.mp4", status="error", error='cannot "decode"'),
        manifest_line(key="e2", source="/in/e2.mp4", status="error", error="no video stream"),
        "\n",
        # retries: a failure then a success, and a success then a failure (the latest line of a source wins)
        manifest_line(key="r1", source="/in/r1.mp4", status="error", error="timeout"),
        manifest_line(key="r1", source="/in/r1.mp4", original_name="r1", shard="shard-000004.tar", dims={"video": 8}),
        manifest_line(key=first["key"], source=first["source"], status="error", error="re-extracted, failed"),
    ]
    rng = np.random.default_rng(0)
    for line in odd_lines[:-3]:
        lines.insert(int(rng.integers(len(lines))), line)
    (root / MANIFEST).write_text("".join(lines + odd_lines[-3:]) + '{"key": "torn by a kill')
    sizes = latest_ok_per_shard(root)
    sizes["shard-000000.tar"] += 1  # disagrees with the manifest: its tar is read
    (root / SIZES).write_text(json.dumps(sizes))

    build_index(root, readers=readers)
    assert index_view(root) == per_sample_view(root)


def test_an_index_is_rebuilt_when_its_sources_change_and_only_then(tmp_path):
    root = write_extraction_dir(tmp_path / "out", grid(3, 2))
    built = (root / SAMPLE_INDEX / HEADER).stat().st_ino
    assert [s.num_samples for s in resolve_shards(str(root))] == [2, 2, 2]
    assert (root / SAMPLE_INDEX / HEADER).stat().st_ino == built  # mapped, not rebuilt

    manifest = root / MANIFEST
    manifest.write_text(manifest.read_text().replace('"original_name": "v1.1"', '"original_name": "renamed"'))
    assert resolve_shards(str(root)).names(1) == ["v1.0", "renamed"]
    sizes = json.loads((root / SIZES).read_text())
    del sizes["shard-000002.tar"]
    (root / SIZES).write_text(json.dumps(sizes))
    assert [s.num_samples for s in resolve_shards(str(root))] == [2, 2]


def test_a_damaged_index_is_one_error_naming_its_folder(tmp_path):
    root = write_extraction_dir(tmp_path / "out", grid(1, 2))
    (root / SAMPLE_INDEX / "rows.npy").write_bytes(b"not an array")
    with pytest.raises(DataFileError, match=f"{SAMPLE_INDEX}: the sample index is damaged"):
        resolve_shards(str(root))


@pytest.mark.parametrize("readers", [1, 2])
def test_a_manifest_line_that_is_not_a_record_is_an_error_naming_file_and_line(tmp_path, readers):
    root = write_extraction_dir(tmp_path / "out", grid(2, 3))
    lines = (root / MANIFEST).read_text().splitlines(keepends=True)
    lines[4] = '{"key": "v1_1", "status": "ok"\n'
    (root / MANIFEST).write_text("".join(lines))
    with pytest.raises(DataFileError, match=rf"{MANIFEST}:5: not a valid manifest record"):
        build_index(root, readers=readers)


def test_widths_that_are_not_numbers_are_an_error_naming_the_line(tmp_path):
    root = placeholder_dir(tmp_path / "out", [[("a", "a"), ("b", "b")]])
    (root / MANIFEST).write_text((root / MANIFEST).read_text().replace('{"video": 8}', '{"video": "wide"}', 1))
    with pytest.raises(DataFileError, match=rf"{MANIFEST}:1: dims .* is not \{{stream: width\}}"):
        resolve_shards(str(root))


def _open_in_a_rank(root: Path, start: multiprocessing.synchronize.Barrier, report: Path) -> None:
    start.wait()
    index = open_index(root)
    report.write_text(json.dumps({"inode": (root / SAMPLE_INDEX / HEADER).stat().st_ino, "samples": index.num_samples}))


def test_ranks_opening_a_new_output_dir_at_once_build_its_index_once_and_share_it(tmp_path, monkeypatch):
    root = placeholder_dir(tmp_path / "out", [[(f"k{s}_{i}", f"n{s}.{i}") for i in range(2000)] for s in range(10)])
    builds = tmp_path / "builds"
    build = sample_index._build

    def counted_build(*args, **kwargs):  # the real build, counted (the forked ranks inherit it)
        with open(builds, "a") as log:
            log.write("built\n")
        build(*args, **kwargs)

    monkeypatch.setattr(sample_index, "_build", counted_build)
    fork = multiprocessing.get_context("fork")
    start = fork.Barrier(4)
    reports = [tmp_path / f"rank{rank}.json" for rank in range(4)]
    ranks = [fork.Process(target=_open_in_a_rank, args=(root, start, report)) for report in reports]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert [rank.exitcode for rank in ranks] == [0] * 4
    assert builds.read_text() == "built\n"
    opened = [json.loads(report.read_text()) for report in reports]
    assert opened == [{"inode": opened[0]["inode"], "samples": 20000}] * 4  # every rank maps that one build


# ---- joining annotations through the index ---------------------------------------------------------------------
SAMPLES = [  # (key, recorded name) as extractions of several versions record them
    ("NUsG9BgSes0_210_0_360_0", "NUsG9BgSes0_210.0_360.0"),  # QVHighlights, key without extension
    ("part1_clip_mp4", "part1/clip"), ("part1_clip_mkv", "part1/clip"),  # one name, two files
    ("part2_talk_mp4", "part2/talk"), ("win_dir_show_mp4", "win\\dir\\show"),
    ("legacy_key", "legacy_key"), ("movie_mp4", "movie_mp4"),  # no recorded name: names are keys
    ("caf_mp4", "café"), ("solo_wav", "solo"),
]
ANNOTATED = ["NUsG9BgSes0_210.0_360.0", "NUsG9BgSes0_210_0_360_0", "part1/clip", "clip", "clip.mp4", "clip.mkv",
             "part1/clip.mp4", "talk", "talk.mp4", "part2/talk.mp4", "show", "show.mp4", "win\\dir\\show",
             "legacy.key", "legacy_key", "movie", "movie.mp4", "café", "cafe", "solo", "solo.wav", "unknown",
             "part1_clip_mp4", ""]


def joined_or_error(join, names):
    try:
        return join(names)
    except AmbiguousJoin as error:
        return str(error)


@pytest.mark.parametrize("names", [[name] for name in ANNOTATED] + [ANNOTATED[:3], ["talk", "part2/talk.mp4"]])
def test_joining_through_the_index_is_join_names(tmp_path, names):
    shards = resolve_shards(str(placeholder_dir(tmp_path / "out", [SAMPLES[:4], SAMPLES[4:]])))
    via_index = joined_or_error(lambda wanted: {key: name for _, key, name in shards.join(wanted, "ann")}, names)
    assert via_index == joined_or_error(lambda wanted: join_names(wanted, SAMPLES, "ann"), names)


def test_samples_found_by_a_crc_collision_are_left_to_join_names(tmp_path):
    seen: dict[int, str] = {}  # CRC-32 -> a name with it; random names share one after ~10^5 (birthday bound)
    names = (hashlib.sha1(str(i).encode()).hexdigest()[:12] for i in range(10**7))
    name = next(name for name in names if seen.setdefault(zlib.crc32(name.encode()), name) != name)
    twin = seen[zlib.crc32(name.encode())]
    shards = resolve_shards(str(placeholder_dir(tmp_path / "out", [[("k1", name), ("k2", "other")]])))
    assert shards.join([twin, name], "ann") == [(0, "k1", name)]


def test_tar_urls_join_on_keys_by_the_same_rules(tmp_path):
    root = write_extraction_dir(tmp_path / "out", [[Video("clip.mp4"), Video("NUsG9BgSes0_210.0_360.0")]])
    shards = resolve_shards(str(root / SHARDS_DIR / "shard-000000.tar"))
    samples = [(key, key) for key in shards.keys(0)]
    for name in ["clip", "clip.mp4", "clip_mp4", "NUsG9BgSes0_210.0_360.0", "other"]:
        assert {key: n for _, key, n in shards.join([name], "ann")} == join_names([name], samples, "ann")


# ---- a partitioned tree ----------------------------------------------------------------------------------------
def test_a_partitioned_tree_is_read_as_one_dataset(tmp_path):
    root = tmp_path / "tree"
    parts = [root / PARTITIONS_DIR / partition_dir_name(k, 2) for k in range(2)]
    write_extraction_dir(parts[0], [[Video("a.0"), Video("a.1")], [Video("a.2")]])
    write_extraction_dir(parts[1], [[Video("b.0"), Video("b.1")]])

    shards = resolve_shards(str(root))
    assert [s.url for s in shards] == [str(parts[0] / SHARDS_DIR / "shard-000000.tar"),
                                       str(parts[0] / SHARDS_DIR / "shard-000001.tar"),
                                       str(parts[1] / SHARDS_DIR / "shard-000000.tar")]
    assert [shards.keys(n) for n in range(3)] == [["a_0", "a_1"], ["a_2"], ["b_0", "b_1"]]
    assert sorted(shards.join(["a.2", "b.1"], "ann")) == [(1, "a_2", "a.2"), (2, "b_1", "b.1")]
    labels = {name: "x" for name in ["a.0", "a.1", "a.2", "b.0", "b.1"]}
    loader = StreamingLoader(str(root), ClassificationTask(labels), LoaderConfig(streams=("video",), batch_size=2),
                             mode="eval")
    assert sorted(key for batch in loader for key in batch["sample_ids"]) == ["a_0", "a_1", "a_2", "b_0", "b_1"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_keeps_its_index_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = placeholder_dir(tmp_path / "out", [[("a", "a")]])
    root.chmod(0o555)
    try:
        assert resolve_shards(str(root)).keys(0) == ["a"]
    finally:
        root.chmod(0o755)
    assert not (root / SAMPLE_INDEX).exists() and list((tmp_path / "cache").rglob(HEADER))

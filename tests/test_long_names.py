"""Long input names: a key of any allowed length is written (a pax header carries a member name longer than
ustar's 100 bytes), read by every reader (lamflow, webdataset, GNU tar, tarfile), salvaged after a kill and
extracted end to end; a sample that cannot be encoded fails alone, before any byte of it is written."""
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from contract_shards import Video, contract_sample, write_extraction_dir
from media import make_media

from lamflow.contract import MAX_KEY_LENGTH, iter_members, read_samples
from lamflow.errors import LamflowError
from lamflow.pipelines.shards import ShardSink, UnwritableSampleError, salvage_temp_shard

INTERVIEW = "2019-05-04 Interview with the director about the making of the film (full, uncut, HD)"
DEEP = "archive/" * 20 + "a clip whose name alone is longer than any key"  # cut to MAX_KEY_LENGTH + a digest
QUERY = [("1", "the director talks", 3)]


def member_names(video: Video) -> list[str]:
    """The members ShardSink writes for ``video``: its fields in name order, meta.json last."""
    fields = sorted((f for f in contract_sample(video) if f != "__key__"), key=lambda f: (f == "meta.json", f))
    return [f"{video.key}.{field}" for field in fields]


def tarfile_written(shard: Path, format: int) -> bytes:
    """The members of ``shard`` written again by tarfile itself, in ``format``."""
    buffer = io.BytesIO()
    with tarfile.open(shard) as tar, tarfile.open(fileobj=buffer, mode="w", format=format) as out:
        for member in tar:
            out.addfile(member, tar.extractfile(member))
    return buffer.getvalue()


def test_long_keys_are_written_whole_and_every_reader_reads_them(tmp_path):
    videos = [Video(INTERVIEW, texts=QUERY), Video(DEEP, texts=QUERY), Video("short")]
    assert len(videos[1].key) == MAX_KEY_LENGTH and len(f"{videos[1].key}.text_pooled.npy") > 100
    shard = write_extraction_dir(tmp_path, [videos]) / "shards" / "shard-000000.tar"
    expected = [name for video in videos for name in member_names(video)]

    assert [f"{key}.{field}" for key, field, _, _ in iter_members(shard)] == expected
    with tarfile.open(shard) as tar:
        assert tar.getnames() == expected
    listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == expected and not listed.stderr
    samples = list(wds.WebDataset(str(shard), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [v.key for v in videos]
    for video, sample in zip(videos, samples):
        assert sample["meta.json"]["original_name"] == video.name
        assert np.array_equal(sample["video.npy"], contract_sample(video)["video.npy"])
    assert samples[1]["text_pooled.npy"].shape == (1, 6)


def test_names_that_fit_ustar_are_written_byte_for_byte_as_ustar_and_longer_ones_as_tarfile_writes_pax(tmp_path):
    short = write_extraction_dir(tmp_path / "short", [[Video("clip.v1", texts=QUERY), Video("b")]]) / "shards" / "shard-000000.tar"
    assert short.read_bytes() == tarfile_written(short, tarfile.USTAR_FORMAT)  # shards of short keys are unchanged
    long = write_extraction_dir(tmp_path / "long", [[Video(INTERVIEW, texts=QUERY), Video("b")]]) / "shards" / "shard-000000.tar"
    with pytest.raises(ValueError, match="name is too long"):
        tarfile_written(long, tarfile.USTAR_FORMAT)  # what crashed the extraction
    assert long.read_bytes() == tarfile_written(long, tarfile.PAX_FORMAT)


META_PAX = "in the pax header of its meta.json"


@pytest.mark.parametrize("cut", ["in the pax header of its first member", "in the full name that pax header carries",
                                 "in the ustar header after it", META_PAX])
def test_a_shard_cut_inside_a_pax_header_keeps_every_complete_sample(tmp_path, cut):
    videos = [Video(f"{DEEP} {i}", texts=QUERY) for i in range(4)]
    sink = ShardSink(tmp_path, 0, 1000, 10**9, on_commit=lambda shard, records: None)
    temp = tmp_path / ".shard-000000.tar.tmp"
    ends = []
    for video in videos:  # each write is flushed: what a SIGKILL right after it leaves on disk
        sink.write(contract_sample(video), video.key)
        ends.append(temp.stat().st_size)
    # The sink is abandoned like a killed process's. Every member of these samples has a long name: a pax
    # header block, one block of records, then the ustar header (3 x 512 bytes) before its data.
    meta_bytes = len(json.dumps(contract_sample(videos[3])["meta.json"], sort_keys=True).encode())
    meta_start = ends[3] - (meta_bytes + -meta_bytes % 512) - 3 * 512
    keep = {"in the pax header of its first member": ends[2] + 300, "in the full name that pax header carries": ends[2] + 520,
            "in the ustar header after it": ends[2] + 1100, META_PAX: meta_start + 520}[cut]
    with open(temp, "r+b") as handle:
        handle.truncate(keep)

    kept = salvage_temp_shard(temp)
    assert [key for key, _, _ in kept] == [v.key for v in videos[:3]]
    assert [meta["original_name"] for _, meta, _ in kept] == [v.name for v in videos[:3]]
    assert kept[0][2] == {"video": 8, "audio": 4, "text": 6}
    assert [s["__key__"] for s in read_samples(temp, {"meta.json"})] == [v.key for v in videos[:3]]
    listed = subprocess.run(["tar", "tf", str(temp)], capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == [name for video in videos[:3] for name in member_names(video)]


def _unwritable(change: str) -> dict:
    sample = contract_sample(Video("b"))
    if change == "NaN in meta.json":
        sample["meta.json"]["duration"] = float("nan")
    elif change == "a numpy number in meta.json":
        sample["meta.json"]["duration"] = np.float32(2.0)
    elif change == "an object array":
        sample["video.npy"] = np.array([{}], dtype=object)
    return sample


@pytest.mark.parametrize("change, message", [
    ("NaN in meta.json", "Out of range float values are not JSON compliant"),
    ("a numpy number in meta.json", "Object of type float32 is not JSON serializable"),
    ("an object array", "field 'video.npy' has dtype object"),
])
def test_a_sample_that_cannot_be_encoded_fails_alone_before_any_byte_of_it_is_written(tmp_path, change, message):
    committed = {}
    temp = tmp_path / ".shard-000000.tar.tmp"
    with ShardSink(tmp_path, 0, 1000, 10**9, on_commit=lambda shard, records: committed.update({shard: records})) as sink:
        sink.write(contract_sample(Video("a")), "a")
        size = temp.stat().st_size
        with pytest.raises(UnwritableSampleError, match=rf"^sample 'b' cannot be written to a shard: .*{message}") as error:
            sink.write(_unwritable(change), "b")
        assert isinstance(error.value, LamflowError)  # a user-facing error: the caller records the input as failed
        assert temp.stat().st_size == size
        sink.write(contract_sample(Video("c")), "c")
    assert committed == {"shard-000000.tar": ["a", "c"]}
    assert [s["__key__"] for s in read_samples(tmp_path / "shard-000000.tar")] == ["a", "c"]


def test_a_video_with_a_long_ordinary_name_is_extracted(tmp_path):
    video = make_media(tmp_path / "videos" / f"{INTERVIEW}.mp4", duration=1.0, size="64x48", rate=5)
    texts = tmp_path / "queries.jsonl"
    texts.write_text(json.dumps({"vid": INTERVIEW, "query": "the director talks", "qid": 1}) + "\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lamflow.cli", "extract", str(video.parent), "--out", str(out),
                           "--clip-model", "lamflow-tiny", "--no-progress", "--texts", str(texts)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["original_name"] == INTERVIEW
    shard = out / "shards" / record["shard"]
    (sample,) = wds.WebDataset(str(shard), shardshuffle=False).decode()
    assert sample["__key__"] == record["key"] and sample["meta.json"]["source"] == str(video)
    assert sample["text_pooled.npy"].shape[0] == 1 and len(f"{record['key']}.text_pooled.npy") > 100
    listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert f"{record['key']}.text_pooled.npy" in listed

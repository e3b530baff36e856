"""`lamflow extract` end to end on real media, real open_clip (tiny config), real Dask clusters and real
webdataset tars: shard contents, corrupt inputs, resume/retry, kill-and-resume (a killed run loses only the
videos in flight), settings mismatch, safe keys, existing schedulers and one model load per worker."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from contract_shards import Video, contract_sample
from distributed import Client, LocalCluster
from lamflow.pipelines.clip_encoder import ClipWeightsError
from lamflow.pipelines.extract import run_extraction
from lamflow.pipelines.manifest import MANIFEST, OutputDir, OutputDirError, Record, SettingsMismatchError
from lamflow.pipelines.settings import ExtractSettings
from lamflow.pipelines.shards import complete_samples
from lamflow.pipelines.sources import SourceError
from media import make_media

from lamflow.contract import read_samples, sample_dims
from lamflow.errors import LamflowError
from lamflow.fileio import read_jsonl

TINY = ExtractSettings(clip_model="lamflow-tiny", frame_batch=4)
CLI = [sys.executable, "-m", "lamflow.cli", "extract", "--clip-model", "lamflow-tiny", "--no-progress"]
SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Short videos of different durations, rates and sizes, with and without audio."""
    root = tmp_path_factory.mktemp("corpus")
    make_media(root / "talk.mp4", duration=3.0, size="160x90", rate=25)
    make_media(root / "silent.mp4", duration=2.0, size="96x72", rate=10, audio=False)
    make_media(root / "short.mkv", duration=1.5, size="120x120", rate=15, tone_hz=880)
    make_media(root / "tone.wav", duration=2.0, video=False)
    return root


def read_shards(out: Path) -> dict[str, dict]:
    """Every sample of ``out`` through the plain webdataset library, by input name (``talk`` for talk.mp4:
    what annotations join on); asserts keys are unique."""
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)), f"duplicate samples: {keys}"
    return {s["meta.json"]["original_name"]: s for s in samples}


def manifest(out: Path) -> list[dict]:
    return read_jsonl(out / MANIFEST)


def assert_manifest_lists_each_shard_in_tar_order(out: Path) -> None:
    """Readers (datasets/shardlist.py) take a shard's keys from the manifest: they must be the tar's, in order."""
    records = manifest(out)
    for shard in sorted((out / "shards").glob("*.tar")):
        in_manifest = [r["key"] for r in records if r["status"] == "ok" and r["shard"] == shard.name]
        assert in_manifest == [s["__key__"] for s in read_samples(shard, {"meta.json"})]


def assert_same_samples(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        fields = sorted(f for f in a[key] if f.endswith(".npy"))
        assert fields == sorted(f for f in b[key] if f.endswith(".npy"))
        for field in fields:
            assert np.array_equal(a[key][field], b[key][field]), f"{key}/{field} differs"


def test_every_input_becomes_one_sample_with_timestamped_streams(corpus, tmp_path, scheduler):
    texts = tmp_path / "queries.jsonl"
    texts.write_text(json.dumps({"vid": "talk", "query": "a test pattern", "qid": 7}) + "\n"
                     + json.dumps({"vid": "talk", "query": "a beep", "qid": 8}) + "\n")
    out = tmp_path / "out"
    summary = run_extraction([str(corpus), str(corpus / "tone.wav")], out, TINY, scheduler=scheduler,
                             shard_samples=3, texts=texts, progress=False)
    assert (summary.ok, summary.failed, summary.attempted) == (4, 0, 4)

    samples = read_shards(out)
    assert sorted(samples) == ["short", "silent", "talk", "tone"]
    # the key is made from the name with its extension, so clip.mkv beside clip.mp4 stays extractable
    assert sorted(s["__key__"] for s in samples.values()) == ["short_mkv", "silent_mp4", "talk_mp4", "tone_wav"]
    talk = samples["talk"]
    assert talk["video.npy"].shape == (3, 64) and talk["video.npy"].dtype == np.float16
    assert np.allclose(talk["video_ts.npy"], [0, 1, 2])
    assert talk["audio.npy"].shape == (30, TINY.n_mels) and np.allclose(np.diff(talk["audio_ts.npy"]), 0.1)
    assert talk["text.npy"].shape[0] == 2 and talk["text_pooled.npy"].shape == (2, 64)
    assert [t["id"] for t in talk["meta.json"]["texts"]] == ["7", "8"]
    assert talk["meta.json"]["source"] == str(corpus / "talk.mp4")
    assert "random_init" in json.dumps(talk["meta.json"]["provenance"]["video"])
    # a missing stream is an empty array with the right trailing dim plus a note, never a missing field
    assert samples["silent"]["audio.npy"].shape == (0, TINY.n_mels)
    assert any("no audio" in n for n in samples["silent"]["meta.json"]["notes"])
    assert samples["tone"]["video.npy"].shape == (0, 64) and samples["tone"]["audio.npy"].shape[0] == 20
    assert "text.npy" not in samples["short"]

    records = manifest(out)
    assert sorted(r["original_name"] for r in records) == sorted(samples) and {r["status"] for r in records} == {"ok"}
    assert {r["key"]: r["counts"]["video"] for r in records}["talk_mp4"] == 3
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 1}
    assert json.loads((out / "stats.json").read_text())["ok"] == 4
    assert json.loads((out / "extraction.json").read_text())["settings"]["clip_model"] == "lamflow-tiny"
    assert not list((out / "shards").glob("*.tmp"))


def test_corrupt_inputs_are_recorded_and_retry_failed_reattempts_only_them(corpus, tmp_path, scheduler):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = (corpus / "talk.mp4").read_bytes()
    (videos / "good.mp4").write_bytes(good)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (videos / "garbage.mp4").write_bytes(os.urandom(5000))
    out = tmp_path / "out"

    first = run_extraction([str(videos)], out, TINY, scheduler=scheduler, progress=False)
    assert (first.ok, first.failed) == (1, 3)
    status = {r["original_name"]: r for r in manifest(out)}
    assert status["good"]["status"] == "ok"
    for key in ("empty", "truncated", "garbage"):
        assert status[key]["status"] == "error" and str(videos / f"{key}.mp4") in status[key]["error"]

    (videos / "empty.mp4").write_bytes(good)  # the user fixes one file
    again = run_extraction([str(videos)], out, TINY, scheduler=scheduler, progress=False)
    assert (again.attempted, again.skipped_done, again.skipped_failed) == (0, 1, 3)

    retried = run_extraction([str(videos)], out, TINY, scheduler=scheduler, retry_failed=True, progress=False)
    assert (retried.attempted, retried.ok, retried.failed) == (3, 1, 2)
    records = manifest(out)
    assert len(records) == 4  # one record per input, the latest
    assert {r["original_name"]: r["status"] for r in records} == {"good": "ok", "empty": "ok", "truncated": "error", "garbage": "error"}
    assert sorted(read_shards(out)) == ["empty", "good"]
    assert_manifest_lists_each_shard_in_tar_order(out)


def test_rerunning_the_same_command_changes_nothing(corpus, tmp_path, scheduler):
    out = tmp_path / "out"
    run_extraction([str(corpus)], out, TINY, scheduler=scheduler, shard_samples=2, progress=False)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    manifest_before = (out / MANIFEST).read_text()
    again = run_extraction([str(corpus)], out, TINY, scheduler=scheduler, shard_samples=2, progress=False)
    assert (again.attempted, again.skipped_done, again.shards_written) == (0, 3, [])
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
    assert (out / MANIFEST).read_text() == manifest_before


def test_samples_reach_the_shards_in_input_order_whatever_order_workers_finish(tmp_path, scheduler):
    # With 2 workers the two short videos finish while the long first one is still being encoded.
    videos = tmp_path / "videos"
    make_media(videos / "a_slow.mp4", duration=12.0, size="320x240", rate=30)
    make_media(videos / "b_quick.mp4", duration=1.0)
    make_media(videos / "c_quick.mp4", duration=1.0)
    out = tmp_path / "out"
    run_extraction([str(videos)], out, TINY, scheduler=scheduler, shard_samples=2, progress=False)
    layout = {p.name: [s["__key__"] for s in read_samples(p, {"meta.json"})] for p in sorted((out / "shards").glob("*.tar"))}
    assert layout == {"shard-000000.tar": ["a_slow_mp4", "b_quick_mp4"], "shard-000001.tar": ["c_quick_mp4"]}
    assert_manifest_lists_each_shard_in_tar_order(out)


def test_new_inputs_are_added_in_new_shards_without_touching_old_ones(corpus, tmp_path, scheduler):
    out = tmp_path / "out"
    run_extraction([str(corpus / "talk.mp4")], out, TINY, scheduler=scheduler, progress=False)
    old = (out / "shards" / "shard-000000.tar").read_bytes()
    summary = run_extraction([str(corpus)], out, TINY, scheduler=scheduler, progress=False)
    assert summary.shards_written == ["shard-000001.tar"] and summary.skipped_done == 1
    assert (out / "shards" / "shard-000000.tar").read_bytes() == old
    assert sorted(read_shards(out)) == ["short", "silent", "talk"]


def test_changed_feature_settings_are_refused_unless_overwrite(corpus, tmp_path, scheduler):
    out = tmp_path / "out"
    run_extraction([str(corpus / "talk.mp4")], out, TINY, scheduler=scheduler, progress=False)
    other = ExtractSettings(clip_model="lamflow-tiny", fps=2.0)
    with pytest.raises(SettingsMismatchError, match=r"fps: 1\.0 -> 2\.0.*new --out.*--overwrite"):
        run_extraction([str(corpus / "talk.mp4")], out, other, scheduler=scheduler, progress=False)
    # runtime-only settings may change between resumed runs
    faster = ExtractSettings(clip_model="lamflow-tiny", frame_batch=64)
    assert run_extraction([str(corpus / "talk.mp4")], out, faster, scheduler=scheduler, progress=False).skipped_done == 1
    run_extraction([str(corpus / "talk.mp4")], out, other, scheduler=scheduler, overwrite=True, progress=False)
    assert read_shards(out)["talk"]["video.npy"].shape[0] == 6


def test_cli_reports_settings_mismatch_with_the_fix(corpus, tmp_path, scheduler):
    out = tmp_path / "out"
    run_extraction([str(corpus / "talk.mp4")], out, TINY, scheduler=scheduler, progress=False)
    done = subprocess.run(CLI + [str(corpus / "talk.mp4"), "--out", str(out), "--dtype", "float32"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "dtype: 'float16' -> 'float32'" in done.stderr and "--overwrite" in done.stderr


def test_keys_come_from_each_input_alone_are_safe_and_keep_the_original_name(corpus, tmp_path, scheduler):
    videos = tmp_path / "videos"
    clip = (corpus / "short.mkv").read_bytes()
    names = ["my clip.v1 (final).mkv", "a/dup.mkv", "b/dup.mkv", "café.mkv", "x.y.mkv"]
    for name in names:
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(clip)
    out = tmp_path / "out"
    assert run_extraction([str(videos)], out, TINY, scheduler=scheduler, progress=False).ok == len(names)
    samples = read_shards(out)
    assert sorted(s["__key__"] for s in samples.values()) == [
        "a_dup_mkv", "b_dup_mkv", "cafe_mkv", "my_clip_v1__final__mkv", "x_y_mkv"]
    assert sorted(samples) == sorted(["my clip.v1 (final)", "a/dup", "b/dup", "café", "x.y"])  # the original names
    # The same input alone gets the same key: keys never depend on the rest of the run.
    alone = tmp_path / "alone"
    run_extraction([str(videos / "b")], alone, TINY, scheduler=scheduler, progress=False)
    assert [s["__key__"] for s in read_shards(alone).values()] == ["dup_mkv"]  # relative to the directory given: b/
    run_extraction([str(videos / "b" / "dup.mkv")], tmp_path / "file", TINY, scheduler=scheduler, progress=False)
    assert [s["__key__"] for s in read_shards(tmp_path / "file").values()] == ["dup_mkv"]


def test_two_files_of_one_name_both_extract_and_only_true_key_clashes_are_recorded_failures(corpus, tmp_path, scheduler):
    """clip.mkv beside clip.mp4 (downloaded corpora) get keys clip_mkv and clip_mp4; 'x y.mkv' and 'x_y.mkv'
    would share a key whatever the rule: both are recorded failures naming each other, and the run goes on."""
    for name in ["same/clip.mkv", "same/clip.mp4", "same/x y.mkv", "same/x_y.mkv", "same/other.mkv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((corpus / "short.mkv").read_bytes())
    out = tmp_path / "out"
    summary = run_extraction([str(tmp_path / "same")], out, TINY, scheduler=scheduler, progress=False)
    assert (summary.ok, summary.failed) == (3, 2)
    keys = [s["__key__"] for shard in sorted((out / "shards").glob("*.tar")) for s in read_samples(shard, {"meta.json"})]
    assert sorted(keys) == ["clip_mkv", "clip_mp4", "other_mkv"]
    refused = {r["source"]: r["error"] for r in manifest(out) if r["status"] == "error"}
    assert sorted(refused) == [str(tmp_path / "same/x y.mkv"), str(tmp_path / "same/x_y.mkv")]
    for error in refused.values():
        assert error.startswith("KeyClash: key 'x_y_mkv' would name 2 inputs") and "x y.mkv" in error and "x_y.mkv" in error
    # a new input may not take a key already in a shard either; the rerun extracts nothing twice
    (tmp_path / "more").mkdir()
    (tmp_path / "more/x_y.mkv").write_bytes((corpus / "short.mkv").read_bytes())
    again = run_extraction([str(tmp_path / "same"), str(tmp_path / "more" / "x_y.mkv")], out, TINY,
                           scheduler=scheduler, progress=False, retry_failed=True)
    assert (again.ok, again.skipped_done) == (0, 3) and again.failed == 3


def test_an_annotation_naming_two_files_of_one_name_is_refused_naming_both(corpus, tmp_path, scheduler):
    for name in ["nested/a/clip.mkv", "nested/b/clip.mkv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((corpus / "short.mkv").read_bytes())
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"vid": "clip", "qid": 1, "query": "a clip"}) + "\n")
    with pytest.raises(LamflowError, match=r"--texts video name 'clip' names 2 samples \(a_clip_mkv, b_clip_mkv\)"):
        run_extraction([str(tmp_path / "nested")], tmp_path / "out2", TINY, scheduler=scheduler, progress=False, texts=texts)
    assert not (tmp_path / "out2" / "shards").exists() or not list((tmp_path / "out2" / "shards").iterdir())


def test_a_model_that_cannot_load_stops_the_run_instead_of_failing_every_video(corpus, tmp_path, scheduler):
    broken = ExtractSettings(clip_model="no-such-model")
    with pytest.raises(ClipWeightsError, match="no-such-model"):
        run_extraction([str(corpus)], tmp_path / "out", broken, scheduler=scheduler, progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists() or manifest(tmp_path / "out") == []
    # nothing was written, so fixing the typo needs no --overwrite
    fixed = run_extraction([str(corpus / "short.mkv")], tmp_path / "out", TINY, scheduler=scheduler, progress=False)
    assert fixed.ok == 1


def test_open_repairs_everything_a_killed_run_can_leave(tmp_path):
    """The states a SIGKILL can leave between shard write, manifest append and rename, built by hand."""
    record = {"kind": "video", "settings": {"fps": 1.0}, "texts": None}
    out = tmp_path / "out"
    OutputDir(out, record).close()
    shards = out / "shards"
    (shards / "shard-000000.tar").write_bytes(b"complete")
    (shards / ".shard-000001.tar.tmp").write_bytes(b"half written")
    lines = [
        {"key": "a", "source": "/a.mp4", "status": "ok", "shard": "shard-000000.tar"},
        {"key": "b", "source": "/b.mp4", "status": "error", "error": "DecodeError: bad"},
        {"key": "c", "source": "/c.mp4", "status": "ok", "shard": "shard-000001.tar"},  # never renamed
    ]
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"key": "d", "sou')  # torn append

    output = OutputDir(out, record)
    assert output.done_sources() == {"/a.mp4"} and output.failed_sources() == {"/b.mp4"}
    assert output.next_shard_index() == 1
    assert not (shards / ".shard-000001.tar.tmp").exists()
    assert [line["key"] for line in read_jsonl(out / MANIFEST)] == ["a", "b"]
    output.close()

    (shards / "shard-000005.tar").write_bytes(b"not in the manifest")
    with pytest.raises(OutputDirError, match=r"shard-000005.tar.*not in manifest.jsonl"):
        OutputDir(out, record)


@pytest.mark.parametrize("cut", ["before it", "half way", "in its meta.json"])
def test_an_unfinished_shard_keeps_every_complete_sample(tmp_path, cut):
    """A process killed while writing its 4th sample: the next open commits the 3 complete ones as a normal
    shard with records rebuilt from their meta.json, and drops the cut-off one."""
    record = {"kind": "video", "settings": {"fps": 1.0}, "texts": None}
    out = tmp_path / "out"
    output = OutputDir(out, record)
    videos = [Video(f"clip{i}.v1", duration=2.0 + i) for i in range(4)]
    sink = output.shard_sink(max_samples=1000, max_bytes=10**9)
    temp = out / "shards" / ".shard-000000.tar.tmp"
    ends = []
    for video in videos:  # each write is flushed: what a SIGKILL right after it leaves on disk
        sample = contract_sample(video)
        sink.write(sample, Record.from_meta(video.key, sample["meta.json"], sample_dims(sample)))
        ends.append(temp.stat().st_size)
    output.close()  # releases the lock only; the sink is abandoned like a killed process's
    meta_bytes = len(json.dumps(sample["meta.json"], sort_keys=True).encode())
    last_meta_byte = ends[3] - (-meta_bytes % 512) - 1  # meta.json is the sample's last member, then padding
    keep = {"before it": ends[2], "half way": (ends[2] + ends[3]) // 2, "in its meta.json": last_meta_byte}[cut]
    with open(temp, "r+b") as handle:
        handle.truncate(keep)

    reopened = OutputDir(out, record)
    assert reopened.repairs == ["kept the 3 finished sample(s) of unfinished shard .shard-000000.tar.tmp as shard-000000.tar"]
    assert reopened.done_sources() == {f"/videos/{v.name}.mp4" for v in videos[:3]}
    assert reopened.next_shard_index() == 1
    reopened.close()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.tar"]
    samples = read_shards(out)  # plain webdataset reads the salvaged shard
    assert [s["__key__"] for s in samples.values()] == [v.key for v in videos[:3]]
    for video in videos[:3]:
        assert np.array_equal(samples[video.name]["video.npy"], contract_sample(video)["video.npy"])
    by_key = {r["key"]: r for r in manifest(out)}
    assert by_key["clip1_v1"]["original_name"] == "clip1.v1" and by_key["clip1_v1"]["duration"] == 3.0
    assert by_key["clip1_v1"]["dims"] == sample_dims(contract_sample(videos[1]))  # widths from the .npy headers
    assert_manifest_lists_each_shard_in_tar_order(out)


def _cli_extract(videos: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(CLI + [str(videos), "--out", str(out), "--shard-samples", "3", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)


def _written(out: Path) -> tuple[int, int]:
    """(samples in committed shards, complete samples in the unfinished one) of a running extraction."""
    shards = out / "shards"
    try:
        committed = sum(1 for shard in shards.glob("shard-*.tar") for _ in read_samples(shard, {"meta.json"}))
        unfinished = sum(len(complete_samples(temp)[0]) for temp in shards.glob(".shard-*.tar.tmp"))
    except FileNotFoundError:  # a shard committed (renamed) while we looked: look again
        return 0, 0
    return committed, unfinished


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result_re_extracting_only_the_videos_in_flight(tmp_path):
    videos = tmp_path / "videos"
    total = 8
    for i in range(total):
        make_media(videos / f"v{i}.mp4", duration=2.0 + 0.5 * (i % 3), size="96x72", rate=10, audio=i % 4 != 3)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert _cli_extract(videos, reference, "--workers", "2").wait(timeout=300) == 0

    # The run's one worker pauses after 4 videos (tests/pause_worker.py), so however fast this machine is, the
    # kill lands with the first shard of 3 committed and the next one holding 1 finished sample (2 if one more
    # video had started before the pause).
    paused = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(Path(__file__).parent / "pause_worker.py")]),
              "LAMFLOW_TEST_PAUSE_AFTER": "4", "LAMFLOW_TEST_PAUSE_MARK": str(tmp_path / "paused")}
    run = _cli_extract(videos, resumed, "--workers", "1", env=paused)
    deadline = time.time() + 240  # a hang guard: the pause, not the clock, decides where the kill lands
    committed = unfinished = 0
    # Kill once a shard is committed and the next, unfinished one already holds finished samples.
    while not (committed and unfinished) and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        committed, unfinished = _written(resumed)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI and its Dask workers: its own session, started above
    run.wait()
    assert committed and unfinished and committed + unfinished < total, "the kill should land mid-shard"

    finish = subprocess.run(CLI + [str(videos), "--out", str(resumed), "--shard-samples", "3", "--workers", "2", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    summary = json.loads(finish.stdout)
    # Every sample written before the kill is kept, the unfinished shard's too: only videos in flight run again.
    assert summary["skipped_done"] >= committed + unfinished and summary["attempted"] == total - summary["skipped_done"]
    assert any(repair.startswith("kept the") for repair in summary["repairs"]), summary["repairs"]
    assert_same_samples(read_shards(reference), read_shards(resumed))
    records = manifest(resumed)
    assert sorted(r["key"] for r in records) == sorted(f"v{i}_mp4" for i in range(total))
    assert {r["status"] for r in records} == {"ok"}
    assert_manifest_lists_each_shard_in_tar_order(resumed)
    sizes = json.loads((resumed / "sizes.json").read_text())
    assert sum(sizes.values()) == total and set(sizes) == {p.name for p in (resumed / "shards").iterdir()}


def test_a_cluster_without_workers_stops_the_run_with_one_clear_line(corpus, tmp_path):
    """Never wait silently: a scheduler whose workers are gone (or never came) ends the run after
    --worker-timeout, quoting the cluster manager's status; the same command resumes later."""
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as cluster:
        done = subprocess.run(CLI + [str(corpus), "--out", str(tmp_path / "out"), "--scheduler",
                                     cluster.scheduler_address, "--worker-timeout", "6"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (error,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert re.fullmatch(rf"lamflow extract: error: no Dask worker connected to {cluster.scheduler_address} for "
                        r"(6|7|8|9|10|11) s \(worker timeout 6 s\)\. Finished videos are saved: run the same "
                        r"command again to continue\.", error), error


_ENCODER_USE = {"encoder_loads": 0, "videos": 0}  # in a worker process: what _count_encoder_use counted there


def _count_encoder_use() -> None:
    """Sent to every worker before a run: from now on, count in this worker process the encoder loads
    (worker._load_encoders) and the inputs handled (worker.cached_encoders, which extract_video calls once per
    input, whatever becomes of it)."""
    from lamflow.pipelines import worker

    load, cached = worker._load_encoders, worker.cached_encoders

    def counted_load(settings):
        _ENCODER_USE["encoder_loads"] += 1
        return load(settings)

    def counted_cached(settings):
        _ENCODER_USE["videos"] += 1
        return cached(settings)

    worker._load_encoders, worker.cached_encoders = counted_load, counted_cached


def _encoder_use() -> dict[str, int]:
    return dict(_ENCODER_USE)


def test_existing_scheduler_workers_load_the_model_once_each(corpus, tmp_path):
    videos = tmp_path / "videos"
    clip = (corpus / "short.mkv").read_bytes()
    for i in range(6):
        (videos / f"c{i}.mkv").parent.mkdir(exist_ok=True)
        (videos / f"c{i}.mkv").write_bytes(clip)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(_count_encoder_use)
        done = subprocess.run(CLI + [str(videos), "--out", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "RANDOM" in done.stderr  # --pretrained none is said loudly
        counters = client.run(_encoder_use)
    assert sum(c["videos"] for c in counters.values()) == 6
    assert max(c["videos"] for c in counters.values()) >= 2  # some worker reused its model
    for c in counters.values():
        assert c["encoder_loads"] == (1 if c["videos"] else 0)
    assert len(read_shards(tmp_path / "out")) == 6


def test_a_missing_source_fails_before_the_output_directory_is_made(tmp_path):
    """Sources are streamed, but a SOURCE that names nothing is found before OUT is created or recorded."""
    with pytest.raises(SourceError, match="does not exist"):
        run_extraction([str(tmp_path / "no_such_video.mp4")], tmp_path / "out", TINY, progress=False)
    assert not (tmp_path / "out").exists()

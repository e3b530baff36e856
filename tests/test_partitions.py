"""Runs at corpus scale: partitioned extraction into one tree, finished samples that survive a kill while they
wait for input order, and per-sample write errors that are recorded instead of ending the run."""
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lamflow.cli import main
from lamflow.contract import MANIFEST, Record, output_dirs, sample_dims
from lamflow.errors import ConfigError, DataFileError
from lamflow.fileio import read_jsonl
from lamflow.pipelines.extract import ExtractionSummary, _write, run_extraction
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.plan import Partition
from lamflow.pipelines.reorder import SPILL_DIR
from lamflow.pipelines.settings import ExtractSettings
from lamflow.pipelines.worker import VideoOutcome
from contract_shards import Video, contract_sample
from media import make_media

TINY = ExtractSettings(clip_model="lamflow-tiny", frame_batch=4)
RUN_RECORD = {"kind": "video", "settings": {"fps": 1.0}, "texts": None}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        make_media(root / f"clip{i}.mp4", duration=1.0, size="64x48", rate=5, audio=i % 2 == 0)
    return root


def shard_keys(root: Path) -> list[str]:
    urls = sorted(str(p) for p in root.glob("shards/*.tar"))
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)] if urls else []


def test_partitions_split_the_inputs_by_key_into_one_tree_that_reads_as_one_dataset(videos, tmp_path, scheduler):
    out = tmp_path / "tree"
    summaries = [run_extraction([str(videos)], out, TINY, scheduler=scheduler, progress=False, partition=Partition(k, 2))
                 for k in range(2)]
    parts = output_dirs(out)
    assert [p.name for p in parts] == ["part-00000-of-00002", "part-00001-of-00002"]
    keys = [shard_keys(part) for part in parts]
    # every input in exactly one partition, the one its key hashes to, decided without the other partition
    assert sorted(keys[0] + keys[1]) == [f"clip{i}_mp4" for i in range(6)]
    for k, part_keys in enumerate(keys):
        assert all(Partition(k, 2).holds(key) for key in part_keys)
        assert summaries[k].inputs == summaries[k].ok == len(part_keys)
    # a partition reruns as a resume: nothing extracted twice
    again = run_extraction([str(videos)], out, TINY, scheduler=scheduler, progress=False, partition=Partition(1, 2))
    assert (again.attempted, again.skipped_done) == (0, len(keys[1]))
    # inspect takes the tree as one dataset
    assert main(["inspect", str(out), "--json"]) == 0


def test_a_partitioned_tree_and_a_single_run_never_share_an_out(videos, tmp_path, scheduler):
    single = tmp_path / "single"
    run_extraction([str(videos / "clip0.mp4")], single, TINY, scheduler=scheduler, progress=False)
    with pytest.raises(ConfigError, match="single run's output; a partitioned run needs its own --out"):
        run_extraction([str(videos)], single, TINY, scheduler=scheduler, progress=False, partition=Partition(0, 2))
    tree = tmp_path / "tree"
    run_extraction([str(videos / "clip0.mp4")], tree, TINY, scheduler=scheduler, progress=False, partition=Partition(0, 3))
    with pytest.raises(ConfigError, match="partitioned tree"):
        run_extraction([str(videos)], tree, TINY, scheduler=scheduler, progress=False)
    with pytest.raises(DataFileError, match="partitions of 3 and 2 parts"):
        run_extraction([str(videos)], tree, TINY, scheduler=scheduler, progress=False, partition=Partition(1, 2))


def test_the_partition_option_takes_k_of_n_and_names_the_form_otherwise(capsys):
    assert Partition.parse("3/16") == Partition(3, 16)
    for bad in ("16/16", "3", "-1/4", "a/b"):
        with pytest.raises(SystemExit) as exited:
            main(["extract", "videos", "--out", "o", f"--partition={bad}"])
        assert exited.value.code == 2
        assert "--partition expects K/N with 0 <= K < N" in capsys.readouterr().err


def test_finished_samples_waiting_for_input_order_survive_a_kill_and_are_kept_once(tmp_path):
    """Inputs 1 and 2 finished while input 0 was still running; the client is killed (nothing of them in a
    shard yet, or input 2 already written). The next open puts each finished sample in a shard exactly once."""
    out = tmp_path / "out"
    output = OutputDir(out, RUN_RECORD)
    videos = [Video(f"v{i}", duration=2.0) for i in range(3)]
    buffer = output.reorder_buffer()  # the extractor's buffer
    for index in (1, 2):
        buffer.put(index, VideoOutcome(f"/videos/v{index}.mp4", videos[index].key, contract_sample(videos[index]),
                                       None, 1.0))
    with output.shard_sink(10, 10**9) as sink:  # input 2 reached a shard before the kill (a Ctrl-C drain, say)
        sample = contract_sample(videos[2])
        sink.write(sample, Record.from_meta(videos[2].key, sample["meta.json"], sample_dims(sample)))
    output.close()  # killed: the buffer is gone, its spilled samples are on disk
    assert sorted(p.name for p in (out / SPILL_DIR).iterdir()) == ["1.tar", "2.tar"]

    reopened = OutputDir(out, RUN_RECORD)
    assert reopened.repairs == ["kept 1 finished sample(s) that were waiting for an earlier input when the run stopped"]
    assert reopened.done_sources() == {"/videos/v1.mp4", "/videos/v2.mp4"}
    reopened.close()
    assert not (out / SPILL_DIR).exists()
    assert sorted(shard_keys(out)) == ["v1", "v2"]
    kept = {s["__key__"]: s for s in wds.WebDataset(sorted(str(p) for p in out.glob("shards/*.tar")), shardshuffle=False).decode()}
    assert np.array_equal(kept["v1"]["video.npy"], contract_sample(videos[1])["video.npy"])


def test_a_sample_the_shard_cannot_take_is_that_inputs_recorded_failure_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    output = OutputDir(out, RUN_RECORD)
    summary = ExtractionSummary(str(out), 2, 2, 0, 0, 0, 0)
    bad = contract_sample(Video("bad"))
    bad["meta.json"]["duration"] = float("nan")  # not JSON: the writer refuses it before writing a byte
    good = contract_sample(Video("good"))
    with output.shard_sink(10, 10**9) as sink:
        _write(VideoOutcome("/videos/bad.mp4", "bad", bad, None, 1.0), "bad", sink, output, summary)
        _write(VideoOutcome("/videos/good.mp4", "good", good, None, 1.0), "good", sink, output, summary)
    output.close()
    assert (summary.ok, summary.failed) == (1, 1)
    records = {r["key"]: r for r in read_jsonl(out / MANIFEST)}
    assert records["good"]["status"] == "ok"
    assert records["bad"]["status"] == "error" and records["bad"]["error"].startswith("UnwritableSampleError")
    assert shard_keys(out) == ["good"]
    assert json.loads(json.dumps(summary.to_json()))["failures"]["reasons"] == {"UnwritableSampleError": 1}


def test_an_unwritable_sample_waiting_for_input_order_is_not_spilled_and_stops_nothing(tmp_path):
    """It becomes that input's recorded failure when its turn comes (see the test above), not an error here."""
    output = OutputDir(tmp_path / "out", RUN_RECORD)
    bad = contract_sample(Video("bad"))
    bad["meta.json"]["duration"] = float("nan")
    buffer = output.reorder_buffer()
    buffer.put(1, VideoOutcome("/videos/bad.mp4", "bad", bad, None, 1.0))
    assert not (tmp_path / "out" / SPILL_DIR).exists() and len(buffer) == 1
    output.close()

"""One error path: every user error of every subcommand is one line `lamflow <command>: error: ...` and exit 2.

A traceback is for bugs only. These run `lamflow.cli.main` in this process (what the console script runs),
so each case costs milliseconds, plus real torchrun cases: the rank that fails first speaks, once.
"""
import io
import json
import os
import subprocess
import sys
import tarfile

import h5py
import numpy as np
import pytest
from contract_shards import write_toy_qvhighlights

from lamflow.cli import main


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_qvhighlights(tmp_path_factory.mktemp("toy"), videos=4, val_videos=1)


def run(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, command: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith(f"lamflow {command}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def train_args(toy, *overrides: str) -> list[str]:
    return ["train", "demo", f"data.train_shards={toy.shards}", "data.val_shards=",
            f"data.train_annotations={toy.train_annotations}", "run.progress=false", *overrides]


@pytest.mark.parametrize("override, fragment", [
    ("data.loader.batch_size=0", "'data.loader.batch_size' = 0"),
    ("model.encoder.dropout=1.0", "'model.encoder.dropout' = 1.0"),
    ("optim.max_steps=-5", "optim.max_steps must be an integer >= 1"),
    ("model.mask=none", "'model.mask' has moved: write 'model.encoder.mask'"),
])
def test_train_bad_config_values(capsys, toy, tmp_path, override, fragment):
    assert_one_line(*run(capsys, *train_args(toy, override, f"run.out_dir={tmp_path}")), "train", fragment)


@pytest.mark.parametrize("override, fragment", [
    ("model.input_dims={text: 12, video: 16}", "model.input_dims has no feature width for stream(s) ['audio']"),
    ("model.encoder.attention=flex", "model.encoder.attention=flex cannot train on cpu"),
])
def test_train_config_that_cannot_run_here_fails_before_reading_any_data(capsys, toy, tmp_path, override, fragment):
    # Shards that do not exist: an error about them would mean the config was checked only after reading data.
    args = train_args(toy, override, "run.device=cpu", f"run.out_dir={tmp_path}")
    args[2] = f"data.train_shards={tmp_path / 'no_shards'}"
    assert_one_line(*run(capsys, *args), "train", fragment)


def test_train_data_that_cannot_train(capsys, toy, tmp_path):
    code, err = run(capsys, *train_args(toy, "data.loader.streams=[text,video,depth]", f"run.out_dir={tmp_path / 'a'}"))
    assert_one_line(code, err, "train", "stream(s) ['depth'] are not in the shards")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, err = run(capsys, *train_args(toy, f"data.train_annotations={empty}", f"run.out_dir={tmp_path / 'b'}"))
    assert_one_line(code, err, "train", "empty.jsonl holds no queries")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"qid": 1, "query": "q", "duration": 10, "vid": "not_in_the_shards",
                                     "relevant_windows": [[0, 2]], "relevant_clip_ids": [0],
                                     "saliency_scores": [[1, 1, 1]]}) + "\n")
    code, err = run(capsys, *train_args(toy, f"data.train_annotations={elsewhere}", f"run.out_dir={tmp_path / 'c'}"))
    assert_one_line(code, err, "train", "no items", "elsewhere.jsonl")
    assert_one_line(*run(capsys, "train", tmp_path / "missing.yaml"), "train", "neither a file nor a shipped config")


def test_inspect_missing_path_and_damaged_shards(capsys, toy, tmp_path):
    assert_one_line(*run(capsys, "inspect", tmp_path / "nope"), "inspect", "does not exist")
    shard = toy.shards / "shards" / "shard-000000.tar"
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code = main(["inspect", str(cut)])
    out = capsys.readouterr().out
    assert code == 1 and "PROBLEM: cut.tar" in out  # reported, not a crash
    bad_meta = tmp_path / "bad_meta.tar"
    with tarfile.open(shard) as source, tarfile.open(bad_meta, "w") as target:
        for member in source:
            data = b"{not json" if member.name.endswith("meta.json") else source.extractfile(member).read()
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    code = main(["inspect", str(bad_meta)])
    assert code == 1 and "meta.json is damaged" in capsys.readouterr().out


def test_viz_masks_missing_pickled_and_out_of_range(capsys, tmp_path):
    assert_one_line(*run(capsys, "viz-masks", tmp_path / "nope.npz", "--out", tmp_path), "viz-masks", "does not exist")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, masks=np.array([{"evil": 1}], dtype=object), segment_names=np.array(["a"]),
             segment_bounds=np.zeros((1, 2), int), padding=np.zeros((1, 2), bool))
    assert_one_line(*run(capsys, "viz-masks", pickled, "--out", tmp_path), "viz-masks", "without unpickling")
    good = tmp_path / "good.npz"
    np.savez(good, masks=np.ones((1, 1, 3, 3), np.float32), segment_names=np.array(["video"]),
             segment_bounds=np.array([[0, 3]]), padding=np.zeros((1, 3), bool))
    assert_one_line(*run(capsys, "viz-masks", good, "--out", tmp_path, "--sample", "4"), "viz-masks",
                    "--sample 4 is out of range")


def test_import_h5_not_hdf5_and_an_absurd_declared_size(capsys, tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    assert_one_line(*run(capsys, "import-h5", fake, "--out", tmp_path / "o1", "--fps", "5"), "import-h5",
                    "not a readable HDF5 file")
    huge = tmp_path / "huge.h5"
    with h5py.File(huge, "w") as h5:
        h5.create_dataset("movie", shape=(2**30, 512), dtype="float32", chunks=(1024, 512))  # stores nothing
    assert huge.stat().st_size < 100_000
    assert_one_line(*run(capsys, "import-h5", huge, "--out", tmp_path / "o2", "--fps", "5"), "import-h5",
                    "dataset 'movie' declares shape", "2048.0 GiB")


@pytest.mark.parametrize("args, command, fragment", [
    (["export-h5", "/nonexistent/out", "--out", "/dev/null"], "export-h5", "not a lamflow output directory"),
    (["extract", "/nonexistent/video.mp4", "--out", "/nonexistent/out"], "extract", "does not exist"),
    (["configs", "show", "no_such_config"], "configs", "neither a file nor a shipped config"),
    (["predict", "/nonexistent/ckpt.pt", "--out", "/dev/null"], "predict", "/nonexistent/ckpt.pt"),
])
def test_missing_inputs_of_other_commands(capsys, args, command, fragment):
    assert_one_line(*run(capsys, *args), command, fragment)


def torchrun_train(toy, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lamflow",
         *train_args(toy, f"run.out_dir={tmp_path / 'run'}", "run.device=cpu", *overrides)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def lamflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lamflow train: error:")]


def no_traceback_of_a_rank(stderr: str) -> bool:
    """The one traceback is torchrun's own report that a worker failed (ChildFailedError)."""
    return stderr.count("Traceback (most recent call last)") == 1 and "ChildFailedError" in stderr


def test_under_torchrun_an_error_of_every_rank_is_printed_once(toy, tmp_path):
    result = torchrun_train(toy, tmp_path, "data.loader.streams=[text,video,depth]")
    assert result.returncode != 0
    (line,) = lamflow_lines(result.stderr)
    assert line.startswith(("lamflow train: error: rank 0: ", "lamflow train: error: rank 1: ")) and "['depth']" in line
    assert no_traceback_of_a_rank(result.stderr)


def test_under_torchrun_an_error_of_rank_1_alone_is_printed_by_rank_1_and_the_others_stop_quietly(tmp_path):
    # Validation deals one shard per rank (vid002's to rank 0, vid003's to rank 1); the query of vid003 names a
    # text its sample does not hold, so only rank 1 fails, while rank 0 waits for it in a collective.
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=4, val_videos=2, per_shard=1)
    val = [json.loads(line) for line in toy.val_annotations.read_text().splitlines()]
    assert [q["vid"] for q in val] == ["vid002", "vid003"]
    val[1]["qid"] = 2003
    annotations = tmp_path / "val.jsonl"
    annotations.write_text("".join(json.dumps(q) + "\n" for q in val))
    result = torchrun_train(toy, tmp_path, f"data.val_shards={toy.shards}", f"data.val_annotations={annotations}",
                            "data.eval_batch_size=1", "optim.max_steps=1")
    assert result.returncode != 0
    (line,) = lamflow_lines(result.stderr)
    assert line.startswith("lamflow train: error: rank 1: qid 2003 (vid 'vid003'): no text tokens for this query")
    # Rank 0 lost its peer in a collective: it stops without a word.
    assert no_traceback_of_a_rank(result.stderr) and "gloo" not in result.stderr.lower()


def test_a_path_the_system_cannot_write_is_one_line_too(capsys, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert_one_line(*run(capsys, "make-demo-data", "--out", blocked / "corpus", "--quick"), "make-demo-data",
                    str(blocked / "corpus"))

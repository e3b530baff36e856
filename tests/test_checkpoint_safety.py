"""Loading a checkpoint never runs anything: not pickled code (test_resume.py), and not a shell command named
in its stored config. webdataset opens a ``pipe:CMD`` shard url by running CMD in a shell; `lamflow predict`
and the mask dump reuse the stored data fields, so a stored ``pipe:`` spec is refused unless the command
line gives the field. Real trainer, real checkpoint, real webdataset pipes."""
import json

import pytest
import torch

from lamflow.cli import main
from lamflow.train.checkpoint import CheckpointError, latest_checkpoint
from lamflow.train.config import load_config
from lamflow.train.masks import checkpoint_masks
from lamflow.train.trainer import train
from contract_shards import write_toy_qvhighlights

TINY = ["model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.generator_rank=2",
        "data.loader.batch_size=2", "data.eval_batch_size=2", "run.threads=1", "run.progress=false", "run.eval_every=0",
        "optim.warmup_steps=0", "optim.max_steps=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step checkpoint whose stored data fields point at real shards."""
    root = tmp_path_factory.mktemp("run")
    toy = write_toy_qvhighlights(root / "toy", videos=4, val_videos=2, per_shard=4)
    train(load_config("demo", [f"data.train_shards={toy.shards}", f"data.val_shards={toy.shards}",
                               f"data.train_annotations={toy.train_annotations}",
                               f"data.val_annotations={toy.val_annotations}", f"run.out_dir={root / 'out'}", *TINY]))
    return latest_checkpoint(root / "out" / "checkpoints"), toy


def with_stored_val_shards(checkpoint, spec: str, out):
    """A copy of ``checkpoint`` whose stored config reads the validation shards from ``spec``: what anyone
    who can write a checkpoint file someone else loads can put there."""
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["val_shards"] = spec
    torch.save(state, out)
    return out


def test_predict_refuses_a_command_stored_in_the_checkpoint(trained, tmp_path, capsys):
    checkpoint, toy = trained
    marker = tmp_path / "the_command_ran"
    shard = toy.shards / "shards" / "shard-000000.tar"
    forged = with_stored_val_shards(checkpoint, f"pipe:touch {marker} && cat {shard}", tmp_path / "forged.pt")

    assert main(["predict", str(forged), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lamflow predict: error: checkpoint {forged} stores data.val_shards=")
    assert "would run a shell command" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "p.jsonl").exists()
    with pytest.raises(CheckpointError, match="would run a shell command"):
        checkpoint_masks(forged, tmp_path / "masks.npz")  # the other reader of stored configs: the mask dump
    assert not marker.exists()


def test_a_pipe_spec_given_on_the_command_line_is_honoured(trained, tmp_path, capsys):
    checkpoint, toy = trained
    marker = tmp_path / "the_command_ran"
    shard = toy.shards / "shards" / "shard-000000.tar"
    forged = with_stored_val_shards(checkpoint, f"pipe:touch {marker} && cat {shard}", tmp_path / "forged.pt")
    out = tmp_path / "p.jsonl"
    # The user's own command replaces the stored one: it runs, the stored one never does.
    mine = tmp_path / "my_command_ran"
    assert main(["predict", str(forged), "--out", str(out), f"data.val_shards=pipe:touch {mine} && cat {shard}"]) == 0
    assert mine.exists() and not marker.exists()
    assert sorted(json.loads(line)["qid"] for line in out.read_text().splitlines()) == [1002, 1003]

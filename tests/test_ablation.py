"""lamflow ablate: variants x seeds of one config, reused when finished, summarised with paired intervals."""
import json

import pytest
from contract_shards import write_toy_qvhighlights

from lamflow.cli import main
from lamflow.errors import ConfigError
from lamflow.train.ablation import Variant, bootstrap_interval, expand_variants, parse_axis, summarize


def test_axes_expand_to_their_product_and_vanilla_combinations_collapse_into_one_baseline():
    axes = [parse_axis("model.encoder.mask=none,multi"), parse_axis("model.encoder.combine=mul,add"),
            parse_axis("optim.lr=1e-3")]
    variants = expand_variants(axes)
    # mask=none ignores combine: one vanilla run, not two; lr is not a mask setting, so it stays in every run.
    assert [(v.name, v.baseline) for v in variants] == [
        ("vanilla,lr=1e-3", "vanilla,lr=1e-3"), ("mask=multi,combine=add,lr=1e-3", "vanilla,lr=1e-3"),
        ("mask=multi,combine=mul,lr=1e-3", "vanilla,lr=1e-3")]
    assert variants[0].overrides == ("model.encoder.mask=none", "optim.lr=1e-3")
    only_mask = expand_variants([parse_axis("model.encoder.mask=none,single,multi")])
    assert [v.name for v in only_mask] == ["vanilla", "mask=multi", "mask=single"]
    # No axis yields plain attention: the baseline is added.
    gates = expand_variants([parse_axis("model.encoder.mask_gate=none,sigmoid")])
    assert [(v.name, v.overrides) for v in gates][0] == ("vanilla", ("model.encoder.mask=none",))
    assert [v.name for v in gates[1:]] == ["mask_gate=none", "mask_gate=sigmoid"]
    with pytest.raises(ConfigError, match="must look like"):
        parse_axis("model.encoder.mask")


def test_summary_means_sds_and_paired_differences_with_a_bootstrap_interval():
    results = {"vanilla": {0: {"acc": 10.0}, 1: {"acc": 20.0}, 2: {"acc": 30.0}},
               "lam": {0: {"acc": 12.0}, 1: {"acc": 22.0}, 2: {"acc": 32.0}}}
    summary = summarize(results, expand_variants([parse_axis("model.encoder.mask=none,multi")])[:1] + [
        Variant("lam", ("model.encoder.mask=multi",), "vanilla")])
    assert summary["variants"]["vanilla"]["acc"]["mean"] == 20.0 and summary["variants"]["vanilla"]["acc"]["sd"] == 10.0
    # Paired: every seed gains exactly 2, so the interval is [2, 2] although the seeds spread by 10.
    assert summary["differences"]["lam"]["acc"] == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 3, "values": [2.0] * 3}
    low, high = bootstrap_interval([0.0, 1.0, 2.0, 3.0])
    assert 0.0 <= low < 1.5 < high <= 3.0
    assert bootstrap_interval([0.0, 1.0, 2.0, 3.0]) == (low, high)  # seeded: the same interval every time


def test_an_ablation_trains_each_variant_and_seed_once_and_reuses_finished_runs(tmp_path, capsys):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=6, val_videos=2)
    args = ["ablate", "demo", f"data.train_shards={toy.shards}", f"data.val_shards={toy.shards}",
            f"data.train_annotations={toy.train_annotations}", f"data.val_annotations={toy.val_annotations}",
            "model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.generator_rank=2",
            "data.loader.batch_size=2", "data.eval_batch_size=2", "optim.max_steps=4", "optim.warmup_steps=1",
            "run.eval_every=0", "run.checkpoint_every=0", "run.threads=1", "run.progress=false",
            "--vary", "model.encoder.mask=none,multi", "--seeds", "0,1", "--out", str(tmp_path / "abl")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("training ") == 4 and "| vanilla | 2 |" in first
    report = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert set(report["variants"]) == {"vanilla", "mask=multi"} and report["baselines"]["mask=multi"] == "vanilla"
    assert report["differences"]["mask=multi"]["MR-full-mAP"]["n"] == 2
    assert all((tmp_path / "abl" / name).is_file() for name in ("ablation.md", "ablation.html", "ablation.png"))
    assert main(args) == 0  # the same command again: nothing left to train
    assert capsys.readouterr().out.count("reusing ") == 4

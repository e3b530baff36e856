"""The main job end to end (`lamflow demo --quick`): real ffmpeg, real Dask, real torchrun, official metrics."""
import json
import math
import subprocess
import sys
import time

import pytest
from lamflow.demo.report import SECTIONS
from lamflow.train.config import load_config

from lamflow.fileio import read_jsonl

MODELS = ("lam", "vanilla")
BASELINES = ("whole-video", "random")
SEEDS = (0, 1)  # two seeds keep the test short and still exercise means, sds and paired intervals


def run_demo(out):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lamflow", "demo", "--quick", "--seeds", "0,1", "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr, time.perf_counter() - started


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    log, _ = run_demo(out)
    return out, log


def brief(out, name, seed=None):
    file = f"metrics_{name}.json" if seed is None else f"metrics_{name}_seed{seed}.json"
    return json.loads((out / "report" / file).read_text())["brief"]


def test_demo_writes_the_report_with_metrics_over_seeds_curves_and_mask_heatmaps(demo):
    out, _ = demo
    report = out / "report"
    for name in MODELS:
        for seed in SEEDS:
            assert len(brief(out, name, seed)) == 14
    for name in BASELINES:
        assert len(brief(out, name)) == 14
    assert (report / "curves.png").stat().st_size > 0
    assert sorted(p.name for p in (report / "masks").glob("layer_*.png")) == ["layer_00.png", "layer_01.png", "layer_02.png"]
    summary = (report / "summary.md").read_text()
    assert "| MR-full-mAP |" in summary and "RANDOM CLIP weights" in summary
    assert "| metric | lam (2 seeds) | vanilla (2 seeds) | whole-video | random | LAM - vanilla [95% CI] |" in summary
    assert (report / "summary.html").read_text().count("<tr>") == 15  # header + 14 metrics
    # The table says which LAM produced it (the demo config's mask settings, --quick's 150 steps).
    encoder = load_config("demo").model.encoder
    assert (f"LAM model: mask=multi, generator={encoder.generator}, combine={encoder.combine}, "
            f"mask_gate={encoder.mask_gate};") in summary and "150 steps per model" in summary
    # The report's numbers are the official evaluator's files, summarised over the seeds.
    stats = json.loads((report / "report.json").read_text())["tasks"]["qvhighlights"]["summary"]
    values = [brief(out, "lam", seed)["MR-full-mAP"] for seed in SEEDS]
    assert stats["variants"]["lam"]["MR-full-mAP"]["values"] == values
    diffs = [brief(out, "lam", s)["MR-full-mAP"] - brief(out, "vanilla", s)["MR-full-mAP"] for s in SEEDS]
    difference = stats["differences"]["lam"]["MR-full-mAP"]
    assert difference["values"] == diffs and min(diffs) <= difference["low"] <= difference["high"] <= max(diffs)


def test_demo_says_clip_weights_are_random_and_shows_every_stage(demo):
    _, log = demo
    assert "CLIP weights are RANDOM" in log
    for stage in ("1/5 corpus", "2/5 extract", "3/5 train: the LAM and the vanilla qvhighlights model x seeds 0, 1",
                  "[1/4] training lam, seed 0", "[4/4] training vanilla, seed 1", "4/5 evaluate", "5/5 report"):
        assert stage in log


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", SEEDS)
def test_trained_models_beat_trivial_baselines_by_a_clear_margin(demo, model, seed):
    out, _ = demo
    trained = brief(out, model, seed)
    best_baseline = {key: max(brief(out, b)[key] for b in BASELINES) for key in ("MR-full-mAP", "HL-min-VeryGood-mAP")}
    assert trained["MR-full-mAP"] >= best_baseline["MR-full-mAP"] + 10
    assert trained["HL-min-VeryGood-mAP"] >= best_baseline["HL-min-VeryGood-mAP"] + 5


def test_rerunning_the_demo_reuses_every_finished_stage(demo):
    out, _ = demo
    before = brief(out, "lam", 0)
    log, seconds = run_demo(out)
    assert "0 videos rendered, 16 reused" in log
    assert "0 videos extracted, 16 already done" in log
    assert log.count("reusing ") == len(MODELS) * len(SEEDS)
    assert brief(out, "lam", 0) == before
    assert seconds < 120  # no retraining: imports, evaluation and the mask dump only


def shard_files(out):
    """The extraction's files: tars by bytes and mtime (a resumed extraction must not touch them), the summaries
    it rewrites by content, less stats.json's report of the last run (which says what that run skipped, and how
    long it took)."""
    def content(path):
        if path.name == "stats.json":
            return {k: v for k, v in json.loads(path.read_text()).items() if k != "last_run"}
        return path.read_bytes(), path.stat().st_mtime_ns if path.suffix == ".tar" else None

    return {p.name: content(p) for p in sorted((out / "features").rglob("*")) if p.is_file() and p.name != ".lamflow.lock"}


def test_the_cli_offers_the_demo_tasks():
    from lamflow.commands.demo import TASKS as offered
    from lamflow.demo.tasks import TASKS

    assert offered == tuple(TASKS)


def test_captioning_demo_reuses_the_shards_and_reports_beside_the_moment_retrieval_rows(demo):
    # Last in this module: it adds captioning rows to the report the tests above read.
    out, _ = demo
    before = shard_files(out)
    result = subprocess.run([sys.executable, "-m", "lamflow", "demo", "--quick", "--task", "captioning", "--out", str(out),
                             "--seeds", "0,1", "--steps", "5", "--nproc", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "0 videos extracted, 16 already done" in log and shard_files(out) == before
    for stage in ("3/5 train: the LAM and the vanilla captioning model x seeds 0, 1", "[1/4] training lam, seed 0",
                  "[4/4] training vanilla, seed 1", "4/5 evaluate", "5/5 report"):
        assert stage in log
    val_vids = {line["vid"] for line in read_jsonl(out / "corpus" / "val_captions.jsonl")}
    report = json.loads((out / "report" / "report.json").read_text())["tasks"]["captioning"]
    metrics_dir = out / "report" / "captioning"
    for name in MODELS:
        for seed in SEEDS:
            metrics = json.loads((metrics_dir / f"metrics_{name}_seed{seed}.json").read_text())
            assert metrics["num_videos"] == len(val_vids) == 4 and math.isfinite(metrics["CIDEr"])
            # The report's rows are the evaluator's numbers of each seed's run, scoring its last step's predictions.
            assert report["scores"][name][str(seed)] == {key: metrics[key] for key in SECTIONS["captioning"].metrics}
            predictions = out / "captioning" / "runs" / name / f"seed-{seed}" / "predictions" / "val-step-00000005.jsonl"
            assert {line["vid"] for line in read_jsonl(predictions)} == val_vids
    baseline = json.loads((metrics_dir / "metrics_most-frequent-caption.json").read_text())
    assert report["scores"]["most-frequent-caption"]["0"] == {key: baseline[key] for key in SECTIONS["captioning"].metrics}
    # Over seeds: mean ± sd per model, and LAM - vanilla paired per seed with its bootstrap interval.
    difference = report["summary"]["differences"]["lam"]["CIDEr"]
    assert difference["n"] == 2 and difference["low"] <= difference["mean"] <= difference["high"]
    summary = (out / "report" / "summary.md").read_text()
    assert "| MR-full-mAP |" in summary and "| CIDEr |" in summary and "captioning_curves.png" in summary
    assert "| metric | lam (2 seeds) | vanilla (2 seeds) | most-frequent-caption | LAM - vanilla [95% CI] |" in summary
    assert set(json.loads((out / "report" / "report.json").read_text())["tasks"]) == {"qvhighlights", "captioning"}

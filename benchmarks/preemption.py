"""Preemption: seconds from SIGTERM to the torchrun process until the stop checkpoint is on disk.

torchrun forwards SIGTERM to its workers and kills them ``--shutdown-timeout`` (30 s) later; what the workers
have not saved by then is lost. This starts ``torchrun --nproc_per_node 2 -m lamflow train`` on toy shards
(tests/contract_shards.py's learnable toy; gloo on CPU, or NCCL with --device cuda), sends SIGTERM to the
torchrun process at a chosen moment and times, from the signal, the stop checkpoint's appearance (a rename:
it is complete when seen) and the exit of torchrun, ``--repeats`` times per case:

- **training**: no validation; the signal comes right after a step is logged, while the next one runs;
- **validation**: the signal comes right after the step before a validation pass is logged, i.e. while the
  pass runs (``--val-videos`` items, one per batch, ``--val-seconds`` of features each: the pass alone takes
  longer than torchrun's grace period, so an unheeded stop loses the run's work since its last checkpoint).

A stop is honoured at the next micro-batch or validation batch, so both numbers are about one batch plus the
checkpoint write. The uninterrupted validation pass is timed once for comparison.

    python benchmarks/preemption.py [--repeats 3] [--device cpu] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from contract_shards import write_toy_qvhighlights  # noqa: E402

MODEL = ["model.encoder.dim=128", "model.encoder.depth=2", "model.encoder.heads=4", "model.encoder.generator_hidden=64",
         "model.encoder.generator_rank=8"]
RUN = ["run.progress=false", "run.log_every=1", "run.checkpoint_every=0", "optim.warmup_steps=1",
       "data.loader.num_workers=0", "data.loader.batch_size=4", "data.eval_batch_size=1"]
SIGNAL_AFTER_STEP = 2  # the case's moment: right after this step is logged


def write_data(root: Path, val_videos: int, val_seconds: float) -> list[str]:
    train = write_toy_qvhighlights(root / "train", videos=32, val_videos=0, per_shard=4, duration=60.0)
    val = write_toy_qvhighlights(root / "val", videos=val_videos, val_videos=val_videos, per_shard=4, duration=val_seconds)
    return [f"data.train_shards={train.shards}", f"data.train_annotations={train.train_annotations}",
            f"data.val_shards={val.shards}", f"data.val_annotations={val.val_annotations}"]


def launch(data: list[str], out: Path, device: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lamflow.cli", "train", "qvhighlights_lam", *data, *MODEL, *RUN,
               f"run.device={device}", f"run.out_dir={out}", *extra]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [record["step"] for record in map(json.loads, filter(None, lines)) if record["split"] == "train"]


def stop_seconds(data: list[str], out: Path, device: str, *extra: str) -> dict[str, float]:
    """SIGTERM to torchrun right after step SIGNAL_AFTER_STEP is logged: seconds to the checkpoint and to exit."""
    job = launch(data, out, device, *extra)
    while SIGNAL_AFTER_STEP not in logged_steps(out):
        if job.poll() is not None:
            raise RuntimeError(f"the run ended before step {SIGNAL_AFTER_STEP}: {(out.parent / f'{out.name}.log').read_text()[-3000:]}")
        time.sleep(0.01)
    sent = time.perf_counter()
    job.send_signal(signal.SIGTERM)
    saved = None
    while job.poll() is None or saved is None:
        if saved is None and any((out / "checkpoints").glob("step-*.pt")):
            saved = time.perf_counter() - sent
        if job.poll() is not None and saved is None:
            raise RuntimeError(f"no checkpoint after the stop: {(out.parent / f'{out.name}.log').read_text()[-3000:]}")
        time.sleep(0.005)
    return {"checkpoint_s": saved, "exit_s": time.perf_counter() - sent}


def validation_pass_seconds(data: list[str], out: Path, device: str) -> float:
    """Wall seconds of one uninterrupted validation pass (the run's time with one minus without)."""
    seconds = {}
    for name, extra in (("with", ["run.eval_every=1"]), ("without", ["data.val_shards=", "data.val_annotations="])):
        started = time.perf_counter()
        job = launch(data, out / name, device, "optim.max_steps=1", *extra)
        if job.wait() != 0:
            raise RuntimeError((out / f"{name}.log").read_text()[-3000:])
        seconds[name] = time.perf_counter() - started
    return seconds["with"] - seconds["without"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--val-videos", type=int, default=1200)
    parser.add_argument("--val-seconds", type=float, default=600.0, help="seconds of features per validation video")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    cases = {
        "training": ["optim.max_steps=1000", "data.val_shards=", "data.val_annotations="],
        "validation": ["optim.max_steps=1000", f"run.eval_every={SIGNAL_AFTER_STEP}"],
    }
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = write_data(root / "data", args.val_videos, args.val_seconds)
        results = {name: [stop_seconds(data, root / f"{name}{n}", args.device, *extra) for n in range(args.repeats)]
                   for name, extra in cases.items()}
        (root / "pass").mkdir()
        pass_seconds = validation_pass_seconds(data, root / "pass", args.device)
    summary = {name: {key: {"median": statistics.median(r[key] for r in runs), "max": max(r[key] for r in runs)}
                      for key in ("checkpoint_s", "exit_s")} for name, runs in results.items()}
    report = {"device": args.device, "repeats": args.repeats, "validation_pass_s": pass_seconds, "cases": summary}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"uninterrupted validation pass: {pass_seconds:.1f} s ({args.val_videos} items, 2 ranks, {args.device})")
    for name, numbers in summary.items():
        print(f"SIGTERM during {name:10s}: checkpoint on disk after {numbers['checkpoint_s']['median']:.2f} s "
              f"(max {numbers['checkpoint_s']['max']:.2f}), torchrun exited after {numbers['exit_s']['median']:.2f} s "
              f"(max {numbers['exit_s']['max']:.2f}) over {args.repeats} runs")


if __name__ == "__main__":
    main()

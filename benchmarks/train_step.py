"""LAM vs vanilla attention: time of one training step (forward, loss, backward, AdamW update).

The batch has QVHighlights shapes at lamflow's default extraction settings: a 150-s video at 1 fps
(150 CLIP frame tokens), 0.1-s audio hops (1500 log-mel tokens, pooled x5 by the example config), a
20-token query. The model is the one of the --config; only model.encoder.mask (none = vanilla attention, single,
multi) and, for the LAM modes, model.encoder.attention (each of --attention) change, so the ratio is the cost of
the learnable masks on that attention path. Every variant is timed in the same process, interleaved.

    python benchmarks/train_step.py                                  # default model (L=470), CPU
    python benchmarks/train_step.py --config train/configs/demo.yaml --duration 30   # demo model (L=350)
    python benchmarks/train_step.py --attention auto,eager           # auto vs the eager reference
    python benchmarks/train_step.py --cpu-time                       # 1 thread, CPU time (shared machines)
    python benchmarks/train_step.py --device cuda --batch-size 32
Target (issue 10): multi-layer LAM step time <= 1.3 x vanilla, for the demo and the default model.
`--attention eager` is what attention="auto" ran on CPU before the blocked path (for combine=mul).
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from _step_timing import CPU_TIME_HELP, DEFAULT_CONFIG, benchmark_clock, train_step_seconds

from lamflow.datasets.collate import collate_streams
from lamflow.train.config import TrainConfig, load_config
from lamflow.train.distributed import to_device
from lamflow.train.model import MultimodalLAMModel

STREAMS = ("text", "video", "audio")


def qvhighlights_batch(batch_size: int, duration: float, fps: float, audio_hop: float, dims: dict[str, int]) -> dict:
    """A collated batch (the loader's batch contract) of random features with QVHighlights shapes."""
    rng = np.random.default_rng(0)
    items = []
    for index in range(batch_size):
        video_ts = np.arange(int(duration * fps), dtype=np.float32) / fps
        audio_ts = np.arange(int(duration / audio_hop), dtype=np.float32) * audio_hop
        items.append({
            "key": f"v{index}", "sample_id": str(index), "duration": duration,
            "streams": {"text": rng.normal(size=(20, dims["text"])), "video": rng.normal(size=(len(video_ts), dims["video"])),
                        "audio": rng.normal(size=(len(audio_ts), dims["audio"]))},
            "timestamps": {"text": np.zeros(20, np.float32), "video": video_ts, "audio": audio_ts},
        })
    batch = collate_streams(items, STREAMS)
    clips = int(np.ceil(duration / 2))
    saliency = torch.zeros(batch_size, clips)
    saliency[:, 10:20] = 3.0
    batch.update({"windows": [torch.tensor([[20.0, 40.0]])] * batch_size, "saliency": saliency,
                  "saliency_padding": torch.zeros(batch_size, clips, dtype=torch.bool)})
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config whose model section is timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--duration", type=float, default=150.0, help="video seconds (QVHighlights: 150)")
    parser.add_argument("--fps", type=float, default=1.0, help="video tokens per second")
    parser.add_argument("--audio-hop", type=float, default=0.1, help="seconds per audio token")
    parser.add_argument("--dims", default="text=512,video=512,audio=64", help="feature size per stream")
    parser.add_argument("--modes", default="single,multi", help="LAM model.encoder.mask values to time (vanilla always is)")
    parser.add_argument("--attention", default="auto", help="model.encoder.attention values to time each LAM mode with")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch default)")
    parser.add_argument("--cpu-time", action="store_true", help=CPU_TIME_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = benchmark_clock(args.cpu_time)
    device = torch.device(args.device)
    dims = {name: int(size) for name, size in (part.split("=") for part in args.dims.split(","))}

    def variant_config(mode: str, attention: str) -> TrainConfig:
        overrides = [f"model.input_dims={json.dumps(dims)}", f"model.encoder.mask={mode}", f"model.encoder.attention={attention}"]
        return load_config(args.config, overrides)

    variants = {"none": variant_config("none", "auto")}
    for mode in (m for m in args.modes.split(",") if m != "none"):
        for attention in args.attention.split(","):
            variants[f"{mode}:{attention}"] = variant_config(mode, attention)
    config = variants["none"]
    batch = to_device(qvhighlights_batch(args.batch_size, args.duration, args.fps, args.audio_hop, dims), device)

    models, optimizers = {}, {}
    for name, variant in variants.items():
        torch.manual_seed(0)
        models[name] = MultimodalLAMModel(variant.model, dims, STREAMS, "qvhighlights").to(device).train()
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)

    def step(name: str) -> float:
        return train_step_seconds(models[name], optimizers[name], batch, variants[name], device, clock)

    for name in models:  # warm-up: allocator, kernels, compilation
        step(name), step(name)
    times = {name: [] for name in models}
    for _ in range(args.steps):  # interleaved, so load changes on a shared machine hit every variant alike
        for name in models:
            times[name].append(step(name))
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    # On a shared machine the fastest step is the least disturbed one: report it next to the median.
    fastest = {name: min(values) * 1000 for name, values in times.items()}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "clock": "cpu" if args.cpu_time else "wall",
        "batch_size": args.batch_size,
        "sequence_length": models["none"].embed(batch)[0].shape[1],
        "model": {**{k: getattr(config.model.encoder, k) for k in ("dim", "depth", "heads", "generator", "combine")},
                  "downsample": config.model.downsample},
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "step_ms_median": {name: round(ms, 1) for name, ms in median.items()},
        "step_ms_min": {name: round(ms, 1) for name, ms in fastest.items()},
        "ratio_vs_vanilla_median": {n: round(ms / median["none"], 3) for n, ms in median.items() if n != "none"},
        "ratio_vs_vanilla_min": {n: round(ms / fastest["none"], 3) for n, ms in fastest.items() if n != "none"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""LAM vs vanilla attention: time of one training step (forward, loss, backward, AdamW update).

The batch has QVHighlights shapes at lamflow's default extraction settings: a 150-s video at 1 fps
(150 CLIP frame tokens), 0.1-s audio hops (1500 log-mel tokens, pooled x5 by the example config), a
20-token query. The model is the one of train/configs/qvhighlights_lam.yaml; only model.mask changes
(none = vanilla attention, single, multi), so the ratio is the cost of the learnable masks.

    python benchmarks/train_step.py                      # CPU, the config's model size
    python benchmarks/train_step.py --device cuda --batch-size 32
Target: multi-layer LAM step time <= 1.5 x vanilla.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from _step_timing import DEFAULT_CONFIG, train_step_seconds

from lamflow.datasets.collate import collate_streams
from lamflow.train.config import load_config
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
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--duration", type=float, default=150.0, help="video seconds (QVHighlights: 150)")
    parser.add_argument("--fps", type=float, default=1.0, help="video tokens per second")
    parser.add_argument("--audio-hop", type=float, default=0.1, help="seconds per audio token")
    parser.add_argument("--dims", default="text=512,video=512,audio=64", help="feature size per stream")
    parser.add_argument("--modes", default="none,single,multi", help="model.mask values to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dims = {name: int(size) for name, size in (part.split("=") for part in args.dims.split(","))}
    config = load_config(args.config, [f"model.input_dims={json.dumps(dims)}"])
    batch = to_device(qvhighlights_batch(args.batch_size, args.duration, args.fps, args.audio_hop, dims), device)

    models, optimizers = {}, {}
    for mode in args.modes.split(","):
        config.model.mask = mode
        torch.manual_seed(0)
        models[mode] = MultimodalLAMModel(config.model, dims, STREAMS, "qvhighlights").to(device).train()
        optimizers[mode] = torch.optim.AdamW(models[mode].parameters(), lr=1e-4)

    def step(mode: str) -> float:
        return train_step_seconds(models[mode], optimizers[mode], batch, config, device)

    for mode in models:  # warm-up: allocator, kernels, compilation
        step(mode), step(mode)
    times = {mode: [] for mode in models}
    for _ in range(args.steps):  # interleaved, so load changes on a shared machine hit every mode alike
        for mode in models:
            times[mode].append(step(mode))
    median = {mode: statistics.median(values) * 1000 for mode, values in times.items()}
    # On a shared machine the fastest step is the least disturbed one: report it next to the median.
    fastest = {mode: min(values) * 1000 for mode, values in times.items()}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "sequence_length": next(iter(models.values())).embed(batch)[0].shape[1],
        "model": {k: getattr(config.model, k) for k in ("dim", "depth", "heads", "generator", "combine", "downsample")},
        "parameters": {mode: sum(p.numel() for p in m.parameters()) for mode, m in models.items()},
        "step_ms_median": {mode: round(ms, 1) for mode, ms in median.items()},
        "step_ms_min": {mode: round(ms, 1) for mode, ms in fastest.items()},
    }
    if "none" in median:
        result["ratio_vs_vanilla_median"] = {m: round(ms / median["none"], 3) for m, ms in median.items() if m != "none"}
        result["ratio_vs_vanilla_min"] = {m: round(ms / fastest["none"], 3) for m, ms in fastest.items() if m != "none"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

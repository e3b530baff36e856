"""LAMEncoder vs vanilla attention, whole encoder: forward (inference) or forward+backward time, side by side.

    python benchmarks/encoder.py                  # L=1024, d=512, 8 heads, depth 4, batch 2, fp32 forward
    python benchmarks/encoder.py --backward       # forward + backward of a scalar readout (a training step's
                                                  # compute, without the optimizer)
    python benchmarks/encoder.py --cpu-time       # 1 thread, CPU time: robust on a shared machine
    python benchmarks/encoder.py --json out.json

Rows: the vanilla encoder (mask="none") and, per combine x generator, the multi-layer LAM encoder on each
attention path of --attention that can run here (LAMConfig.attention values: auto, eager, flex, blocked,
lowrank-sdpa; flex has no CPU backward, lowrank-sdpa needs combine=add + generator=dynamic). Every encoder
holds the same weights (LAM generators nudged off their identity init). "previous auto" marks the path the
`auto` rule of lamflow before the blocked path chose (commit 9ed78a2): on CPU flex for inference from
L=1024 on, else eager; lowrank-sdpa for add + dynamic; on CUDA flex. The issue's CPU targets at L=1024,
batch 2: LAM forward <= 1.25x vanilla for mul, <= 1.12x for add.

Timing: --repeats interleaved rounds, each timing every row once after one warm-up call per row (flex
compiles there), so a load change on a shared machine hits all rows alike; the table gives the median and
the minimum per row and the ratios of medians (and of minima) to vanilla.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from _step_timing import CPU_TIME_HELP, benchmark_clock, write_rows_json

from lamflow.lam import LAMConfig, LAMEncoder

PATHS = ("auto", "eager", "flex", "blocked", "lowrank-sdpa")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--combines", nargs="+", choices=["mul", "add"], default=["mul", "add"])
    parser.add_argument("--generators", nargs="+", choices=["fixed", "dynamic"], default=["fixed", "dynamic"])
    parser.add_argument("--attention", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--padding", type=int, default=0, help="padded tokens at the end of the last sample")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help=CPU_TIME_HELP)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    return parser.parse_args()


def previous_auto(device: torch.device, backward: bool, length: int, combine: str, generator: str) -> str:
    """The path `attention="auto"` took before the blocked path existed (see the module docstring)."""
    if combine == "add" and generator == "dynamic":
        return "lowrank-sdpa"
    if device.type == "cuda" or (not backward and length >= 1024):
        return "flex"
    return "eager"


def can_run(path: str, device: torch.device, backward: bool, combine: str, generator: str) -> bool:
    if path == "flex":
        return not (backward and device.type == "cpu")
    return path != "lowrank-sdpa" or (combine, generator) == ("add", "dynamic")


def build_encoders(args: argparse.Namespace, device: torch.device) -> dict[str, LAMEncoder]:
    shape = dict(dim=args.dim, heads=args.heads, depth=args.depth, max_len=args.length, dropout=0.0)
    torch.manual_seed(0)
    vanilla = LAMEncoder(LAMConfig(mask="none", **shape))
    encoders = {"vanilla": vanilla}
    for combine in args.combines:
        for generator in args.generators:
            torch.manual_seed(1)
            reference = None
            for path in args.attention:
                if not can_run(path, device, args.backward, combine, generator):
                    continue
                cfg = LAMConfig(mask="multi", combine=combine, generator=generator, attention=path, **shape)
                encoder = LAMEncoder(cfg)
                if reference is None:
                    encoder.load_state_dict(vanilla.state_dict(), strict=False)
                    with torch.no_grad():  # masks that are not the identity (the speed does not depend on it)
                        for p in encoder.generators.parameters():
                            p.add_(0.02 * torch.randn_like(p))
                    reference = encoder
                else:
                    encoder.load_state_dict(reference.state_dict())
                encoders[f"{combine}-{generator}-{path}"] = encoder
    return {name: encoder.to(device).eval() for name, encoder in encoders.items()}


def make_run(encoder: LAMEncoder, x: torch.Tensor, pad: torch.Tensor | None, backward: bool) -> Callable[[], None]:
    readout = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device)

    def run() -> None:
        if backward:
            encoder.zero_grad(set_to_none=True)
            (encoder(x, pad).hidden * readout).sum().backward()
        else:
            with torch.no_grad():
                encoder(x, pad)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = benchmark_clock(args.cpu_time)
    encoders = build_encoders(args, device)
    torch.manual_seed(2)
    x = torch.randn(args.batch, args.length, args.dim, device=device)
    pad = None
    if args.padding:
        pad = torch.zeros(args.batch, args.length, dtype=torch.bool, device=device)
        pad[-1, args.length - args.padding :] = True
    runs = {name: make_run(encoder, x, pad, args.backward) for name, encoder in encoders.items()}
    for name, run in runs.items():
        run()  # warm-up: allocator, flex compilation
        print(f"  warmed up {name}", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = clock()
            run()
            times[name].append(clock() - started)

    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    fastest = {name: min(t) * 1e3 for name, t in times.items()}
    rows = []
    for name in runs:
        combine, generator, path = name.split("-", 2) if name != "vanilla" else ("", "", "")
        previous = bool(path) and path == previous_auto(device, args.backward, args.length, combine, generator)
        rows.append(dict(
            variant=name, ms_median=round(median[name], 2), ms_min=round(fastest[name], 2),
            ratio_median=round(median[name] / median["vanilla"], 3),
            ratio_min=round(fastest[name] / fastest["vanilla"], 3),
            previous_auto=previous,
        ))
    mode = "forward+backward" if args.backward else "forward (no_grad)"
    clock_name = "CPU time" if args.cpu_time else "wall time"
    print(f"LAMEncoder {mode}, {device.type} fp32, B={args.batch} L={args.length} d={args.dim} heads={args.heads} "
          f"depth={args.depth}, threads={torch.get_num_threads()}, {clock_name}, {args.repeats} rounds")
    print(f"{'variant':28} {'median ms':>10} {'min ms':>10} {'x median':>9} {'x min':>7}")
    for row in rows:
        note = "  <- previous auto" if row["previous_auto"] else ""
        print(f"{row['variant']:28} {row['ms_median']:10.1f} {row['ms_min']:10.1f} {row['ratio_median']:9.3f} "
              f"{row['ratio_min']:7.3f}{note}")
    if args.json:
        write_rows_json(args.json, args, device, rows)


if __name__ == "__main__":
    main()

"""Time and peak memory of vanilla SDPA vs LAM attention on each exact path, mul and add.

    python benchmarks/attention.py [--lengths 256 512 1024 2048] [--batch 2] [--repeats 7] [--json out.json]
    python benchmarks/attention.py --backward        # CPU: forward+backward (no flex: it has no CPU backward)
    python benchmarks/attention.py --cpu-time        # 1 thread, CPU time: robust on a shared machine

CPU: forward in fp32 under torch.no_grad (or, with --backward, forward+backward in fp32). CUDA: forward+backward
in bf16. Backward = gradients for q, k, v and the mask tensors (the generator trains through them).
Rows: vanilla-sdpa; flex-nomask (FlexAttention without score_mod: the fused kernel's own cost);
lam-{eager,flex,blocked}-{mul,add} (blocked: CPU only, the path attention="auto" takes there);
lam-lowrank-sdpa-add (dynamic generator: the fused SDPA path auto takes on CUDA for additive low-rank masks).
Timed: the attention call of lamflow.lam.attention on (B, heads, L, dim/heads) inputs, given the mask in the
form the generator hands it over (dynamic: low-rank factors, shared by the heads; fixed: dense B x 1 x L x L
logits); the generator's own per-token MLP is not included. Each length: one warm-up call per row (which
includes flex's compile), then --repeats rounds that time every row once, interleaved so that load changes
on a shared machine hit all rows alike; time = the median over rounds (the minimum is in the JSON).

Memory: "added" = the call's peak minus what was in use just before it (its working memory and output);
"peak" = added + the inputs it reads (q, k, v and the mask tensors), the ratio column compares peaks.
- CUDA: torch.cuda.max_memory_allocated.
- CPU: the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs; Linux, glibc).
  That counts every buffer, including the fused kernels' internal scratch that torch's allocator never
  sees. While memory is measured, glibc is told (mallopt) to hand every buffer over 64 KiB straight back to
  the OS when freed, instead of recycling it unseen (which would hide later calls' peaks); while time is
  measured, it recycles them as a long-running process does (mmap threshold 32 MiB, glibc's dynamic
  maximum), because a fresh mmap per buffer would charge page faults to paths with many temporaries.
"""
from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from _step_timing import CPU_TIME_HELP, benchmark_clock, write_rows_json

from lamflow.lam.attention import LAM_PATHS, compiled_flex_attention, vanilla_attention
from lamflow.lam.generator import LAMMask

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--generator", choices=["dynamic", "fixed"], default="dynamic")
    parser.add_argument("--rank", type=int, default=16, help="rank of the dynamic generator's factors")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--backward", action="store_true", help="CPU: time forward+backward (CUDA always does)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help=CPU_TIME_HELP)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    return parser.parse_args()


def cpu_memory(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) * 1024


def glibc_malloc(memory_visible: bool) -> None:
    """See the module docstring: large buffers go back to the OS at free (memory_visible) or are recycled."""
    threshold = 64 * 2**10 if memory_visible else 32 * 2**20
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, threshold)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold)
    if memory_visible:  # free heap pages recycled from the timing runs go back to the OS: reuse shows in RSS
        libc.malloc_trim(0)


def peak_memory(run: Callable[[], Any], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    glibc_malloc(memory_visible=True)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident set size
    before = cpu_memory("VmRSS")
    run()
    peak = cpu_memory("VmHWM") - before
    glibc_malloc(memory_visible=False)
    return peak


def seconds(run: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    start = clock()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def make_inputs(
    args: argparse.Namespace, length: int, device: torch.device, dtype: torch.dtype, combine: str | None, train: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LAMMask | None, list[torch.Tensor]]:
    """q, k, v and (for LAM) a mask whose values are near the identity but not equal to it."""
    head_dim = args.dim // args.heads
    q, k, v = (torch.randn(args.batch, args.heads, length, head_dim, device=device, dtype=dtype) for _ in range(3))
    leaves = [q, k, v]
    mask = None
    if combine is not None:
        if args.generator == "dynamic":
            u, w = (0.1 * torch.randn(args.batch, 1, length, args.rank, device=device, dtype=dtype) for _ in range(2))
            mask, leaves = LAMMask(combine, "none", u=u, v=w), leaves + [u, w]
        else:
            logits = 0.1 * torch.randn(args.batch, 1, length, length, device=device, dtype=dtype)
            mask, leaves = LAMMask(combine, "none", logits=logits), leaves + [logits]
    for leaf in leaves:
        leaf.requires_grad_(train)
    return q, k, v, mask, leaves


def build_run(
    kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: LAMMask | None, leaves: list[torch.Tensor],
    train: bool,
) -> Callable[[], Any]:
    def forward():
        if kind == "sdpa":
            return vanilla_attention(q, k, v, None)
        if kind == "flex-nomask":  # no score_mod: the fused kernel's own cost, to tell it apart from the mask's
            return compiled_flex_attention(q, k, v)
        return LAM_PATHS[kind](q, k, v, mask, None)

    def run():
        if not train:
            with torch.no_grad():
                return forward()
        out = forward()
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return run


def variants(device: torch.device, train: bool, generator: str) -> list[tuple[str, str, str | None]]:
    """(row name, path, combine) of every row that can run here."""
    flex = not (train and device.type == "cpu")  # FlexAttention has no CPU backward
    kinds = ["eager"] + ["flex"] * flex + ["blocked"] * (device.type == "cpu")
    rows = [("vanilla-sdpa", "sdpa", None)] + [("flex-nomask", "flex-nomask", None)] * flex
    rows += [(f"lam-{kind}-{combine}", kind, combine) for combine in ("mul", "add") for kind in kinds]
    if generator == "dynamic":
        rows.append(("lam-lowrank-sdpa-add", "lowrank-sdpa", "add"))
    return rows


def measure(args: argparse.Namespace, device: torch.device, clock: Callable[[], float]) -> list[dict]:
    train = device.type == "cuda" or args.backward
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for length in args.lengths:
        cases = {}
        for name, kind, combine in variants(device, train, args.generator):
            q, k, v, mask, leaves = make_inputs(args, length, device, dtype, combine, train)
            cases[name] = (build_run(kind, q, k, v, mask, leaves, train), leaves)
            cases[name][0]()  # warm-up; compiles flex
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, (run, _) in cases.items():
                times[name].append(seconds(run, device, clock))
        for name, (run, leaves) in cases.items():
            added = peak_memory(run, device) / 2**20
            peak = added + sum(t.nbytes for t in leaves) / 2**20
            ms, ms_min = 1e3 * statistics.median(times[name]), 1e3 * min(times[name])
            rows.append(dict(length=length, variant=name, ms=ms, ms_min=ms_min, added_mib=added, peak_mib=peak))
            print(f"  L={length:5d} {name:20s} {ms:9.2f} ms {peak:9.1f} MiB", file=sys.stderr)
        del cases
    vanilla = {r["length"]: r for r in rows if r["variant"] == "vanilla-sdpa"}
    for row in rows:
        base = vanilla[row["length"]]
        row["time_ratio"] = row["ms"] / base["ms"]
        row["time_ratio_min"] = row["ms_min"] / base["ms_min"]
        row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
    return rows


def print_table(rows: list[dict], device: torch.device, train: bool, target_length: int) -> None:
    print(f"{'L':>6} {'variant':20} {'median ms':>10} {'peak MiB':>10} {'added MiB':>10} {'x time':>8} {'x peak':>8}")
    for r in rows:
        print(
            f"{r['length']:6d} {r['variant']:20} {r['ms']:10.2f} {r['peak_mib']:10.1f} {r['added_mib']:10.1f} "
            f"{r['time_ratio']:8.2f} {r['memory_ratio']:8.2f}"
        )
    lengths = {r["length"] for r in rows}
    length = target_length if target_length in lengths else max(lengths)
    at_target = [r for r in rows if r["length"] == length and r["variant"].startswith("lam-")]
    mode = ("fwd+bwd" if train else "fwd") + (" bf16" if device.type == "cuda" else " fp32")
    ratios = ", ".join(f"{r['variant']} {r['time_ratio']:.2f}x time {r['memory_ratio']:.2f}x peak" for r in at_target)
    print(f"LAM/vanilla at L={length} ({device.type} {mode}): {ratios}")


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cpu":
        glibc_malloc(memory_visible=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = benchmark_clock(args.cpu_time)
    torch.manual_seed(0)
    rows = measure(args, device, clock)
    # The targets: CPU at L=1024 (forward), GPU at L=2048 (forward+backward).
    train = device.type == "cuda" or args.backward
    print_table(rows, device, train, target_length=2048 if device.type == "cuda" else 1024)
    if args.json:
        write_rows_json(args.json, args, device, rows)


if __name__ == "__main__":
    main()

"""The report of an ablation: ablation.json (every number), ablation.md / ablation.html (one table) and
ablation.png (the headline metrics per variant, mean with the seeds' sd)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lamflow.fileio import atomic_open, write_json_atomic
from lamflow.train.tables import Section, difference_cell, html_document, markdown_document, stats_cell

TITLE = "lamflow ablation"
def ablation_table(summary: dict[str, Any], metrics: Sequence[str]) -> list[list[str]]:
    """Header, then one row per variant: mean ± sd over seeds per metric, and for every LAM variant the paired
    difference to its vanilla baseline with its bootstrap 95% interval."""
    rows = [["variant", "seeds", *metrics]]
    for variant, stats in summary["variants"].items():
        seeds = max((s["n"] for s in stats.values()), default=0)
        cells = []
        for metric in metrics:
            diff = difference_cell(summary["differences"].get(variant, {}).get(metric))
            cells.append(stats_cell(stats.get(metric)) + (f" (Δ {diff})" if diff else ""))
        rows.append([variant, str(seeds), *cells])
    return rows


def plot_ablation(summary: dict[str, Any], metrics: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    variants = list(summary["variants"])
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = [summary["variants"][v].get(metric, {}).get("mean") for v in variants]
        means = [math.nan if m is None else m for m in means]
        sds = [summary["variants"][v].get(metric, {}).get("sd") or 0.0 for v in variants]
        ax.bar(range(len(variants)), means, yerr=sds, capsize=3,
               color=["#888" if v == summary["baselines"][v] else "#3a7" for v in variants])
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_ablation_report(out: Path, summary: dict[str, Any], metrics: Sequence[str], notes: Sequence[str],
                          info: dict[str, Any]) -> Path:
    """Write the four files into ``out``; returns ablation.md."""
    write_json_atomic(out / "ablation.json", {"info": info, **summary})
    image = plot_ablation(summary, metrics, out / "ablation.png")
    sections = [Section(None, (), ablation_table(summary, metrics))]
    with atomic_open(out / "ablation.md") as handle:
        handle.write(markdown_document(TITLE, notes, sections, [image], out))
    with atomic_open(out / "ablation.html") as handle:
        handle.write(html_document(TITLE, notes, sections, [image], out))
    return out / "ablation.md"

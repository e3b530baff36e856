"""The demo's report: one table of the official metrics for every model, training curves, mask heatmaps."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lamflow.train.run_log import read_metrics

CURVE_METRIC = "MR-full-mAP"  # the validation number plotted next to the training loss


def write_report(
    report_dir: Path,
    metrics: dict[str, dict[str, Any]],
    runs: dict[str, Path],
    mask_images: list[Path],
    info: dict[str, Any],
) -> Path:
    """Write report.json, summary.md, summary.html and curves.png into ``report_dir``; returns summary.md."""
    report_dir.mkdir(parents=True, exist_ok=True)
    briefs = {name: result["brief"] for name, result in metrics.items()}
    (report_dir / "report.json").write_text(json.dumps({"info": info, "brief": briefs}, indent=2), encoding="utf-8")
    curves = plot_curves({name: read_metrics(run / "metrics.jsonl") for name, run in runs.items()},
                         report_dir / "curves.png")
    table = metric_table(briefs)
    images = [curves, *mask_images]
    summary = report_dir / "summary.md"
    summary.write_text(markdown(table, info, images, report_dir), encoding="utf-8")
    (report_dir / "summary.html").write_text(page(table, info, images, report_dir), encoding="utf-8")
    return summary


def metric_table(briefs: dict[str, dict[str, float | None]]) -> list[list[str]]:
    """A header row, then one row per official metric: one column per model, plus LAM minus vanilla."""
    names = list(briefs)
    keys = list(next(iter(briefs.values())))
    rows = [["metric", *names, "LAM - vanilla"]]
    for key in keys:
        values = [briefs[name].get(key) for name in names]
        delta = ""
        if {"lam", "vanilla"} <= set(names) and None not in (briefs["lam"][key], briefs["vanilla"][key]):
            delta = f"{briefs['lam'][key] - briefs['vanilla'][key]:+.2f}"
        rows.append([key, *("n/a" if v is None else f"{v:.2f}" for v in values), delta])
    return rows


def plot_curves(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Training loss and the validation CURVE_METRIC against the optimizer step, one line per model."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    figure, (loss_axes, val_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in logs.items():
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val" and r.get(CURVE_METRIC) is not None]
        loss_axes.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        val_axes.plot([r["step"] for r in val], [r[CURVE_METRIC] for r in val], marker="o", label=name)
    loss_axes.set(title="training loss", xlabel="step", ylabel="loss")
    val_axes.set(title=f"validation {CURVE_METRIC}", xlabel="step", ylabel="%")
    for axes in (loss_axes, val_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _notes(info: dict[str, Any]) -> list[str]:
    weights = ("RANDOM CLIP weights (no --pretrained): video/text tokens come from an untrained network"
               if info["random_clip_weights"] else f"CLIP weights: {info['pretrained']}")
    corpus = info["corpus"]
    return [
        weights,
        f"corpus: {corpus['train_videos']} train + {corpus['val_videos']} val videos of ~{corpus['duration']} s "
        f"(seed {corpus['seed']}); CLIP model {info['clip_model']}",
        f"training: {info['train_processes']} torchrun processes per model, same data, seed and steps",
        "stage times (s): " + ", ".join(f"{k} {v}" for k, v in info["seconds"].items()),
    ]


def markdown(table: list[list[str]], info: dict[str, Any], images: list[Path], root: Path) -> str:
    header, *rows = table
    lines = ["# lamflow demo: LAM vs vanilla attention on the generated audio-visual corpus", ""]
    lines += [f"- {note}" for note in _notes(info)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"![{image.stem}]({image.relative_to(root)})" for image in images]
    return "\n".join(lines) + "\n"


def page(table: list[list[str]], info: dict[str, Any], images: list[Path], root: Path) -> str:
    header_row, *rows = table
    header = "".join(f"<th>{html.escape(h)}</th>" for h in header_row)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in _notes(info))
    figures = "".join(f'<p><img src="{html.escape(str(image.relative_to(root)))}"></p>' for image in images)
    return (
        "<!doctype html><meta charset='utf-8'><title>lamflow demo report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style>"
        f"<h1>lamflow demo: LAM vs vanilla attention</h1><ul>{notes}</ul>"
        f"<table><tr>{header}</tr>{body}</table>{figures}"
    )

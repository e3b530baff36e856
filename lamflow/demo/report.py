"""The demo's report: one table of the metrics per task for every model, training curves, mask heatmaps.

A report covers every task run into its directory: ``report.json`` keeps one section per task
(``lamflow demo`` for moment retrieval, ``lamflow demo --task captioning``), and writing one task's section
keeps the others, so the captioning rows stand beside the QVHighlights ones.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamflow.train.run_log import read_metrics


@dataclass(frozen=True)
class Section:
    title: str
    metrics: tuple[str, ...] | None  # the rows of its table; None = every key of the results' "brief"
    digits: int  # decimals shown
    curves: str  # file of its training curves
    curve_metric: str  # the validation number plotted next to the training loss (when the runs logged it)


SECTIONS = {
    "qvhighlights": Section("moment retrieval + highlight detection: official QVHighlights metrics (%)", None, 2,
                            "curves.png", "MR-full-mAP"),
    "captioning": Section("captioning: pycocoevalcap (fractions; CIDEr is CIDEr-D)",
                          ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"), 3, "captioning_curves.png", "CIDEr"),
}
REPORT = "report.json"


def brief(task: str, result: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of one model's result file that the task's table shows."""
    keys = SECTIONS[task].metrics
    return result["brief"] if keys is None else {key: result.get(key) for key in keys}


def write_report(
    report_dir: Path,
    metrics: dict[str, dict[str, Any]],
    runs: dict[str, Path],
    mask_images: list[Path],
    info: dict[str, Any],
    task: str = "qvhighlights",
) -> Path:
    """Write ``task``'s section (``metrics``: each model's result file, ``runs``: run dirs for the curves,
    ``info["seconds"]``: its stage times) into report.json beside the other tasks' sections, then
    summary.md, summary.html and the task's curves; returns summary.md."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT
    previous = json.loads(path.read_text(encoding="utf-8")).get("tasks", {}) if path.exists() else {}
    common = {name: value for name, value in info.items() if name != "seconds"}
    tasks = {**previous, task: {"brief": {name: brief(task, result) for name, result in metrics.items()},
                                "seconds": info["seconds"]}}
    path.write_text(json.dumps({"info": common, "tasks": tasks}, indent=2), encoding="utf-8")
    section = SECTIONS[task]
    plot_curves({name: read_metrics(run / "metrics.jsonl") for name, run in runs.items()},
                report_dir / section.curves, section.curve_metric)
    tables = {name: metric_table(tasks[name]["brief"], SECTIONS[name].digits) for name in SECTIONS if name in tasks}
    images = [report_dir / SECTIONS[name].curves for name in tables if (report_dir / SECTIONS[name].curves).exists()]
    images += [image for image in mask_images if image not in images]
    summary = report_dir / "summary.md"
    summary.write_text(markdown(tables, tasks, common, images, report_dir), encoding="utf-8")
    (report_dir / "summary.html").write_text(page(tables, tasks, common, images, report_dir), encoding="utf-8")
    return summary


def metric_table(briefs: dict[str, dict[str, float | None]], digits: int = 2) -> list[list[str]]:
    """A header row, then one row per metric: one column per model, plus LAM minus vanilla."""
    names = list(briefs)
    keys = list(next(iter(briefs.values())))
    rows = [["metric", *names, "LAM - vanilla"]]
    for key in keys:
        values = [briefs[name].get(key) for name in names]
        delta = ""
        if {"lam", "vanilla"} <= set(names) and None not in (briefs["lam"][key], briefs["vanilla"][key]):
            delta = f"{briefs['lam'][key] - briefs['vanilla'][key]:+.{digits}f}"
        rows.append([key, *("n/a" if v is None else f"{v:.{digits}f}" for v in values), delta])
    return rows


def plot_curves(logs: dict[str, list[dict[str, Any]]], path: Path, val_metric: str) -> Path:
    """Training loss and the validation ``val_metric`` (when logged) against the optimizer step, one line per model."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    validated = any(r["split"] == "val" and r.get(val_metric) is not None for records in logs.values() for r in records)
    figure, axes = plt.subplots(1, 2 if validated else 1, figsize=(11 if validated else 5.5, 4), squeeze=False)
    loss_axes = axes[0][0]
    for name, records in logs.items():
        train = [r for r in records if r["split"] == "train"]
        loss_axes.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        if validated:
            val = [r for r in records if r["split"] == "val" and r.get(val_metric) is not None]
            axes[0][1].plot([r["step"] for r in val], [r[val_metric] for r in val], marker="o", label=name)
    loss_axes.set(title="training loss", xlabel="step", ylabel="loss")
    if validated:
        axes[0][1].set(title=f"validation {val_metric}", xlabel="step")
    for panel in axes[0]:
        panel.grid(alpha=0.3)
        panel.legend()
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
    ]


def _stage_times(seconds: dict[str, float]) -> str:
    return "stage times (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items())


def markdown(tables: dict[str, list[list[str]]], tasks: dict[str, Any], info: dict[str, Any], images: list[Path],
             root: Path) -> str:
    lines = ["# lamflow demo: LAM vs vanilla attention on the generated audio-visual corpus", ""]
    lines += [f"- {note}" for note in _notes(info)]
    for task, (header, *rows) in tables.items():
        lines += ["", f"## {SECTIONS[task].title}", "", f"- {_stage_times(tasks[task]['seconds'])}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"![{image.stem}]({image.relative_to(root)})" for image in images]
    return "\n".join(lines) + "\n"


def page(tables: dict[str, list[list[str]]], tasks: dict[str, Any], info: dict[str, Any], images: list[Path],
         root: Path) -> str:
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in _notes(info))
    sections = ""
    for task, (header_row, *rows) in tables.items():
        header = "".join(f"<th>{html.escape(h)}</th>" for h in header_row)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        sections += (f"<h2>{html.escape(SECTIONS[task].title)}</h2><p>{html.escape(_stage_times(tasks[task]['seconds']))}"
                     f"</p><table><tr>{header}</tr>{body}</table>")
    figures = "".join(f'<p><img src="{html.escape(str(image.relative_to(root)))}"></p>' for image in images)
    return (
        "<!doctype html><meta charset='utf-8'><title>lamflow demo report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style>"
        f"<h1>lamflow demo: LAM vs vanilla attention</h1><ul>{notes}</ul>{sections}{figures}"
    )

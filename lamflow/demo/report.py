"""The demo's report: one table of the metrics per task for every model, training curves, mask heatmaps.

A report covers every task run into its directory: ``report.json`` keeps one section per task
(``lamflow demo`` for moment retrieval, ``lamflow demo --task captioning``), and writing one task's section
keeps the others, so the captioning rows stand beside the QVHighlights ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamflow.fileio import atomic_open, read_json, write_json_atomic
from lamflow.train.ablation import BASELINE, Variant, summarize
from lamflow.train.config import load_config
from lamflow.train.run_log import read_metrics
from lamflow.train.tasks.captioning import CAPTIONING
from lamflow.train.tasks.qvhighlights import QVHIGHLIGHTS
from lamflow.train.tables import Section, difference_cell, html_document, markdown_document, stats_cell

TITLE = "lamflow demo: LAM vs vanilla attention on the generated audio-visual corpus"


@dataclass(frozen=True)
class TaskReport:
    title: str
    metrics: tuple[str, ...] | None  # the rows of its table; None = every key of the results' "brief"
    digits: int  # decimals shown
    curves: str  # file of its training curves
    curve_metric: str  # the validation number plotted next to the training loss (when the runs logged it)


# The curves plot each task's first headline metric (lamflow.train.tasks); captioning's table shows the headline
# metrics, QVHighlights' every official number.
SECTIONS = {
    "qvhighlights": TaskReport("moment retrieval + highlight detection: official QVHighlights metrics (%)", None, 2,
                               "curves.png", QVHIGHLIGHTS.headline_metrics[0]),
    "captioning": TaskReport("captioning: pycocoevalcap (fractions; CIDEr is CIDEr-D)", CAPTIONING.headline_metrics, 3,
                             "captioning_curves.png", CAPTIONING.headline_metrics[0]),
}
REPORT = "report.json"


def brief(task: str, result: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of one model's result file that the task's table shows (None: a metric the evaluator
    could not compute, e.g. a length bucket without queries)."""
    keys = SECTIONS[task].metrics
    return result["brief"] if keys is None else {key: result.get(key) for key in keys}


def write_report(
    report_dir: Path,
    task: str,
    scores: dict[str, dict[int, dict[str, Any]]],
    runs: dict[str, Path],
    mask_images: list[Path],
    info: dict[str, Any],
) -> Path:
    """Write ``task``'s section into report.json beside the other tasks' sections, then summary.md,
    summary.html and the task's curves; returns summary.md.

    ``scores``: each model's (and baseline's) result file per training seed, ``runs``: one run dir per model
    for the curves (``runs["lam"]``'s config names the LAM shown), ``info["seconds"]``: the section's stage
    times. The table shows the mean ± sd over seeds and the paired per-seed difference LAM - vanilla with its
    bootstrap 95% interval."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT
    previous = read_json(path).get("tasks", {}) if path.exists() else {}
    common = {name: value for name, value in info.items() if name != "seconds"}
    briefs = {name: {seed: brief(task, result) for seed, result in by_seed.items()} for name, by_seed in scores.items()}
    variants = [Variant(name, (), BASELINE if name == "lam" else name) for name in briefs]
    tasks = {**previous, task: {"scores": {name: {str(s): b for s, b in by_seed.items()} for name, by_seed in briefs.items()},
                                "summary": summarize(briefs, variants), "seconds": info["seconds"],
                                "model": describe_lam(runs["lam"])}}
    write_json_atomic(path, {"info": common, "tasks": tasks})
    section = SECTIONS[task]
    plot_curves({name: read_metrics(run / "metrics.jsonl") for name, run in runs.items()},
                report_dir / section.curves, section.curve_metric)
    sections = [Section(SECTIONS[name].title, [*_model_line(tasks[name]), _stage_times(tasks[name]["seconds"])],
                        metric_table(tasks[name]["summary"], SECTIONS[name].digits))
                for name in SECTIONS if name in tasks]
    images = [report_dir / SECTIONS[name].curves for name in SECTIONS
              if name in tasks and (report_dir / SECTIONS[name].curves).exists()]
    images += [image for image in mask_images if image not in images]
    with atomic_open(report_dir / "summary.md") as handle:
        handle.write(markdown_document(TITLE, _notes(common), sections, images, report_dir))
    with atomic_open(report_dir / "summary.html") as handle:
        handle.write(html_document(TITLE, _notes(common), sections, images, report_dir))
    return report_dir / "summary.md"


def metric_table(summary: dict[str, Any], digits: int = 2) -> list[list[str]]:
    """A header row, then one row per metric: per model the mean ± sd over seeds, then LAM - vanilla (the
    mean paired difference with its bootstrap 95% interval)."""
    names = list(summary["variants"])
    seeds = {name: max((s["n"] for s in summary["variants"][name].values()), default=0) for name in names}
    rows = [["metric", *(f"{name} ({seeds[name]} seeds)" if seeds[name] > 1 else name for name in names),
             "LAM - vanilla [95% CI]"]]
    metrics = list(next(iter(summary["variants"].values())))
    for metric in metrics:
        rows.append([metric, *(stats_cell(summary["variants"][name].get(metric), digits) for name in names),
                     difference_cell(summary["differences"].get("lam", {}).get(metric), digits)])
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


def describe_lam(run_dir: Path) -> str:
    """Which LAM a run trained: the line the report prints above its task's table."""
    config = load_config(run_dir / "config.yaml")
    encoder = config.model.encoder
    return (f"LAM model: mask={encoder.mask}, generator={encoder.generator}, combine={encoder.combine}, "
            f"mask_gate={encoder.mask_gate}; encoder dim {encoder.dim}, depth {encoder.depth}, {encoder.heads} heads; "
            f"{config.optim.max_steps} steps per model")


def _model_line(task: dict[str, Any]) -> list[str]:
    # Sections written by a lamflow that did not record the model have no line.
    return [task["model"]] if "model" in task else []


def _notes(info: dict[str, Any]) -> list[str]:
    weights = ("RANDOM CLIP weights (no --pretrained): video/text tokens come from an untrained network"
               if info["random_clip_weights"] else f"CLIP weights: {info['pretrained']}")
    corpus = info["corpus"]
    return [
        weights,
        f"corpus: {corpus['train_videos']} train + {corpus['val_videos']} val videos of ~{corpus['duration']} s "
        f"(seed {corpus['seed']}); CLIP model {info['clip_model']}",
        f"training: {info['train_processes']} torchrun processes per model, the same data and steps for every model; "
        f"seeds {', '.join(map(str, info['seeds']))} (model init, dropout and data order)",
    ]


def _stage_times(seconds: dict[str, float]) -> str:
    return "stage times (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items())

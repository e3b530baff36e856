"""Tables of results over seeds, and the Markdown and HTML pages of the demo report and of ablations.

A cell is the mean ± sd of a metric over seeds (the value alone for one seed); a comparison cell is the
mean paired per-seed difference with its bootstrap 95% interval (see ``lamflow.train.ablation.summarize``).
A document is a title, a few notes, sections (a heading, notes and a table: a header row, then rows of
cell strings) and images whose paths are written relative to the page's folder.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class Section:
    heading: str | None
    notes: Sequence[str]
    table: Sequence[Sequence[str]]


def stats_cell(stats: dict[str, Any] | None, digits: int = 2) -> str:
    """``mean ± sd`` over seeds (``n/a`` when missing; the value alone for one seed)."""
    if stats is None or stats["mean"] is None:
        return "n/a"
    sd = "" if stats["sd"] is None else f" ± {stats['sd']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{sd}"


def difference_cell(difference: dict[str, Any] | None, digits: int = 2) -> str:
    """``+mean [low, high]``: a paired difference and its bootstrap 95% interval (the mean alone for one seed)."""
    if difference is None:
        return ""
    if difference["n"] < 2:
        return f"{difference['mean']:+.{digits}f}"
    return f"{difference['mean']:+.{digits}f} [{difference['low']:+.{digits}f}, {difference['high']:+.{digits}f}]"


def markdown_document(title: str, notes: Sequence[str], sections: Sequence[Section], images: Sequence[Path],
                      root: Path) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    for section in sections:
        header, *rows = section.table
        lines += [""] + ([f"## {section.heading}", ""] if section.heading else [])
        lines += [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"![{image.stem}]({image.relative_to(root)})" for image in images]
    return "\n".join(lines) + "\n"


def html_document(title: str, notes: Sequence[str], sections: Sequence[Section], images: Sequence[Path],
                  root: Path) -> str:
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    body = ""
    for section in sections:
        header_row, *rows = section.table
        header = "".join(f"<th>{html.escape(h)}</th>" for h in header_row)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        heading = f"<h2>{html.escape(section.heading)}</h2>" if section.heading else ""
        section_notes = "".join(f"<p>{html.escape(note)}</p>" for note in section.notes)
        body += f"{heading}{section_notes}<table><tr>{header}</tr>{cells}</table>"
    figures = "".join(f'<p><img src="{html.escape(str(image.relative_to(root)))}"></p>' for image in images)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul>{body}{figures}"
    )

"""One table, two formats: the Markdown and HTML pages of the demo report and of ablations.

A document is a title, a few notes, a table (a header row, then rows of cell strings) and images whose
paths are written relative to the page's folder.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence


def markdown_document(title: str, notes: Sequence[str], table: Sequence[Sequence[str]], images: Sequence[Path],
                      root: Path) -> str:
    header, *rows = table
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"![{image.stem}]({image.relative_to(root)})" for image in images]
    return "\n".join(lines) + "\n"


def html_document(title: str, notes: Sequence[str], table: Sequence[Sequence[str]], images: Sequence[Path],
                  root: Path) -> str:
    header_row, *rows = table
    header = "".join(f"<th>{html.escape(h)}</th>" for h in header_row)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    figures = "".join(f'<p><img src="{html.escape(str(image.relative_to(root)))}"></p>' for image in images)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul>"
        f"<table><tr>{header}</tr>{body}</table>{figures}"
    )

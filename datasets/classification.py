"""Classification over lamflow shards: one label per video, joined to shard samples by name.

Label files: csv with rows ``key,label`` (an optional ``key,label`` header row), or json ``{key: label}``.
Keys are video names (original or safe form; join rules in ``lamflow.contract.join_names``). ``class_names`` is the
sorted set of labels (numerically when every label is an integer) and items carry the index into it. Samples
without a label yield no item; the loader counts them in ``stats["samples_without_items"]``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import torch

from lamflow.errors import DataFileError
from lamflow.fileio import read_json



def _read_csv(path: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as rows:
        for number, row in enumerate(csv.reader(rows), 1):
            if not row or (number == 1 and [c.strip().lower() for c in row] == ["key", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataFileError(f"{path}:{number}: expected 'key,label', got {row!r}")
            key = row[0].strip()
            if key in labels:
                raise DataFileError(f"{path}:{number}: key {key!r} is labelled twice; keep one row per video")
            labels[key] = row[1].strip()
    return labels


def _read_json(path: Path) -> dict[str, str]:
    data = read_json(path, "label file")
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in data.values()):
        raise DataFileError(f"{path}: expected an object {{key: label}} with string or integer labels")
    return {str(key): str(label) for key, label in data.items()}


def load_labels(path: str | Path) -> dict[str, str]:
    """key -> label name from a .csv or .json label file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"label file {path} not found; pass a csv (key,label) or json ({{key: label}})")
    if path.suffix.lower() not in (".csv", ".json"):
        raise DataFileError(f"label file {path}: unknown format {path.suffix!r}; use .csv (key,label) or .json")
    labels = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path)
    if not labels:
        raise DataFileError(f"label file {path} holds no labels")
    return labels


class ClassificationTask:
    """Task adapter: one item per labelled video, ``label`` = index into ``class_names``."""

    def __init__(self, labels: str | Path):
        names = load_labels(labels)
        values = set(names.values())
        numeric = all(v.lstrip("-").isdigit() for v in values)
        self.class_names: list[str] = sorted(values, key=int if numeric else str)
        class_ids = {name: index for index, name in enumerate(self.class_names)}
        self.source = str(labels)
        self.label_of = {name: class_ids[label] for name, label in names.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def names(self) -> list[str]:
        return list(self.label_of)

    def num_items(self, name: str) -> int:
        return int(name in self.label_of)

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        yield {**sample, "sample_id": sample["key"], "label": self.label_of[name]}

    def collate(self, items: list[dict]) -> dict:
        return {"labels": torch.tensor([item["label"] for item in items], dtype=torch.long)}

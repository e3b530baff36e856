"""Classification over lamflow shards: one label per video (or image), joined to shard samples by name.

Labels come from a label file, or from the samples' own names (folder labels):

- label files: csv with rows ``key,label`` (an optional ``key,label`` header row), or json ``{key: label}``.
  Keys are sample names (original or safe form; join rules in ``lamflow.contract.join_names``).
- folder labels (``data.labels: folder``): an ImageNet-style folder ``ROOT/CLASS/IMAGE.jpg`` extracted from
  ``ROOT`` records each sample's name as ``CLASS/IMAGE``, and its label is the first component of that name,
  read from the extraction DIR's manifest (:func:`folder_labels`). No label file is needed; the splits are
  separate extractions (``train/`` and ``val/`` folders, as ImageNet ships them), and the classes are the
  training DIR's folders, so every split numbers them alike.

``class_names`` is the sorted set of labels (numerically when every label is an integer) and items carry
the index into it. Samples without a label yield no item; the loader counts them in
``stats["samples_without_items"]``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch

from lamflow.datasets.shardlist import resolve_shards
from lamflow.datasets.task import Task
from lamflow.errors import DataFileError
from lamflow.fileio import read_json

FOLDER_LABELS = "folder"  # data.labels value: each sample's label is the folder its name starts with


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


def folder_labels(shards: str | Path) -> dict[str, str]:
    """{sample key: the first component of its recorded name} of an extraction DIR of an image folder
    (``CLASS/IMAGE`` names). A name outside a class folder is a :class:`DataFileError`: a class folder itself
    was extracted instead of the folder holding them."""
    if not Path(shards).is_dir():
        raise DataFileError(f"folder labels read the sample names an extraction DIR's manifest records; {str(shards)!r} "
                            "is not a directory: pass the extraction output DIR, or use a label file")
    labels: dict[str, str] = {}
    for key, name in resolve_shards(shards).samples():
        folder, _, rest = name.partition("/")
        if not (folder and rest):
            raise DataFileError(
                f"{shards}: sample {key!r} is named {name!r}, not CLASS/IMAGE, so it has no class folder; extract "
                "the folder that holds the class folders (lamflow extract ROOT --media image), or use a label file"
            )
        labels[key] = folder
    return labels


def class_order(labels: Iterable[str]) -> list[str]:
    """The distinct labels sorted, numerically when every label is an integer (so "2" comes before "10")."""
    values = set(labels)
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int if numeric else str)


def load_labels(path: str | Path) -> dict[str, str]:
    """key -> label name from a .csv or .json label file, or the folder labels of an extraction DIR."""
    path = Path(path)
    if path.is_dir():
        return folder_labels(path)
    if not path.is_file():
        raise DataFileError(f"label file {path} not found; pass a csv (key,label) or json ({{key: label}})")
    if path.suffix.lower() not in (".csv", ".json"):
        raise DataFileError(f"label file {path}: unknown format {path.suffix!r}; use .csv (key,label) or .json")
    labels = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path)
    if not labels:
        raise DataFileError(f"label file {path} holds no labels")
    return labels


class ClassificationTask(Task):
    """Task adapter: one item per labelled sample, ``label`` = index into ``class_names``.

    ``labels``: a label file, an extraction DIR (folder labels), or {name: label}; ``class_names``: the
    classes in output order when another split defines them (default: this split's labels, sorted).
    """

    prediction_field = "key"  # predictions are {"key", "top_labels", "scores"} lines (lamflow eval classification)

    def __init__(self, labels: str | Path | Mapping[str, str], class_names: Sequence[str] | None = None,
                 source: str | None = None):
        names = dict(labels) if isinstance(labels, Mapping) else load_labels(labels)
        self.source = source or str(labels)
        self.class_names: list[str] = list(class_names) if class_names is not None else class_order(names.values())
        class_ids = {name: index for index, name in enumerate(self.class_names)}
        unknown = sorted(set(names.values()) - set(class_ids))
        if unknown:
            raise DataFileError(f"{self.source}: label(s) {unknown[:5]} are not among the {len(class_ids)} classes "
                                f"{self.class_names[:5]}{' ...' if len(class_ids) > 5 else ''}")
        self.label_of = {name: class_ids[label] for name, label in names.items()}

    @classmethod
    def from_folders(cls, shards: str | Path, classes_from: str | Path) -> "ClassificationTask":
        """Folder labels of the extraction DIR ``shards``, numbered by the class folders of ``classes_from``
        (the training DIR), so a split's class ``k`` is the model's output ``k``."""
        labels = folder_labels(shards)
        classes = set((labels if Path(classes_from) == Path(shards) else folder_labels(classes_from)).values())
        if len(classes) < 2:
            raise DataFileError(f"{classes_from}: every sample is in the folder {classes.pop()!r}, one class; extract "
                                "the folder that holds the class folders (ROOT of ROOT/CLASS/IMAGE.jpg)")
        return cls(labels, class_order(classes),
                   source=f"the class folders of {shards} (classes: those of {classes_from})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def names(self) -> list[str]:
        return list(self.label_of)

    def num_items(self, name: str) -> int:
        return int(name in self.label_of)

    def items(self, sample: dict, name: str) -> Iterator[dict]:
        yield {**sample, "sample_id": sample["key"], "label": self.label_of[name], "label_key": name}

    def collate(self, items: list[dict]) -> dict:
        """Targets, and each item's name in the label file (predictions are written under it, so they
        score against the label file whatever the shard keys are)."""
        return {"labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
                "label_keys": [item["label_key"] for item in items]}

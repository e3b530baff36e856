"""ClassificationTask, and one shard set serving classification and QVHighlights untouched."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from contract_shards import Video, write_extraction_dir

from lamflow.datasets.classification import ClassificationTask
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.qvhighlights import QVHighlightsTask
from lamflow.train.tasks.classification_eval import load_labels, ranked_accuracy
from lamflow.train.tasks.classification import classification_rows
from lamflow.train.tasks.spec import HeadFacts, PredictionContext

VIDEOS = [Video("cat.clip.1", texts=[("5", "a cat", 2)]), Video("dog-2"), Video("cat_3"), Video("no.label")]


def loaded_labels(root, task, streams=("video", "audio")):
    loader = StreamingLoader(str(root), task, LoaderConfig(streams=streams, batch_size=2, num_workers=2), mode="eval")
    pairs = {key: label for batch in loader for key, label in zip(batch["sample_ids"], batch["labels"].tolist())}
    return loader, pairs


def test_csv_labels_give_class_ids_and_unknown_keys_are_skipped_and_counted(tmp_path):
    root = write_extraction_dir(tmp_path / "x", [VIDEOS[:2], VIDEOS[2:]])
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\ncat.clip.1,cat\ndog-2,dog\ncat_3,cat\nnot_in_shards,bird\n")
    task = ClassificationTask(labels)
    assert task.class_names == ["bird", "cat", "dog"] and task.num_classes == 3
    loader, pairs = loaded_labels(root, task)
    assert pairs == {"cat_clip_1": 1, "dog-2": 2, "cat_3": 1}
    assert loader.stats["samples_without_items"] == 1  # "no.label" has no label: skipped, counted


def test_json_labels_with_integer_classes_sort_numerically(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a": 10, "b": 2, "c": 2}))
    assert ClassificationTask(labels).class_names == ["2", "10"]


@pytest.mark.parametrize("name, content, message", [
    ("l.csv", "a,cat\nb\n", "l.csv:2: expected 'key,label'"),
    ("l.csv", "a,cat\na,dog\n", "l.csv:2: key 'a' is labelled twice"),
    ("l.json", "[1, 2]", "expected an object"),
    ("l.txt", "a cat", "unknown format"),
])
def test_malformed_label_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        ClassificationTask(tmp_path / name)


def digest(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_shard_set_serves_qvhighlights_and_classification_untouched(tmp_path):
    root = write_extraction_dir(tmp_path / "x", [VIDEOS[:2], VIDEOS[2:]])
    before = digest(root)
    labels = tmp_path / "labels.csv"
    labels.write_text("cat.clip.1,cat\ndog-2,dog\n")
    annotations = tmp_path / "ann.jsonl"
    annotations.write_text(json.dumps({"qid": 5, "query": "a cat", "duration": 4, "vid": "cat.clip.1",
                                       "relevant_windows": [[0, 2]], "relevant_clip_ids": [0],
                                       "saliency_scores": [[2, 2, 2]]}) + "\n")

    _, pairs = loaded_labels(root, ClassificationTask(labels))
    retrieval = StreamingLoader(str(root), QVHighlightsTask(annotations), LoaderConfig(batch_size=2), mode="eval")
    [batch] = list(retrieval)

    assert pairs == {"cat_clip_1": 0, "dog-2": 1}  # classes ["cat", "dog"]
    assert batch["qids"] == [5] and batch["keys"] == ["cat_clip_1"]
    assert [name for name, _, _ in batch["segments"]] == ["text", "video", "audio"]
    assert digest(root) == before


def test_predictions_are_written_under_the_label_files_names_so_they_score_against_it(tmp_path):
    root = write_extraction_dir(tmp_path / "x", [VIDEOS])
    labels = tmp_path / "labels.csv"
    labels.write_text("cat.clip.1,cat\ndog-2,dog\n")  # a name with dots: its shard key is cat_clip_1
    loader = StreamingLoader(str(root), ClassificationTask(labels), LoaderConfig(streams=("video",), batch_size=4), mode="eval")
    [batch] = list(loader)
    logits = torch.tensor([[2.0, 0.0]] * len(batch["keys"]))
    rows = classification_rows(batch, {"logits": logits}, PredictionContext(loader.task, None, HeadFacts(class_names=["cat", "dog"])))
    assert sorted(row["key"] for row in rows) == ["cat.clip.1", "dog-2"]
    assert ranked_accuracy(load_labels(labels), rows)["top1"] == 50.0  # both predicted "cat": one right

"""Top-1 / top-5 accuracy from prediction lines and files, with clear errors on bad input."""
from __future__ import annotations

import json

import pytest

from lamflow.cli import main
from lamflow.train.tasks.classification_eval import evaluate_files, ranked_accuracy
from lamflow.train.tasks.scoring import EvaluationInputError


def write_predictions(path, rankings):
    path.write_text("".join(json.dumps({"key": k, "top_labels": r}) + "\n" for k, r in rankings.items()))
    return path


CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def test_ranked_accuracy_counts_label_positions():
    labels = {"v1": "cat", "v2": "dog", "v3": "ant", "v4": "3"}  # as load_labels returns them: strings
    predictions = [
        {"key": "v1", "top_labels": ["cat", "dog", "ant", "bee", "eel"]},  # top1 hit
        {"key": "v2", "top_labels": ["cat", "bee", "ant", "eel", "dog"]},  # 5th -> top5 hit only
        {"key": "v3", "top_labels": ["cat", "dog", "bee", "eel", "fox"]},  # miss
        {"key": "v4", "top_labels": [3, 1, 2, 4, 5]},  # labels compare as strings: top1 hit
    ]
    assert ranked_accuracy(labels, predictions) == {"top1": 50.0, "top5": 75.0, "num_samples": 4}


def test_ranking_shorter_than_k_is_an_error_unless_it_lists_every_class():
    labels = {"v1": "cat", "v2": "dog"}  # only 2 classes seen: 2 ranked labels are enough for top-5
    assert ranked_accuracy(labels, [{"key": "v1", "top_labels": ["cat", "dog"]},
                                    {"key": "v2", "top_labels": ["cat", "dog"]}])["top5"] == 100.0
    short = r"predictions:1: 'top_labels' lists 1 label\(s\); top-5 needs at least 2"
    with pytest.raises(EvaluationInputError, match=short):
        ranked_accuracy(labels, [{"key": "v1", "top_labels": ["cat"]}, {"key": "v2", "top_labels": ["dog", "cat"]}])


def test_missing_unknown_and_duplicate_keys_are_errors():
    labels = {"v1": "cat", "v2": "dog"}
    full = ["cat", "dog"]
    with pytest.raises(EvaluationInputError, match=r"predictions: no prediction for 1 of 2 labelled key\(s\): v2"):
        ranked_accuracy(labels, [{"key": "v1", "top_labels": full}])
    with pytest.raises(EvaluationInputError, match=r"predictions: 1 key\(s\) not in the labels: zz"):
        ranked_accuracy(labels, [{"key": k, "top_labels": full} for k in ("v1", "v2", "zz")])
    with pytest.raises(EvaluationInputError, match=r"predictions:2: duplicate key 'v1' \(first at line 1\)"):
        ranked_accuracy(labels, [{"key": "v1", "top_labels": full}] * 2)


def test_label_files_in_csv_and_json_score_the_same(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("key,label\nv1,cat\nv2,dog\n")
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"v1": "cat", "v2": "dog"}))
    preds = write_predictions(tmp_path / "pred.jsonl", {"v1": ["cat", "dog"], "v2": ["cat", "dog"]})
    expected = {"top1": 50.0, "top5": 100.0, "num_samples": 2}
    assert evaluate_files(csv_file, preds) == evaluate_files(json_file, preds) == expected


def test_bad_label_file_is_an_evaluation_error_naming_the_line(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("v1,cat\nv2,dog,extra\n")
    preds = write_predictions(tmp_path / "pred.jsonl", {"v1": ["cat"]})
    with pytest.raises(EvaluationInputError, match=r"labels.csv:2: expected 'key,label'"):
        evaluate_files(bad, preds)
    with pytest.raises(EvaluationInputError, match="not found"):
        evaluate_files(tmp_path / "missing.csv", preds)


def test_cli_round_trip(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\n" + "".join(f"v{i},{CLASSES[i % 6]}\n" for i in range(10)))
    # v0..v4 ranked correctly first; v5..v9 have the true label 6th -> top1 5/10, top5 5/10, top6 10/10.
    rankings = {}
    for i in range(10):
        truth = CLASSES[i % 6]
        others = [c for c in CLASSES if c != truth]
        rankings[f"v{i}"] = [truth] + others if i < 5 else others + [truth]
    preds = write_predictions(tmp_path / "pred.jsonl", rankings)
    out = tmp_path / "acc.json"
    code = main(["eval", "classification", "--labels", str(labels), "--pred", str(preds),
                 "--topk", "1", "5", "6", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed == json.loads(out.read_text()) == {"top1": 50.0, "top5": 50.0, "top6": 100.0, "num_samples": 10}

    preds.write_text(preds.read_text() + "{not json\n")
    assert main(["eval", "classification", "--labels", str(labels), "--pred", str(preds)]) == 2
    assert "pred.jsonl:11: not valid JSON" in capsys.readouterr().err

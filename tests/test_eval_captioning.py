"""`lamflow eval captioning` gives pycocoevalcap's own numbers for MSRVTT and JSONL references.

The golden values are computed in the test by calling pycocoevalcap directly (PTBTokenizer, Bleu, Meteor,
Rouge, Cider, as its COCOEvalCap does); the command must write the same floats. Java runs for real.
"""
from __future__ import annotations

import json
import re

import pytest

from lamflow.cli import main
from lamflow.train.tasks.captioning_eval import METRIC_KEYS, spice_models_present

MSRVTT = {
    "info": {"year": 2016},
    "videos": [
        {"video_id": "video0", "split": "train", "category": 9},
        {"video_id": "video7010", "split": "test", "category": 3},
        {"video_id": "video7011", "split": "test", "category": 1},
        {"video_id": "video7012", "split": "test", "category": 12},
        {"video_id": "video6513", "split": "validate", "category": 5},
    ],
    "sentences": [
        {"sen_id": 0, "video_id": "video0", "caption": "a car drives down a road"},
        {"sen_id": 1, "video_id": "video7010", "caption": "a man is playing a guitar on stage"},
        {"sen_id": 2, "video_id": "video7010", "caption": "A musician plays the guitar."},
        {"sen_id": 3, "video_id": "video7010", "caption": "someone performs a song with a guitar"},
        {"sen_id": 4, "video_id": "video7011", "caption": "a woman is cooking pasta in a kitchen"},
        {"sen_id": 5, "video_id": "video7011", "caption": "a lady stirs noodles in a pot"},
        {"sen_id": 6, "video_id": "video7012", "caption": "two dogs are running in the park"},
        {"sen_id": 7, "video_id": "video7012", "caption": "dogs play on the grass, chasing each other!"},
        {"sen_id": 8, "video_id": "video7012", "caption": "a pair of puppies run around outside"},
        {"sen_id": 9, "video_id": "video6513", "caption": "a news anchor reads the news"},
    ],
}
TEST_PREDICTIONS = {
    "video7010": "a man plays a guitar",
    "video7011": "a woman is cooking in the kitchen",
    "video7012": "a dog runs on the grass",
}


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_predictions(path, captions):
    return write_jsonl(path, [{"vid": vid, "caption": caption} for vid, caption in captions.items()])


def run_cli(capsys, gt, pred, *extra):
    code = main(["eval", "captioning", "--gt", str(gt), "--pred", str(pred), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pycocoevalcap_scores(references, predictions):
    """pycocoevalcap called directly, the way its COCOEvalCap.evaluate does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({vid: [{"caption": c} for c in captions] for vid, captions in references.items()})
    res = tokenizer.tokenize({vid: [{"caption": caption}] for vid, caption in predictions.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    scores = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], bleu))
    scores["METEOR"], _ = Meteor().compute_score(gts, res)
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    return scores


def test_msrvtt_test_split_scores_equal_pycocoevalcap_called_directly(tmp_path, capsys):
    gt = tmp_path / "test_videodatainfo.json"
    gt.write_text(json.dumps(MSRVTT))
    pred = write_predictions(tmp_path / "captions.jsonl", TEST_PREDICTIONS)
    out = tmp_path / "metrics" / "M.json"
    code, printed, _ = run_cli(capsys, gt, pred, "--split", "test", "--out", str(out))
    assert code == 0
    result = json.loads(printed)
    assert json.loads(out.read_text()) == result

    test_references = {
        vid: [s["caption"] for s in MSRVTT["sentences"] if s["video_id"] == vid] for vid in TEST_PREDICTIONS
    }
    expected = pycocoevalcap_scores(test_references, TEST_PREDICTIONS)
    assert {key: result[key] for key in expected} == expected  # the same floats, not approximately
    assert 0 < expected["Bleu_4"] < expected["Bleu_1"] < 1 and expected["CIDEr"] > 0
    assert result["num_videos"] == 3 and result["num_references"] == 8
    assert set(METRIC_KEYS) <= set(result) and result["versions"]["pycocoevalcap"] == "1.2"
    assert result["versions"]["java"]


def test_jsonl_references_with_identical_captions_score_one_and_spice_is_reported_unavailable(tmp_path, capsys):
    # Two videos, each with one reference equal to its prediction and no word shared with the other video:
    # BLEU-1..4 = 1 (up to pycocoevalcap's 1e-9 smoothing), METEOR = ROUGE-L = 1, and CIDEr-D = 10 (every
    # n-gram has IDF log(2/1), the TF-IDF vectors of prediction and reference coincide: cosine 1, x10).
    captions = {"clip_a": "a red square appears on a black screen", "clip_b": "two blue circles bounce while it beeps"}
    gt = write_jsonl(tmp_path / "refs.jsonl", [{"vid": vid, "caption": text} for vid, text in captions.items()])
    pred = write_predictions(tmp_path / "pred.jsonl", {vid: text.upper() + "." for vid, text in captions.items()})
    code, printed, err = run_cli(capsys, gt, pred)
    assert code == 0
    result = json.loads(printed)
    if not spice_models_present():  # SPICE would download Stanford CoreNLP: reported unavailable, with the reason
        assert result["SPICE"] is None
        assert "SPICE unavailable" in result["notes"][0] and "stanford-corenlp-3.6.0-models.jar" in result["notes"][0]
        assert "note: SPICE unavailable" in err
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"):
        assert result[key] == pytest.approx(1.0, abs=1e-8)
    assert result["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert result["ROUGE_L"] == pytest.approx(1.0)
    assert result["CIDEr"] == pytest.approx(10.0)
    assert result["num_videos"] == 2 and result["num_references"] == 2


@pytest.mark.parametrize(
    "references, predictions, extra, message",
    [
        # missing predictions
        ([{"vid": "a", "caption": "x y"}, {"vid": "b", "caption": "y z"}], ['{"vid": "a", "caption": "x"}'], (),
         r"pred.jsonl: no caption for 1 of 2 ground-truth video\(s\): b;"),
        # predictions for unknown videos
        ([{"vid": "a", "caption": "x y"}], ['{"vid": "a", "caption": "x"}', '{"vid": "zz", "caption": "x"}'], (),
         r"pred.jsonl: 1 vid\(s\) not in the ground truth being scored: zz"),
        # empty captions, on either side
        ([{"vid": "a", "caption": "x y"}], ['{"vid": "a", "caption": "  "}'], (),
         r"pred.jsonl:1: 'caption' must be a non-empty caption"),
        ([{"vid": "a", "caption": ""}], ['{"vid": "a", "caption": "x"}'], (),
         r"refs.jsonl:1: 'caption' must be a non-empty caption"),
        # malformed files
        ([{"vid": "a", "caption": "x y"}], ['{"vid": "a", "caption": "x"}', '{"vid": "a",'], (),
         r"pred.jsonl:2: not valid JSON"),
        ([{"vid": "a", "caption": "x y"}], ['{"vid": "a", "caption": "x"}', '{"vid": "a", "caption": "y"}'], (),
         r"pred.jsonl:2: duplicate vid 'a' \(first at line 1\); write one caption per vid"),
        ([{"video": "a", "caption": "x y"}], ['{"vid": "a", "caption": "x"}'], (),
         r"refs.jsonl:1: 'vid' must be a non-empty string"),
        ([{"vid": "a", "caption": "x y"}], ['{"vid": "a", "caption": "x"}'], ("--split", "test"),
         r"refs.jsonl: a JSONL caption file has no splits"),
    ],
)
def test_unscorable_inputs_are_one_line_errors(tmp_path, capsys, references, predictions, extra, message):
    gt = write_jsonl(tmp_path / "refs.jsonl", references)
    pred = write_jsonl(tmp_path / "pred.jsonl", predictions)
    code, printed, err = run_cli(capsys, gt, pred, *extra)
    assert code == 2 and printed == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("lamflow eval captioning: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "document, extra, message",
    [
        ({"videos": MSRVTT["videos"]}, (), "expected an MSRVTT videodatainfo object with lists 'videos' and"),
        ({**MSRVTT, "sentences": MSRVTT["sentences"] + [{"video_id": "video99", "caption": "x"}]}, (),
         r"sentences\[10\]: video_id 'video99' is not in 'videos'"),
        (MSRVTT, ("--split", "val"), r"no video has split 'val'; the file's splits are \['test', 'train', 'valid"),
        # Predictions for the test videos scored against train: they belong to another split.
        (MSRVTT, ("--split", "train"), r"3 vid\(s\) not in the ground truth being scored: .*; they belong to split test: pass that --split"),
    ],
)
def test_msrvtt_file_errors(tmp_path, capsys, document, extra, message):
    gt = tmp_path / "train_val_videodatainfo.json"
    gt.write_text(json.dumps(document))
    pred = write_predictions(tmp_path / "pred.jsonl", TEST_PREDICTIONS)
    code, _, err = run_cli(capsys, gt, pred, *extra)
    assert code == 2
    assert re.search(message, err), err


def test_a_caption_without_words_after_ptb_tokenisation_is_an_error(tmp_path, capsys):
    gt = write_jsonl(tmp_path / "refs.jsonl", [{"vid": "v", "caption": "a cat sleeps"}])
    pred = write_predictions(tmp_path / "pred.jsonl", {"v": "..."})
    code, _, err = run_cli(capsys, gt, pred)
    assert code == 2
    assert "predicted captions of 1 video(s) have no word left after PTB tokenisation (it removes punctuation): v" in err


def test_without_java_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    gt = write_jsonl(tmp_path / "refs.jsonl", [{"vid": "v", "caption": "a cat sleeps"}])
    pred = write_predictions(tmp_path / "pred.jsonl", {"v": "a cat"})
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without java
    code, _, err = run_cli(capsys, gt, pred)
    assert code == 2
    assert "no working Java runtime" in err and "default-jre-headless" in err

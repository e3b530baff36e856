"""What every evaluator shares (train/tasks/scoring.py): one prediction per key, the numbers' form, temporal IoU."""
from __future__ import annotations

import numpy as np
import pytest

from lamflow.train.tasks.scoring import (
    EvaluationInputError,
    PredictionKeys,
    as_percent,
    check_ks,
    listed,
    number_rows,
    one_prediction_per_key,
    required_field,
    temporal_iou,
)

KEYS = PredictionKeys(
    key="vid",
    prediction="caption",
    expected="ground-truth video(s)",
    truth="the ground truth",
    why_every_one="every scored video needs one",
)


def vid_of(record, where):
    return record["vid"]


def caption_of(vid, record, where):
    if not record.get("caption"):
        raise EvaluationInputError(f"{where}: empty caption")
    return record["caption"]


def predictions(records, expected, **options):
    return one_prediction_per_key(enumerate(records, start=1), expected, vid_of, caption_of, "pred.jsonl", KEYS,
                                  **options)


# --------------------------------------------------------------------------------------------------
# One prediction per key
# --------------------------------------------------------------------------------------------------


def test_one_line_per_expected_key_gives_each_key_its_value():
    records = [{"vid": "b", "caption": "a dog"}, {"vid": "a", "caption": "a cat"}]
    assert predictions(records, {"a", "b"}) == {"b": "a dog", "a": "a cat"}


def test_a_key_on_two_lines_names_both_lines_the_key_and_the_fix():
    records = [{"vid": "a", "caption": "x"}, {"vid": "b", "caption": "y"}, {"vid": "a", "caption": "z"}]
    with pytest.raises(EvaluationInputError) as error:
        predictions(records, {"a", "b"})
    assert str(error.value) == "pred.jsonl:3: duplicate vid 'a' (first at line 1); write one caption per vid"


def test_keys_the_ground_truth_lacks_are_counted_and_listed_after_the_whole_file():
    records = [{"vid": v, "caption": "x"} for v in ("a", "z2", "z1")]
    with pytest.raises(EvaluationInputError) as error:
        predictions(records, {"a"})
    assert str(error.value) == "pred.jsonl: 2 vid(s) not in the ground truth: z1, z2"


def test_a_hint_for_unknown_keys_is_appended_as_the_fix():
    with pytest.raises(EvaluationInputError, match=r"1 vid\(s\) not in the ground truth: z; they are test videos$"):
        predictions([{"vid": "z", "caption": "x"}], {"a"}, unknown_hint=lambda unknown: "they are test videos")


def test_expected_keys_without_a_line_are_counted_against_all_and_say_why():
    with pytest.raises(EvaluationInputError) as error:
        predictions([{"vid": "a", "caption": "x"}], {"a", "b", "c"})
    assert str(error.value) == (
        "pred.jsonl: no caption for 2 of 3 ground-truth video(s): b, c; every scored video needs one"
    )


def test_only_lines_of_expected_keys_are_read_for_their_value():
    # An unknown key's line is reported as unknown, not as a malformed caption.
    with pytest.raises(EvaluationInputError, match="not in the ground truth: z"):
        predictions([{"vid": "a", "caption": "x"}, {"vid": "z", "caption": ""}], {"a"})
    with pytest.raises(EvaluationInputError, match="pred.jsonl:2: empty caption"):
        predictions([{"vid": "z", "caption": "x"}, {"vid": "a", "caption": ""}], {"a"})


def test_a_duplicate_is_found_before_the_second_line_is_read():
    with pytest.raises(EvaluationInputError, match="pred.jsonl:2: duplicate vid 'a'"):
        predictions([{"vid": "a", "caption": "x"}, {"vid": "a", "caption": ""}], {"a"})


# --------------------------------------------------------------------------------------------------
# Messages and numbers
# --------------------------------------------------------------------------------------------------


def test_listed_shows_the_first_five_sorted_and_counts_the_rest():
    assert listed({3, 1, 2}) == "1, 2, 3"
    assert listed({f"v{i}" for i in range(8)}) == "v0, v1, v2, v3, v4 (and 3 more)"


def test_as_percent_rounds_to_two_decimals_like_the_official_evaluator():
    assert as_percent(1 / 3) == 33.33
    assert as_percent(2 / 3) == 66.67
    assert as_percent(1) == 100.0


@pytest.mark.parametrize("ks", [(), (0,), (1, -5), (1.5,)])
def test_k_values_must_be_positive_integers_and_the_error_names_the_option(ks):
    with pytest.raises(EvaluationInputError, match=r"--k values must be positive integers"):
        check_ks(ks, "--k")


def test_fields_are_required_by_name_and_number_rows_show_the_expected_shape():
    with pytest.raises(EvaluationInputError, match=r"gt:4: missing field 'duration' \(keys present: \['qid'\]\)"):
        required_field({"qid": 1}, "duration", "gt:4")
    assert number_rows([[0, 1.5]], 2, "relevant_windows", "gt:4", "[st, ed]").tolist() == [[0.0, 1.5]]
    assert number_rows([], 2, "relevant_windows", "gt:4", "[st, ed]").shape == (0, 2)
    for bad in ([[0, 1, 2]], [[0, float("nan")]], [[True, 1]], "0 1"):
        with pytest.raises(EvaluationInputError, match=r"gt:4: 'relevant_windows' must be a list of \[st, ed\] rows"):
            number_rows(bad, 2, "relevant_windows", "gt:4", "[st, ed]")


# --------------------------------------------------------------------------------------------------
# Temporal IoU
# --------------------------------------------------------------------------------------------------


def test_temporal_iou_of_every_window_with_every_other():
    predicted = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0]])
    truth = np.array([[5.0, 15.0], [0.0, 30.0]])
    iou = temporal_iou(predicted, truth)
    assert iou.shape == (3, 2)
    # overlap / (len_a + len_b - overlap): [0,10]~[5,15] = 5 / 15, identical windows 1, disjoint 0.
    assert iou[:, 0].tolist() == [5 / 15, 1.0, 0.0]
    assert iou[:, 1].tolist() == [10 / 30, 10 / 30, 10 / 30]


def test_a_window_written_backwards_matches_no_threshold():
    with np.errstate(invalid="ignore"):  # 0 / 0, as in the official code
        iou = temporal_iou(np.array([[10.0, 5.0], [12.0, 2.0]]), np.array([[0.0, 5.0]]))
    assert not (iou >= 0.0001).any()

"""The QVHighlights evaluator reproduces the official moment_detr numbers, checked against hand arithmetic.

Vocabulary used in the comments: for MR, a prediction list is scored per IoU threshold t in
{0.50, 0.55, ..., 0.95} (10 thresholds) as VOC AP = sum over recall steps of the interpolated
precision; for HL, clips with equal predicted score form one "group", precision is taken at the end of
each group, interpolated as the max over this and all later groups, and AP is the plain mean over the
groups that add a positive.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lamflow.cli import main
from lamflow.errors import DataFileError
from lamflow.fileio import read_jsonl
from lamflow.train.tasks.qvhighlights_eval import (
    BRIEF_KEYS,
    detection_average_precision,
    evaluate,
    evaluate_files,
    highlight_average_precision,
)
from lamflow.train.tasks.qvhighlights_input_eval import ADJUSTMENTS
from lamflow.train.tasks.scoring import EvaluationInputError
from real_data import QVHIGHLIGHTS, requires_qvhighlights

VAL_FILE = QVHIGHLIGHTS / "highlight_val_release.jsonl"
TEST_FILE = QVHIGHLIGHTS / "highlight_test_release.jsonl"
TEST_WITH_GT_FILE = QVHIGHLIGHTS / "highlight_test_with_gt.jsonl"
NO_ADJUSTMENT = {"total": 0, **{kind: 0 for kind in ADJUSTMENTS}}


def gt_record(qid, duration, windows, clip_ids=(0,), scores=((4, 4, 4),)):
    return {
        "qid": qid,
        "query": f"query {qid}",
        "duration": duration,
        "vid": f"video{qid}_0.0_{duration}.0",
        "relevant_windows": [list(w) for w in windows],
        "relevant_clip_ids": list(clip_ids),
        "saliency_scores": [list(s) for s in scores],
    }


def pred_record(qid, duration, windows, saliency=None):
    clips = math.ceil(duration / 2)
    return {
        "qid": qid,
        "pred_relevant_windows": [list(w) for w in windows],
        "pred_saliency_scores": list(saliency) if saliency is not None else [0.0] * clips,
    }


def saliency_vector(length, **clip_scores):
    """Zeros except ``c<index>=score`` entries."""
    vector = [0.0] * length
    for name, score in clip_scores.items():
        vector[int(name[1:])] = score
    return vector


def mr_brief(gt, preds):
    return {k: v for k, v in evaluate(gt, preds)["brief"].items() if k.startswith("MR-")}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------------------------------
# Every brief metric on one tiny hand-computed data set
# --------------------------------------------------------------------------------------------------


def tiny_dataset():
    gt = [
        # q1, 30 s: two short GT windows A=[0,10], B=[20,30].
        gt_record(1, 30, [(0, 10), (20, 30)], clip_ids=[0, 1, 2], scores=[(4, 3, 2), (2, 4, 1), (3, 1, 0)]),
        # q2, 60 s: one middle window (length 20): excluded from the short and long buckets.
        gt_record(2, 60, [(10, 30)], clip_ids=[5, 6], scores=[(2, 2, 2), (4, 4, 4)]),
        # q3, 60 s: one short window (length 8) and one long window (length 40).
        gt_record(3, 60, [(0, 8), (20, 60)], clip_ids=[10, 11, 12, 29], scores=[(2, 2, 3)] + [(4, 4, 4)] * 3),
    ]
    preds = [
        # Fewer than 10 windows, with a score tie (0.8) that keeps file order.
        pred_record(1, 30, [(0, 10, 0.9), (0, 10, 0.8), (20, 26, 0.8)],
                    saliency_vector(15, c1=0.9, c0=0.5, c2=0.5, c3=0.2)),
        pred_record(2, 60, [(10, 22, 0.7)], [0.3] * 30),
        pred_record(3, 60, [(20, 60, 0.9), (0, 4, 0.5)], saliency_vector(30, c10=1.0, c11=0.8, c12=0.8)),
    ]
    return gt, preds


def test_brief_holds_the_14_official_keys_in_official_order_then_the_adjusted_line_counts():
    gt, preds = tiny_dataset()
    result = evaluate(gt, preds)
    assert tuple(result["brief"]) == BRIEF_KEYS
    assert list(result) == [
        "brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood", "full", "long", "middle", "short", "adjusted_lines"
    ]
    assert result["adjusted_lines"] == NO_ADJUSTMENT


def test_moment_retrieval_brief_matches_hand_computation():
    gt, preds = tiny_dataset()
    # q1 (ranked p1=[0,10] .9, p2=[0,10] .8, p3=[20,26] .8; GT A=[0,10], B=[20,30]):
    #   p1 IoU(A)=1 -> TP and locks A; p2 only overlaps the locked A -> FP; p3 IoU(B)=6/10=0.6.
    #   t <= 0.60: TP,FP,TP -> precision 1, .5, .667 at recall .5, .5, 1 -> AP = .5*1 + .5*.667 = .8333
    #   t >= 0.65: TP,FP,FP -> AP = .5*1 = .5
    # q2 (p=[10,22] vs GT [10,30]): IoU 12/20 = 0.6 -> AP 1 for t <= .60, 0 above.
    # q3 (p1=[20,60] .9 = long GT exactly; p2=[0,4] .5 vs [0,8]: IoU 4/8 = 0.5):
    #   t = .50: TP,TP -> AP 1;  t > .50: TP,FP -> AP .5
    # full, mean over queries per t:
    #   t=.50: (.8333+1+1)/3 = .9444;  t=.55,.60: (.8333+1+.5)/3 = .7778;  t>=.65 (7 of them): (.5+0+.5)/3 = .3333
    #   mAP = (.9444 + 2*.7778 + 7*.3333)/10 = .48333
    # short bucket: q1 (both windows) mean over t = (3*.8333 + 7*.5)/10 = .6;
    #   q3 with only GT [0,8]: p1 FP, p2 TP at t=.5 -> precision 0, .5 at recall 0, 1 -> AP .5 at t=.5, else 0 -> .05
    #   short mAP = (.6 + .05)/2 = .325; q2 has no short window and is left out.
    # middle bucket: q2 alone -> 3 of 10 thresholds with AP 1 -> .3
    # long bucket: q3 alone with GT [20,60]: p1 TP, p2 FP -> AP 1 at every t.
    # R1 (first window vs its best GT): q1 IoU 1, q2 IoU .6, q3 IoU 1 -> R1@.5 = 3/3, R1@.7 = 2/3.
    assert mr_brief(gt, preds) == {
        "MR-full-R1@0.5": 100.0,
        "MR-full-R1@0.7": 66.67,
        "MR-full-mAP": 48.33,
        "MR-full-mAP@0.5": 94.44,
        "MR-full-mAP@0.75": 33.33,
        "MR-long-mAP": 100.0,
        "MR-middle-mAP": 30.0,
        "MR-short-mAP": 32.5,
    }


def test_highlight_brief_matches_hand_computation_with_three_annotators():
    gt, preds = tiny_dataset()
    # q1, 15 clips; predicted groups: {c1}=.9, {c0,c2}=.5, {c3}=.2, {11 other clips}=0 -> 1, 3, 4, 15 clips seen.
    #   annotator scores c0=(4,3,2) c1=(2,4,1) c2=(3,1,0)
    #   Fair:  a1 pos {0,1,2}: prec 1, 3/3 -> AP 1;  a2 {0,1}: prec 1, 2/3 -> (1+.6667)/2 = .8333;
    #          a3 {0}: appears in group 2 with prec 1/3 -> .3333.          Hit1: top clip c1, a1 gives 2 -> hit
    #   Good:  a1 {0,2}: group 2 prec 2/3 -> .6667;  a2 {0,1} -> .8333;  a3 no clip >= 3 -> AP 0 (official)
    #                                                                      Hit1: c1, a2 gives 4 -> hit
    #   VeryGood: a1 {0} -> .3333; a2 {1} -> group 1 prec 1 -> 1; a3 none -> 0.  Hit1: c1, a2 gives 4 -> hit
    # q2, 30 clips, all predicted scores tied: one group, precision = positives/30; argmax is clip 0 -> no hit.
    #   Fair: {5,6} -> 2/30 per annotator;  Good and VeryGood: {6} -> 1/30 per annotator.
    # q3, 30 clips; groups {c10}=1, {c11,c12}=.8, {27 others incl. c29}=0 -> 1, 3, 30 clips seen.
    #   c10=(2,2,3), c11=c12=c29=(4,4,4)
    #   Fair: every annotator {10,11,12,29}: prec 1, 1, 4/30 -> (1+1+.1333)/3 = .7111.  Hit1 c10 -> hit
    #   Good: a1,a2 {11,12,29}: prec 0, 2/3, 3/30 -> (.6667+.1)/2 = .3833; a3 as Fair .7111.  Hit1 c10 (a3=3) -> hit
    #   VeryGood: every annotator {11,12,29} -> .3833.  Hit1 c10 (no 4) -> miss
    # mAP = mean of the 9 (query, annotator) APs:
    #   Fair (1+.8333+.3333 + 3*2/30 + 3*.7111)/9 = 4.5/9 = .5
    #   Good (.6667+.8333+0 + 3/30 + 2*.3833+.7111)/9 = 3.0778/9 = .34198
    #   VeryGood (.3333+1+0 + 3/30 + 3*.3833)/9 = 2.5833/9 = .28704
    # Hit1: Fair 2/3, Good 2/3, VeryGood 1/3.
    brief = evaluate(gt, preds)["brief"]
    assert {k: v for k, v in brief.items() if k.startswith("HL-")} == {
        "HL-min-Fair-mAP": 50.0,
        "HL-min-Fair-Hit1": 66.67,
        "HL-min-Good-mAP": 34.2,
        "HL-min-Good-Hit1": 66.67,
        "HL-min-VeryGood-mAP": 28.7,
        "HL-min-VeryGood-Hit1": 33.33,
    }


def test_perfect_prediction_scores_100_on_every_brief_metric():
    # One GT window per query, one bucket each, every annotator gives 4 to the relevant clips: the GT
    # itself as prediction ranks every positive first, so every metric is 100.
    gt = [
        gt_record(1, 20, [(2, 8)], clip_ids=[1, 2, 3], scores=[(4, 4, 4)] * 3),
        gt_record(2, 40, [(10, 30)], clip_ids=[5, 6], scores=[(4, 4, 4)] * 2),
        gt_record(3, 60, [(0, 60)], clip_ids=[0, 29], scores=[(4, 4, 4)] * 2),
    ]
    preds = [
        pred_record(1, 20, [(2, 8, 1.0)], saliency_vector(10, c1=1, c2=1, c3=1)),
        pred_record(2, 40, [(10, 30, 1.0)], saliency_vector(20, c5=1, c6=1)),
        pred_record(3, 60, [(0, 60, 1.0)], saliency_vector(30, c0=1, c29=1)),
    ]
    assert evaluate(gt, preds)["brief"] == {key: 100.0 for key in BRIEF_KEYS}


# --------------------------------------------------------------------------------------------------
# Moment retrieval edge cases
# --------------------------------------------------------------------------------------------------


def test_score_ties_keep_file_order():
    gt = [gt_record(1, 30, [(0, 10), (20, 30)])]
    duplicate_first = [pred_record(1, 30, [(0, 10, 0.9), (0, 10, 0.8), (20, 26, 0.8)])]
    match_first = [pred_record(1, 30, [(0, 10, 0.9), (20, 26, 0.8), (0, 10, 0.8)])]
    # Duplicate first (see the tiny data set, q1): AP .8333 for t <= .6, .5 above -> mAP .6
    assert mr_brief(gt, duplicate_first)["MR-full-mAP"] == 60.0
    assert mr_brief(gt, duplicate_first)["MR-full-mAP@0.5"] == 83.33
    # Same windows and scores, the IoU-0.6 window first among the 0.8 ties: TP,TP,FP for t <= .6 -> AP 1;
    # TP,FP,FP above -> .5; mAP = (3*1 + 7*.5)/10 = .65
    assert mr_brief(gt, match_first)["MR-full-mAP"] == 65.0
    assert mr_brief(gt, match_first)["MR-full-mAP@0.5"] == 100.0


def test_each_gt_window_is_matched_at_most_once_and_tied_ious_visit_the_later_gt_first():
    # Overlapping GT A=[0,10], B=[2,12]. p1=[1,11] has IoU 9/11 = .818 with both; the official order
    # (np.argsort(iou)[::-1]) gives it B, the later window, so p2=[0,10] can still take A (IoU 1).
    #   t <= .80 (7 thresholds): TP,TP -> AP 1
    #   t >= .85: p1 below t -> FP, p2 takes A -> precision 0, .5 at recall 0, .5 -> AP .5*.5 = .25
    #   mAP = (7 + 3*.25)/10 = .775.  (Had p1 taken A, p2 would score IoU 8/12 with B, missing .70-.80: .625.)
    gt = [gt_record(1, 20, [(0, 10), (2, 12)])]
    preds = [pred_record(1, 20, [(1, 11, 0.9), (0, 10, 0.8)])]
    brief = mr_brief(gt, preds)
    assert brief["MR-full-mAP"] == 77.5
    assert brief["MR-full-mAP@0.75"] == 100.0


def test_only_the_first_ten_windows_are_scored():
    gt = [gt_record(1, 100, [(0, 10)])]
    misses = [(50 + i, 51 + i, 1.0 - i / 100) for i in range(9)]
    # Correct window at rank 10: precision 1/10 at recall 1 -> AP .1 at every t.
    tenth = [pred_record(1, 100, misses + [(0, 10, 0.5)])]
    assert mr_brief(gt, tenth)["MR-full-mAP"] == 10.0
    # Correct window at rank 11: never scored -> AP 0, although a later window would match.
    eleventh = [pred_record(1, 100, misses + [(60, 61, 0.6), (0, 10, 0.5)])]
    assert mr_brief(gt, eleventh)["MR-full-mAP"] == 0.0


def test_windows_past_the_video_end_are_scored_unclipped_like_the_official_evaluator():
    # 20 s video, GT [10,20]; predicted [10,30] overlaps 10 s of a 20 s union: IoU .5 (clipping to
    # [10,20] would give 1). AP 1 at t=.5 only -> mAP .1; R1 hit at .5, miss at .7.
    gt = [gt_record(1, 20, [(10, 20)])]
    preds = [pred_record(1, 20, [(10, 30, 1.0)])]
    assert mr_brief(gt, preds) == {
        "MR-full-R1@0.5": 100.0,
        "MR-full-R1@0.7": 0.0,
        "MR-full-mAP": 10.0,
        "MR-full-mAP@0.5": 100.0,
        "MR-full-mAP@0.75": 0.0,
        "MR-long-mAP": None,
        "MR-middle-mAP": None,
        "MR-short-mAP": 10.0,
    }


def test_buckets_without_any_query_report_none():
    # Only one short GT window: middle and long have no query (the official evaluator crashes here).
    gt = [gt_record(1, 20, [(0, 10)])]
    result = evaluate(gt, [pred_record(1, 20, [(0, 10, 1.0)])])
    assert result["brief"]["MR-middle-mAP"] is None and result["brief"]["MR-long-mAP"] is None
    assert result["long"]["MR-R1"]["0.5"] is None
    assert result["brief"]["MR-short-mAP"] == 100.0


def test_recall_at_one_uses_the_hull_union_like_the_official_code():
    # Predicted [3.5,58] vs GT [28.2,63.1]: intersection 29.8, union 59.6, IoU .5 in exact arithmetic.
    # The R1 formula (hull 63.1-3.5) rounds to exactly 0.5 -> hit; the mAP formula (len+len-inter)
    # rounds to 0.49999999999999994 -> miss. Both as in the official code.
    gt = [gt_record(1, 70, [(28.2, 63.1)])]
    preds = [pred_record(1, 70, [(3.5, 58.0, 1.0)])]
    brief = mr_brief(gt, preds)
    assert brief["MR-full-R1@0.5"] == 100.0
    assert brief["MR-full-mAP@0.5"] == 0.0


def test_detection_average_precision_per_threshold():
    ap = detection_average_precision(np.array([[0.0, 10.0], [20.0, 30.0]]),
                                     np.array([[0, 10, 0.9], [0, 10, 0.8], [20, 26, 0.8]], dtype=float))
    np.testing.assert_allclose(ap, [5 / 6] * 3 + [0.5] * 7)


# --------------------------------------------------------------------------------------------------
# Highlight detection edge cases
# --------------------------------------------------------------------------------------------------


def test_highlight_ap_counts_each_score_group_once():
    # Positives at ranks 1 and, tied, 2-3 (one positive + one negative): groups end at 1 and 3 clips
    # with precision 1 and 2/3. Both groups add recall -> AP = (1 + 2/3) / 2.
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert highlight_average_precision(labels, scores) == pytest.approx((1 + 2 / 3) / 2)
    # Two positives tied in one group count once: group precision 1 at recall 1 -> AP 1.
    assert highlight_average_precision(np.array([1.0, 1.0, 0.0]), np.array([0.5, 0.5, 0.1])) == 1.0
    # Interpolation: a later group with higher precision lifts an earlier one.
    # Groups: {neg}=.9 prec 0 (no positive), {pos}=.8 prec 1/2, {pos}=.7 prec 2/3 -> (2/3 + 2/3)/2
    assert highlight_average_precision(np.array([0.0, 1.0, 1.0]), np.array([0.9, 0.8, 0.7])) == pytest.approx(2 / 3)
    # All-negative labels score 0, all-positive labels 1 (official shortcut).
    assert highlight_average_precision(np.zeros(3), np.array([0.3, 0.2, 0.1])) == 0.0
    assert highlight_average_precision(np.ones(3), np.array([0.3, 0.2, 0.1])) == 1.0


def test_odd_duration_uses_floor_clips_for_gt_and_accepts_a_trailing_half_clip_score():
    # 7 s video: the official GT covers int(7/2) = 3 clips; lamflow writes ceil(7/2) = 4 scores.
    gt = [gt_record(1, 7, [(0, 7)], clip_ids=[0], scores=[(4, 4, 4)])]
    # The top score on the trailing half clip (index 3) is past the GT clips: no hit (official).
    # AP uses the first 3 scores [.5, 0, 0]: the positive clip 0 ranks first -> AP 1.
    trailing_top = [pred_record(1, 7, [(0, 7, 1.0)], [0.5, 0.0, 0.0, 0.9])]
    brief = evaluate(gt, trailing_top)["brief"]
    assert brief["HL-min-VeryGood-Hit1"] == 0.0
    assert brief["HL-min-VeryGood-mAP"] == 100.0
    # int(duration / 2) scores are accepted too.
    assert evaluate(gt, [pred_record(1, 7, [(0, 7, 1.0)], [0.5, 0.0, 0.0])])["brief"]["HL-min-Fair-Hit1"] == 100.0


def test_hit1_takes_the_first_clip_among_tied_top_scores():
    gt = [gt_record(1, 8, [(0, 8)], clip_ids=[1], scores=[(4, 4, 4)])]
    # Scores tie at the top on clips 0 and 1: np.argmax picks clip 0, which is not relevant.
    assert evaluate(gt, [pred_record(1, 8, [(0, 8, 1.0)], [1.0, 1.0, 0.0, 0.0])])["brief"]["HL-min-Fair-Hit1"] == 0.0
    assert evaluate(gt, [pred_record(1, 8, [(0, 8, 1.0)], [0.0, 1.0, 1.0, 0.0])])["brief"]["HL-min-Fair-Hit1"] == 100.0


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "windows, saliency, message",
    [
        ([], None, "no 'pred_relevant_windows'"),
        ([(0, 4)], None, r"\[st, ed, score\]"),
        ([(0, 4, 1.0)], [0.0] * 9 + [float("nan")], "finite numbers"),
        ([(0, 4, 1.0)], [], "non-empty list"),
    ],
)
def test_predictions_the_official_evaluator_crashes_on_are_errors_naming_the_record(windows, saliency, message):
    gt = [gt_record(1, 20, [(0, 10)])]
    for strict in (False, True):
        with pytest.raises(EvaluationInputError, match=message) as error:
            evaluate(gt, [pred_record(1, 20, windows, saliency)], pred_source="pred.jsonl", strict=strict)
        assert "pred.jsonl:1" in str(error.value)


@pytest.mark.parametrize(
    "windows, saliency, vid, kind, message",
    [
        ([(8, 4, 1.0)], None, None, "windows_out_of_range", "out of range"),
        ([(-1, 4, 1.0)], None, None, "windows_out_of_range", "out of range"),
        ([(21, 24, 1.0)], None, None, "windows_out_of_range", "out of range"),
        ([(0, 4, 0.1), (4, 8, 0.9)], None, None, "windows_unsorted", "not sorted by score"),
        ([(0, 4, 1.0)], [0.0] * 9, None, "saliency_padded", "9 'pred_saliency_scores' but its 20 s video has 10"),
        ([(0, 4, 1.0)], [0.0] * 11, None, "saliency_truncated", "11 'pred_saliency_scores' but its 20 s video"),
        ([(0, 4, 1.0)], None, "other", "vid_mismatch", "has vid 'other' but the ground truth says"),
    ],
)
def test_lines_the_official_evaluator_scores_are_counted_by_default_and_refused_in_strict_mode(
    windows, saliency, vid, kind, message
):
    gt = [gt_record(1, 20, [(0, 10)])]
    pred = pred_record(1, 20, windows, saliency)
    if vid is not None:
        pred["vid"] = vid
    assert evaluate(gt, [pred])["adjusted_lines"] == {**NO_ADJUSTMENT, "total": 1, kind: 1}
    with pytest.raises(EvaluationInputError, match=message) as error:
        evaluate(gt, [pred], pred_source="pred.jsonl", strict=True)
    assert "pred.jsonl:1" in str(error.value)


def test_short_saliency_is_padded_with_zeros_and_long_saliency_cut_like_the_official_evaluator():
    # 8 s video: the GT has int(8/2) = 4 clips; only clip 3 is relevant (score 4 from every annotator).
    gt = [gt_record(1, 8, [(6, 8)], clip_ids=[3], scores=[(4, 4, 4)])]
    # One score short: fitted to [.1, .2, .3, 0] (official compute_ap_from_tuple pads with 0): the positive
    # clip 3 ranks last of 4 -> AP = 1/4 for every annotator. Hit1: argmax of the written scores is clip 2 -> miss.
    short = evaluate(gt, [pred_record(1, 8, [(6, 8, 1.0)], [0.1, 0.2, 0.3])])
    assert short["adjusted_lines"] == {**NO_ADJUSTMENT, "total": 1, "saliency_padded": 1}
    assert short["brief"]["HL-min-VeryGood-mAP"] == 25.0 and short["brief"]["HL-min-VeryGood-Hit1"] == 0.0
    # Two scores too many: cut to [.1, .2, .2, .9] for AP -> clip 3 first -> AP 1. Hit1 looks at the written
    # scores (official compute_hl_hit1): argmax is clip 4, past the GT clips -> miss.
    long = evaluate(gt, [pred_record(1, 8, [(6, 8, 1.0)], [0.1, 0.2, 0.2, 0.9, 1.0, 0.5])])
    assert long["adjusted_lines"] == {**NO_ADJUSTMENT, "total": 1, "saliency_truncated": 1}
    assert long["brief"]["HL-min-VeryGood-mAP"] == 100.0 and long["brief"]["HL-min-VeryGood-Hit1"] == 0.0


def test_unsorted_windows_are_ranked_by_score_for_map_while_r1_takes_the_first_line():
    # GT [0,10]. Written order: a miss scored .2, then the exact window scored .9.
    gt = [gt_record(1, 20, [(0, 10)])]
    brief = mr_brief(gt, [pred_record(1, 20, [(15, 20, 0.2), (0, 10, 0.9)])])
    # mAP ranks the exact window first -> AP 1 everywhere; R1 (official) takes the first written window -> 0.
    assert brief["MR-full-mAP"] == 100.0
    assert brief["MR-full-R1@0.5"] == 0.0


def test_missing_and_unknown_qids_are_listed():
    gt = [gt_record(q, 20, [(0, 10)]) for q in range(1, 9)]
    preds = [pred_record(q, 20, [(0, 10, 1.0)]) for q in (1, 2)]
    with pytest.raises(EvaluationInputError, match=r"no prediction for 6 of 8 .*: 3, 4, 5, 6, 7 \(and 1 more\)"):
        evaluate(gt, preds)
    with pytest.raises(EvaluationInputError, match=r"predictions: 1 qid\(s\) not in the ground truth: 99; are the predictions for another split\?"):
        evaluate(gt, [pred_record(q, 20, [(0, 10, 1.0)]) for q in (*range(1, 9), 99)])


def test_duplicate_and_string_qids_are_errors():
    gt = [gt_record(1, 20, [(0, 10)])]
    pred = pred_record(1, 20, [(0, 10, 1.0)])
    # The official evaluator merges duplicate lines inconsistently (both lines' windows for mAP, the last
    # line for R1 and HL): refused in both modes.
    with pytest.raises(EvaluationInputError, match=r"predictions:2: duplicate qid 1 \(first at line 1\)"):
        evaluate(gt, [pred, pred])
    with pytest.raises(EvaluationInputError, match="'qid' must be an integer"):
        evaluate(gt, [{**pred, "qid": "1"}])


def test_ground_truth_problems_are_errors():
    with pytest.raises(EvaluationInputError, match="must satisfy 0 <= st < ed <= duration"):
        evaluate([gt_record(1, 20, [(5, 5)])], [])
    with pytest.raises(EvaluationInputError, match=r"integers in \[0, 10\)"):
        evaluate([gt_record(1, 20, [(0, 10)], clip_ids=[10])], [])
    with pytest.raises(EvaluationInputError, match="aligned"):
        evaluate([gt_record(1, 20, [(0, 10)], clip_ids=[0, 1])], [])


@requires_qvhighlights
def test_unlabelled_test_split_as_ground_truth_points_to_val_and_the_test_answers(tmp_path):
    pred = write_jsonl(tmp_path / "pred.jsonl", [pred_record(1, 20, [(0, 10, 1.0)])])
    with pytest.raises(
        EvaluationInputError,
        match=r"highlight_test_release.jsonl:1: .*evaluate on highlight_val_release.jsonl, .*highlight_test_with_gt",
    ):
        evaluate_files(TEST_FILE, pred)


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    gt = write_jsonl(tmp_path / "gt.jsonl", [gt_record(1, 20, [(0, 10)]), gt_record(2, 20, [(0, 10)])])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(pred_record(1, 20, [(0, 10, 1.0)])) + '\n{"qid": 2,\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: not valid JSON"):
        evaluate_files(gt, bad_json)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text(json.dumps(pred_record(1, 20, [(0, 10, 1.0)])) + "\n[1, 2]\n")
    with pytest.raises(DataFileError, match=r"list.jsonl:2: expected a JSON object, got list"):
        evaluate_files(gt, not_object)
    # Blank lines are skipped, and errors still quote the line of the file, not the record's index.
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps(pred_record(1, 20, [(0, 10, 1.0)])) + "\n\n" + json.dumps({"qid": 2}) + "\n\n")
    with pytest.raises(EvaluationInputError, match=r"blank.jsonl:3: missing field 'pred_relevant_windows'"):
        evaluate_files(gt, blank)


# --------------------------------------------------------------------------------------------------
# CLI round trip on the real validation annotations
# --------------------------------------------------------------------------------------------------


def gt_as_prediction(record):
    """Every GT window with score 1, and the mean annotator score per clip as saliency."""
    saliency = [0.0] * math.ceil(record["duration"] / 2)
    for clip, scores in zip(record["relevant_clip_ids"], record["saliency_scores"]):
        saliency[clip] = sum(scores) / 3
    windows = [[st, ed, 1.0] for st, ed in record["relevant_windows"]]
    return {"qid": record["qid"], "vid": record["vid"],
            "pred_relevant_windows": windows, "pred_saliency_scores": saliency}


def whole_video_prediction(record):
    """The trivial baseline: one window over the whole video and a constant saliency."""
    clips = math.ceil(record["duration"] / 2)
    return {"qid": record["qid"], "pred_relevant_windows": [[0, record["duration"], 1.0]],
            "pred_saliency_scores": [1.0] * clips}


def run_cli(capsys, gt_path, pred_path, *extra):
    code = main(["eval", "qvhighlights", "--gt", str(gt_path), "--pred", str(pred_path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@requires_qvhighlights
def test_whole_video_baseline_on_one_real_query_matches_hand_computation():
    record = read_jsonl(VAL_FILE)[0]
    assert record["qid"] == 2579 and record["relevant_windows"] == [[82, 150]] and record["duration"] == 150
    brief = evaluate([record], [whole_video_prediction(record)])["brief"]
    # [0,150] vs GT [82,150]: IoU 68/150 = .453 < .5 -> every MR number 0 (the query is in the long bucket).
    assert brief["MR-full-mAP"] == brief["MR-full-R1@0.5"] == brief["MR-long-mAP"] == 0.0
    # Constant saliency: one group of 75 clips -> AP = positives / 75 per annotator; Hit1 looks at clip 0,
    # which is not relevant (relevant clips are 41-74).
    # Fair (>= 2) positives among the 34 relevant clips: a1 27, a2 22, a3 34 -> (27+22+34)/3/75 = .36889
    assert [sum(scores[a] >= 2 for scores in record["saliency_scores"]) for a in range(3)] == [27, 22, 34]
    assert brief["HL-min-Fair-mAP"] == 36.89
    assert brief["HL-min-Fair-Hit1"] == 0.0


@requires_qvhighlights
def test_cli_on_real_val_file_reproduces_the_official_golden_numbers(tmp_path, capsys):
    gt_records = read_jsonl(VAL_FILE)
    assert len(gt_records) == 1550
    perfect = write_jsonl(tmp_path / "gt_as_pred.jsonl", [gt_as_prediction(r) for r in gt_records])
    baseline = write_jsonl(tmp_path / "whole_video.jsonl", [whole_video_prediction(r) for r in gt_records])

    code, out, _ = run_cli(capsys, VAL_FILE, perfect)
    assert code == 0
    # Golden values, identical to the official moment_detr evaluator run on the same file. The GT as
    # prediction is not 100 everywhere in the official definitions: 13 queries have more than 10 GT
    # windows (only 10 are scored), bucket mAPs keep every predicted window while GT windows are
    # filtered (windows of other lengths become false positives tied at score 1), and an annotator who
    # never gives a 4 scores AP 0 for VeryGood.
    assert json.loads(out)["brief"] == {
        "MR-full-R1@0.5": 100.0, "MR-full-R1@0.7": 100.0, "MR-full-mAP": 99.76, "MR-full-mAP@0.5": 99.76,
        "MR-full-mAP@0.75": 99.76, "MR-long-mAP": 92.73, "MR-middle-mAP": 89.8, "MR-short-mAP": 79.75,
        "HL-min-Fair-mAP": 97.14, "HL-min-Fair-Hit1": 100.0, "HL-min-Good-mAP": 88.27,
        "HL-min-Good-Hit1": 99.87, "HL-min-VeryGood-mAP": 60.81, "HL-min-VeryGood-Hit1": 95.68,
    }

    out_file = tmp_path / "metrics" / "whole_video.json"
    code, out, _ = run_cli(capsys, VAL_FILE, baseline, "--out", str(out_file))
    assert code == 0
    assert json.loads(out_file.read_text()) == json.loads(out)
    assert json.loads(out)["brief"] == {
        "MR-full-R1@0.5": 9.03, "MR-full-R1@0.7": 6.06, "MR-full-mAP": 5.58, "MR-full-mAP@0.5": 8.01,
        "MR-full-mAP@0.75": 5.17, "MR-long-mAP": 16.01, "MR-middle-mAP": 0.0, "MR-short-mAP": 0.0,
        "HL-min-Fair-mAP": 24.78, "HL-min-Fair-Hit1": 21.1, "HL-min-Good-mAP": 19.45,
        "HL-min-Good-Hit1": 19.74, "HL-min-VeryGood-mAP": 11.04, "HL-min-VeryGood-Hit1": 14.97,
    }


@requires_qvhighlights
def test_cli_reports_bad_predictions_on_stderr_with_exit_status_2(tmp_path, capsys):
    gt_records = read_jsonl(VAL_FILE)[:3]
    gt_path = write_jsonl(tmp_path / "gt.jsonl", gt_records)
    preds = [whole_video_prediction(r) for r in gt_records[:2]]
    pred_path = write_jsonl(tmp_path / "pred.jsonl", preds)
    code, out, err = run_cli(capsys, gt_path, pred_path)
    assert code == 2 and out == ""
    assert f"no prediction for 1 of 3 ground-truth qid(s): {gt_records[2]['qid']}" in err


# --------------------------------------------------------------------------------------------------
# A prediction file built like moment_detr's standalone_eval/sample_val_preds.jsonl
# --------------------------------------------------------------------------------------------------

SHORT_LINES = range(0, 1300, 100)  # 13 lines with one saliency score fewer than ceil(duration / 2)
LONG_LINES = range(50, 1050, 200)  # 5 lines with two scores too many


def model_like_prediction(record, index):
    """What a trained Moment-DETR writes, made deterministically from the GT: 10 windows sorted by score,
    inside the video (the first GT window shifted by up to 12 s, at rank 1 or 2, among distractors), and
    one noisy saliency score per 2-second clip -- or, on SHORT_LINES / LONG_LINES, one too few / two too many."""
    rng = np.random.default_rng(record["qid"])
    duration = record["duration"]
    first_start, first_end = record["relevant_windows"][0]
    shift = float(np.clip(rng.uniform(-12, 12), -first_start, duration - first_end))
    windows = []
    for _ in range(9):
        start = rng.uniform(0, duration - 4)
        windows.append([start, min(duration, start + rng.uniform(4, 40))])
    windows.insert(int(rng.integers(0, 2)), [first_start + shift, first_end + shift])
    scores = np.sort(rng.uniform(0.1, 0.9, 10))[::-1]
    saliency = rng.uniform(0.0, 1.0, math.ceil(duration / 2))
    for clip, annotators in zip(record["relevant_clip_ids"], record["saliency_scores"]):
        saliency[clip] += sum(annotators) / 24
    saliency = saliency.tolist()
    if index in SHORT_LINES:
        saliency = saliency[:-1]
    elif index in LONG_LINES:
        saliency = saliency + [0.0, 0.0]
    return {"qid": record["qid"], "query": record["query"], "vid": record["vid"],
            "pred_relevant_windows": [[round(st, 2), round(ed, 2), round(float(s), 4)]
                                      for (st, ed), s in zip(windows, scores)],
            "pred_saliency_scores": [round(s, 4) for s in saliency]}


def fitted_to_gt_clips(prediction, record):
    """The same prediction with its saliency padded with 0 / cut to int(duration / 2), the official fit."""
    clips = int(record["duration"] / 2)
    saliency = (prediction["pred_saliency_scores"] + [0.0] * clips)[:clips]
    return {**prediction, "pred_saliency_scores": saliency}


@requires_qvhighlights
def test_official_sample_like_predictions_on_real_val_are_scored_with_the_adjusted_lines_counted(tmp_path, capsys):
    gt_records = read_jsonl(VAL_FILE)
    predictions = [model_like_prediction(r, i) for i, r in enumerate(gt_records)]
    pred_path = write_jsonl(tmp_path / "sample_like_val_preds.jsonl", predictions)

    code, out, err = run_cli(capsys, VAL_FILE, pred_path)
    assert code == 0
    result = json.loads(out)
    assert result["adjusted_lines"] == {**NO_ADJUSTMENT, "total": 18, "saliency_padded": 13, "saliency_truncated": 5}
    assert "note: 18 prediction line(s) scored as the official evaluator does" in err
    assert "13 with pred_saliency_scores shorter" in err and "5 with pred_saliency_scores longer" in err
    assert "--strict" in err
    # Padding/cutting is what the official evaluator does to every such line: the same file with the
    # saliency lists already fitted to the GT clips scores identically (and needs no adjustment).
    fitted = evaluate(gt_records, [fitted_to_gt_clips(p, r) for p, r in zip(predictions, gt_records)])
    assert fitted["adjusted_lines"] == NO_ADJUSTMENT
    assert {k: v for k, v in fitted.items() if k != "adjusted_lines"} == {
        k: v for k, v in result.items() if k != "adjusted_lines"
    }
    # lamflow's numbers for this file, pinned against regressions (the official sample, from a trained
    # Moment-DETR, scores R1@0.5 53.94 and mAP 32.2).
    assert result["brief"] == {
        "MR-full-R1@0.5": 39.1, "MR-full-R1@0.7": 24.71, "MR-full-mAP": 31.96, "MR-full-mAP@0.5": 49.77,
        "MR-full-mAP@0.75": 29.73, "MR-long-mAP": 47.63, "MR-middle-mAP": 26.82, "MR-short-mAP": 4.25,
        "HL-min-Fair-mAP": 63.73, "HL-min-Fair-Hit1": 99.48, "HL-min-Good-mAP": 55.3,
        "HL-min-Good-Hit1": 97.74, "HL-min-VeryGood-mAP": 35.31, "HL-min-VeryGood-Hit1": 84.65,
    }

    code, out, err = run_cli(capsys, VAL_FILE, pred_path, "--strict")
    first_short = gt_records[SHORT_LINES[0]]
    clips = math.ceil(first_short["duration"] / 2)
    assert code == 2 and out == ""
    assert (f"sample_like_val_preds.jsonl:1: qid {first_short['qid']} has {clips - 1} 'pred_saliency_scores' but "
            f"its {first_short['duration']} s video has {clips} two-second clips") in err


# --------------------------------------------------------------------------------------------------
# The test split, whose answers are public (highlight_test_with_gt.jsonl, val schema)
# --------------------------------------------------------------------------------------------------


@requires_qvhighlights
def test_test_split_answers_are_scored_like_val(tmp_path, capsys):
    gt_records = read_jsonl(TEST_WITH_GT_FILE)
    questions = read_jsonl(TEST_FILE)
    assert len(gt_records) == 1542
    same_queries = [(q["qid"], q["vid"], q["query"]) for q in questions]
    assert [(r["qid"], r["vid"], r["query"]) for r in gt_records] == same_queries
    perfect = write_jsonl(tmp_path / "test_gt_as_pred.jsonl", [gt_as_prediction(r) for r in gt_records])
    code, out, _ = run_cli(capsys, TEST_WITH_GT_FILE, perfect)
    assert code == 0
    brief = json.loads(out)["brief"]
    # The GT as prediction: every top-1 window is a GT window; the top clip (highest mean score, first on
    # ties) is a Fair hit when one of its three annotators gave it >= 2.
    assert brief["MR-full-R1@0.5"] == brief["MR-full-R1@0.7"] == 100.0
    fair_hits = []
    for record in gt_records:
        means = [sum(scores) for scores in record["saliency_scores"]]
        fair_hits.append(max(record["saliency_scores"][means.index(max(means))]) >= 2)
    assert brief["HL-min-Fair-Hit1"] == round(100 * sum(fair_hits) / len(fair_hits), 2) == 99.94
    # Every query of the test split is scored: one missing prediction is refused.
    short = write_jsonl(tmp_path / "missing_one.jsonl", [gt_as_prediction(r) for r in gt_records[1:]])
    code, _, err = run_cli(capsys, TEST_WITH_GT_FILE, short)
    assert code == 2 and f"no prediction for 1 of 1542 ground-truth qid(s): {gt_records[0]['qid']}" in err

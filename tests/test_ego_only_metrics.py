"""Study `ego_only`: the frame, segmental (MS-TCN F1@k, edit) and detection (ActivityNet
AP over Ego4D MQ's tIoUs) metrics on hand-made label sequences with hand-computed answers,
and the localiser's merging and scoring."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from jobs.ego_only.segments import (
    Segment,
    detection_ap,
    edit_score,
    evaluate,
    f1_counts,
    frame_accuracy,
    levenshtein,
    localise,
    runs,
    segment_iou,
)

CLASSES = 6
KEYS = {"frame_acc", "f1_25", "f1_50", "edit", "map"} | {f"map_{k}" for k in (10, 20, 30, 40, 50)}


def probs_of(labels, conf=0.9) -> np.ndarray:
    """(..., T, 6) probabilities putting `conf` (scalar or per frame) on each label."""
    labels = np.asarray(labels)
    conf = np.broadcast_to(np.asarray(conf, dtype=float), labels.shape)[..., None]
    onehot = np.eye(CLASSES)[np.clip(labels, 0, None)]
    return onehot * conf + (1 - onehot) * (1 - conf) / (CLASSES - 1)


def test_runs_drop_background_and_unlabelled():
    labels = np.array([-1, 0, 1, 1, 0, 2, -1, -1, 2])
    assert runs(labels) == [Segment(1, 2, 4), Segment(2, 5, 6), Segment(2, 8, 9)]
    assert runs(labels, background=None)[0] == Segment(0, 1, 2)
    assert runs(np.array([], dtype=int)) == []


def test_segment_iou_counts_frames():
    assert segment_iou(Segment(1, 2, 4), Segment(1, 3, 5)) == pytest.approx(1 / 3)
    assert segment_iou(Segment(1, 0, 4), Segment(1, 4, 8)) == 0.0


def test_perfect_prediction_scores_one_everywhere():
    y = np.array(
        [
            [0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 0, 0, 3, 3, 0],
            [4, 4, 4, 0, 0, 5, 5, 5, 5, 5, 0, 0, 1, 1, 1, 1],
        ]
    )
    out = evaluate(probs_of(y), y)
    assert set(out) == KEYS
    assert out == pytest.approx(dict.fromkeys(KEYS, 1.0))


def test_one_frame_shift_by_hand():
    # A = [2, 4) shifted to [3, 5): tIoU 1/3; B = [6, 10) shifted to [7, 11): tIoU 3/5
    true = np.array([0, 0, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0])
    pred = np.array([0, 0, 0, 1, 1, 0, 0, 2, 2, 2, 2, 0])
    assert f1_counts(pred, true, 0.5) == (1, 1, 1)
    assert f1_counts(pred, true, 0.25) == (2, 0, 0)
    out = evaluate(probs_of(pred[None]), true[None])
    assert out["frame_acc"] == pytest.approx(8 / 12)
    assert out["f1_50"] == pytest.approx(0.5)  # P = R = 1/2
    assert out["f1_25"] == pytest.approx(1.0)
    assert out["edit"] == pytest.approx(1.0)  # same order of actions
    # class 1 found only up to tIoU 1/3, class 2 at every threshold
    assert [out[f"map_{k}"] for k in (10, 20, 30, 40, 50)] == pytest.approx([1, 1, 1, 0.5, 0.5])
    assert out["map"] == pytest.approx(0.8)


def test_over_segmentation_hurts_segments_not_frames():
    # one true action [2, 14) predicted as [2, 7) + a one-frame flicker of class 2 + [8, 14)
    true = np.array([0, 0] + [1] * 12 + [0, 0])
    pred = true.copy()
    pred[7] = 2
    # @0.5: [2,7) has tIoU 5/12 (fp), the flicker a wrong label (fp), [8,14) 6/12 (tp)
    assert f1_counts(pred, true, 0.5) == (1, 2, 0)
    # @0.25: [2,7) hits first; [8,14) wants the same, taken, ground truth: MS-TCN calls it fp
    assert f1_counts(pred, true, 0.25) == (1, 2, 0)
    assert edit_score(pred, true) == pytest.approx(100 / 3)  # [1, 2, 1] vs [1]: 2 edits of 3
    out = evaluate(probs_of(pred[None]), true[None])
    assert out["frame_acc"] == pytest.approx(15 / 16)
    assert out["f1_50"] == out["f1_25"] == pytest.approx(0.5)  # P = 1/3, R = 1
    assert out["edit"] == pytest.approx(1 / 3)
    # equal scores rank in clip order: [2,7) then [8,14); only at 0.5 the first misses
    assert out["map_40"] == pytest.approx(1.0)
    assert out["map_50"] == pytest.approx(0.5)
    # the localiser's min_len absorbs the flicker: detection recovers, the frame metrics don't move
    smoothed = evaluate(probs_of(pred[None]), true[None], min_len=2)
    assert smoothed["map"] == pytest.approx(1.0)
    assert smoothed["f1_50"] == out["f1_50"]


@pytest.mark.parametrize(
    ("pred", "true", "score"),
    [
        ([0, 1, 1, 0, 2, 2], [0, 1, 1, 0, 3, 3], 50.0),  # [1, 2] vs [1, 3]: 1 substitution
        ([1, 1, 2, 0, 3, 3], [1, 1, 1, 0, 3, 3], 100 * 2 / 3),  # [1, 2, 3] vs [1, 3]
        ([1, 2, 3, 4, 5, 0], [2, 3, 4, 5, 1, 0], 60.0),  # rotation: delete + insert of 5
        ([1, 1, 0, 1, 1], [1, 1, 1, 1, 1], 50.0),  # an idle gap splits one action in two
        ([0, 0, 0, 0], [0, 0, 0, 0], 100.0),  # nothing happens, nothing predicted
        ([0, 3, 3, 0], [0, 0, 0, 0], 0.0),  # an action where there is none
        ([1, 1, 1, 2, 2], [1, 1, -1, -1, -1], 100.0),  # unlabelled frames blank the prediction
    ],
)
def test_edit_score_by_hand(pred, true, score):
    assert edit_score(np.array(pred), np.array(true)) == pytest.approx(score)


def test_levenshtein_by_hand_and_by_recursion():
    kitten, sitting = [1, 2, 3, 3, 4, 5], [6, 2, 3, 3, 2, 5, 7]
    assert levenshtein(kitten, sitting) == 3
    assert levenshtein([], [1, 2]) == 2

    @cache
    def slow(a: tuple, b: tuple) -> int:
        if not a or not b:
            return len(a) + len(b)
        return min(slow(a[1:], b) + 1, slow(a, b[1:]) + 1, slow(a[1:], b[1:]) + (a[0] != b[0]))

    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = (tuple(rng.integers(1, 4, rng.integers(0, 7)).tolist()) for _ in range(2))
        assert levenshtein(list(a), list(b)) == slow(a, b)


def ranked_clips() -> tuple[list[list[Segment]], list[list[Segment]]]:
    """Three ground truths of class 1 in two clips; four detections, best first: a hit, a
    miss in clip 1, a tIoU-0.6 hit, and a duplicate of the first (its truth is taken)."""
    true = [[Segment(1, 0, 4), Segment(1, 8, 12)], [Segment(1, 2, 6)]]
    pred = [
        [Segment(1, 0, 4, 0.9), Segment(1, 9, 13, 0.7), Segment(1, 0, 4, 0.6)],
        [Segment(1, 10, 14, 0.8), Segment(2, 2, 6, 0.99)],  # class 2 is not class 1's business
    ]
    return pred, true


def test_detection_ap_by_hand():
    pred, true = ranked_clips()
    # @0.5 ranks T F T F of 3: precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3;
    # interpolated: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 (the truth never found)
    assert detection_ap(pred, true, 1, 0.5) == pytest.approx(5 / 9)
    # @0.7 the tIoU-0.6 detection misses too: T F F F, 1/3 * 1
    assert detection_ap(pred, true, 1, 0.7) == pytest.approx(1 / 3)


def test_detection_falls_back_to_next_untaken_truth():
    # ActivityNet's greedy match, unlike MS-TCN's: a detection whose best truth is taken
    # takes the next best still above the threshold
    true = [[Segment(1, 0, 4), Segment(1, 0, 6)]]
    pred = [[Segment(1, 0, 4, 0.9), Segment(1, 0, 4, 0.8)]]
    assert detection_ap(pred, true, 1, 0.5) == pytest.approx(1.0)  # second: tIoU 2/3
    assert detection_ap(pred, true, 1, 0.7) == pytest.approx(0.5)


def test_missed_class_is_zero_and_absent_class_is_nan():
    pred, true = ranked_clips()
    assert detection_ap(pred, [[Segment(3, 0, 4)], []], 3, 0.5) == 0.0
    assert math.isnan(detection_ap(pred, true, 4, 0.5))
    # in evaluate: class 1 perfect, class 2 predicted idle, classes 3-5 absent (ignored)
    y = np.array([[0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0]])
    pred_y = np.where(y == 2, 0, y)
    out = evaluate(probs_of(pred_y), y)
    assert [out[f"map_{k}"] for k in (10, 20, 30, 40, 50)] == pytest.approx([0.5] * 5)
    assert out["map"] == pytest.approx(0.5)
    assert out["f1_50"] == pytest.approx(2 / 3)  # tp 1, fn 1
    assert out["edit"] == pytest.approx(0.5)


def test_unlabelled_frames_are_ignored():
    assert frame_accuracy(np.array([1, 2, 3]), np.array([1, -1, 0])) == pytest.approx(0.5)
    assert math.isnan(frame_accuracy(np.array([1, 2]), np.array([-1, -1])))
    # the prediction runs on over padding: no metric notices
    y = np.array([[0, 0, 1, 1, 1, 1, -1, -1]])
    pred = np.array([[0, 0, 1, 1, 1, 1, 1, 1]])
    assert evaluate(probs_of(pred), y) == pytest.approx(dict.fromkeys(KEYS, 1.0))


def test_localise_scores_by_mean_probability():
    labels = np.array([0, 0, 0, 1, 1, 2, 1, 1, 1, 0, 0, 0])
    conf = np.array([0.9, 0.9, 0.9, 0.8, 0.6, 0.7, 0.9, 0.6, 0.9, 0.9, 0.9, 0.9])
    probs = probs_of(labels, conf)
    found = localise(probs)
    assert [(s.label, s.start, s.end) for s in found] == [(1, 3, 5), (2, 5, 6), (1, 6, 9)]
    assert [s.score for s in found] == pytest.approx([0.7, 0.7, 0.8])
    # min_len 2: the flicker joins its longer neighbour; frame 5 adds its class-1 prob 0.3/5
    (merged,) = localise(probs, min_len=2)
    assert (merged.label, merged.start, merged.end) == (1, 3, 9)
    assert merged.score == pytest.approx((0.8 + 0.6 + 0.06 + 0.9 + 0.6 + 0.9) / 6)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([1, 1, 2, 3, 3], [(1, 0, 3), (3, 3, 5)]),  # tie between neighbours: the earlier wins
        ([1, 1, 1, 0, 1, 1, 1], [(1, 0, 7)]),  # a one-frame idle gap is flicker too
        ([0, 1, 1, 1, 1], [(1, 0, 5)]),  # so is a one-frame idle edge
        ([1, 2, 3, 3, 3], [(2, 0, 2), (3, 2, 5)]),  # shortest first, earliest among equals
        ([4], [(4, 0, 1)]),  # nothing to merge into: kept
    ],
)
def test_localise_absorbs_short_runs(labels, expected):
    found = localise(probs_of(labels), min_len=2)
    assert [(s.label, s.start, s.end) for s in found] == expected


def test_localise_never_crosses_invalid_frames():
    probs = probs_of([1, 1, 2, 2, 2, 3])
    valid = np.array([True, False, True, True, True, False])
    found = localise(probs, min_len=2, valid=valid)
    # frame 0 has no labelled neighbour to join; frames 1 and 5 belong to nothing
    assert [(s.label, s.start, s.end) for s in found] == [(1, 0, 1), (2, 2, 5)]


def test_evaluate_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        evaluate(np.zeros((2, 8, CLASSES)), np.zeros((2, 7), dtype=int))

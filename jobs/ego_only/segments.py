"""Per-frame action labels judged as frames, as segments and as detections.

Definitions follow the references the field reports against, re-written here:

* frame accuracy, segmental F1@k and the edit score follow MS-TCN's evaluation
  (yabufarha/ms-tcn, eval.py): a segment is a maximal run of one label; each predicted
  segment, in order, is matched to the ground-truth segment of its label it overlaps most,
  a true positive when that tIoU reaches the threshold and the segment is not yet taken;
  F1 comes from tp/fp/fn summed over clips; the edit score is the Levenshtein distance
  between the two sequences of segment labels, normalised by the longer, as 100 * (1 - d).
* detection AP follows ActivityNet's `compute_average_precision_detection` (as kept in
  ActionFormer's libs/utils/metrics.py): one class's detections from every clip sorted by
  score, each taking the highest-tIoU untaken ground truth of its clip at or above the
  threshold, and VOC-style interpolated AP over the resulting precision/recall curve.
* mAP averages the classes that have ground truth, at each tIoU of Ego4D Moment Queries'
  set (0.1, 0.2, 0.3, 0.4, 0.5), and `map` averages those (Ego4D MQ's headline number).

Class `background` (0, "idle") is not an action: its runs are never segments, so they
count neither for nor against F1, edit or AP (frame accuracy still scores idle frames).
Frames labelled -1 are unlabelled: ignored by every metric, and predictions there are
blanked so they can neither hit nor miss.

The localiser is the off-the-shelf kind: take each frame's argmax class, absorb any run
shorter than `min_len` frames (idle runs too: a one-frame idle flicker inside an action
splits it just as a flicker of another class does) into its longer neighbour, then
report each run of a non-background class as one detection scored by the mean
probability of its class over its frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

UNLABELLED = -1
OVERLAPS = (0.25, 0.5)  # MS-TCN's F1@{25, 50}
TIOUS = (0.1, 0.2, 0.3, 0.4, 0.5)  # Ego4D Moment Queries' tIoU set


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of one label; `score` is a detection's confidence."""

    label: int
    start: int
    end: int
    score: float = 1.0

    @property
    def length(self) -> int:
        return self.end - self.start


def segment_iou(a: Segment, b: Segment) -> float:
    """Temporal intersection over union of two frame ranges (0 when disjoint)."""
    inter = max(0, min(a.end, b.end) - max(a.start, b.start))
    return inter / (a.length + b.length - inter)


def runs(labels: np.ndarray, background: int | None = 0) -> list[Segment]:
    """Maximal runs of one label (MS-TCN's get_labels_start_end_time), in order. Runs of
    `background` are dropped unless it is None; unlabelled (-1) runs always are."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, labels.size])
    segs = [Segment(int(labels[s]), int(s), int(e)) for s, e in bounds]
    return [s for s in segs if s.label != UNLABELLED and s.label != background]


def smooth(labels: np.ndarray, min_len: int) -> np.ndarray:
    """Labels with every run shorter than `min_len` absorbed into its longer neighbour
    (the earlier on a tie), shortest run first. Unlabelled (-1) frames are walls: nothing
    merges across them, and a run with no labelled neighbour is kept as it is."""
    out = np.array(labels, copy=True)
    while min_len > 1:
        pieces = runs(out, background=None)
        nbrs = [_neighbours(pieces, k) for k in range(len(pieces))]
        short = [k for k, s in enumerate(pieces) if s.length < min_len and nbrs[k]]
        if not short:
            break
        k = min(short, key=lambda k: pieces[k].length)  # min keeps the earliest on ties
        into = max(nbrs[k], key=lambda s: s.length)  # max keeps the left one on ties
        out[pieces[k].start : pieces[k].end] = into.label
    return out


def _neighbours(pieces: list[Segment], k: int) -> list[Segment]:
    """The runs touching run k, left first (a gap means unlabelled frames between)."""
    left = [pieces[k - 1]] if k > 0 and pieces[k - 1].end == pieces[k].start else []
    right = pieces[k + 1 : k + 2]
    return left + [s for s in right if s.start == pieces[k].end]


def localise(
    probs: np.ndarray, background: int = 0, min_len: int = 1, valid: np.ndarray | None = None
) -> list[Segment]:
    """Detections in one clip from its (T, C) class probabilities: argmax per frame, runs
    shorter than `min_len` absorbed (see `smooth`), each non-background run scored by the
    mean probability of its class over its frames. Frames where `valid` is False (padding,
    unlabelled) are never part of a detection."""
    labels = probs.argmax(-1)
    if valid is not None:
        labels = np.where(valid, labels, UNLABELLED)
    return [
        replace(s, score=float(probs[s.start : s.end, s.label].mean()))
        for s in runs(smooth(labels, min_len), background)
    ]


def frame_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of labelled frames (true >= 0) predicted right; nan when none is."""
    pred, true = np.asarray(pred), np.asarray(true)
    seen = true >= 0
    return float(np.mean(pred[seen] == true[seen])) if seen.any() else math.nan


def _blank(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The prediction with unlabelled frames blanked, so segments there never count."""
    return np.where(np.asarray(true) >= 0, pred, UNLABELLED)


def f1_counts(
    pred: np.ndarray, true: np.ndarray, overlap: float, background: int = 0
) -> tuple[int, int, int]:
    """(tp, fp, fn) of one clip's segments at tIoU `overlap`, MS-TCN's matching: each
    predicted segment takes the same-label true segment it overlaps most, a hit only if
    that one reaches `overlap` and is still free (no falling back to the second best)."""
    found = runs(_blank(pred, true), background)
    truth = runs(true, background)
    taken = [False] * len(truth)
    tp = 0
    for p in found:
        ious = [segment_iou(p, t) if t.label == p.label else -1.0 for t in truth]
        best = int(np.argmax(ious)) if ious else -1
        if best >= 0 and ious[best] >= overlap and not taken[best]:
            taken[best] = True
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def f1(tp: int, fp: int, fn: int) -> float:
    """2PR / (P + R), i.e. 2tp / (2tp + fp + fn): 0 with no hits, nan with no segments at all."""
    total = 2 * tp + fp + fn
    return 2 * tp / total if total else math.nan


def levenshtein(a: list[int], b: list[int]) -> int:
    """Insertions, deletions and substitutions turning sequence a into b."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def edit_score(pred: np.ndarray, true: np.ndarray, background: int = 0) -> float:
    """MS-TCN's edit score, 0-100: 100 * (1 - Levenshtein / longer length) over the two
    sequences of segment labels. Two clips with no action at all agree: 100 (MS-TCN's
    code divides 0 by 0 there; short clips are often all idle, so it matters here)."""
    a = [s.label for s in runs(_blank(pred, true), background)]
    b = [s.label for s in runs(true, background)]
    longest = max(len(a), len(b))
    return 100.0 * (1 - levenshtein(a, b) / longest) if longest else 100.0


def _claim(det: Segment, truth: list[Segment], taken: list[bool], threshold: float) -> bool:
    """ActivityNet's greedy match: the detection takes the highest-tIoU untaken ground
    truth at or above the threshold, skipping taken ones; False makes it a false positive."""
    ious = np.array([segment_iou(det, t) for t in truth])
    for j in np.argsort(-ious, kind="stable"):
        if ious[j] < threshold:
            return False
        if not taken[j]:
            taken[j] = True
            return True
    return False


def interpolated_ap(hits: np.ndarray, positives: int) -> float:
    """VOC-style interpolated AP (as ActivityNet) of detections ranked best first, `hits`
    marking the true positives, out of `positives` ground truths (unfound ones recall 0)."""
    if hits.size == 0:
        return 0.0
    tp = np.cumsum(hits)
    precision = np.r_[0.0, tp / np.arange(1, hits.size + 1), 0.0]
    recall = np.r_[0.0, tp / positives, 1.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the upper envelope
    step = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[step] - recall[step - 1]) * precision[step]))


def detection_ap(
    pred: list[list[Segment]], true: list[list[Segment]], label: int, tiou: float
) -> float:
    """One class's AP over clips (pred[i], true[i] are clip i's segments): detections of
    `label` ranked by score (ties in clip order), greedily matched within their clip;
    nan when the class has no ground truth."""
    truth = [[s for s in clip if s.label == label] for clip in true]
    positives = sum(map(len, truth))
    if positives == 0:
        return math.nan
    dets = [(i, s) for i, clip in enumerate(pred) for s in clip if s.label == label]
    dets.sort(key=lambda d: -d[1].score)
    taken = [[False] * len(t) for t in truth]
    hits = np.array([_claim(s, truth[i], taken[i], tiou) for i, s in dets], dtype=bool)
    return interpolated_ap(hits, positives)


def _pooled_f1(pred: np.ndarray, y: np.ndarray, overlap: float, background: int) -> float:
    """F1 from tp/fp/fn summed over clips (MS-TCN), not a mean of per-clip F1s: a clip
    with one segment weighs less than one with five."""
    tp = fp = fn = 0
    for p, t in zip(pred, y):
        a, b, c = f1_counts(p, t, overlap, background)
        tp, fp, fn = tp + a, fp + b, fn + c
    return f1(tp, fp, fn)


def map_key(threshold: float) -> str:
    """`map_10` for tIoU 0.1, `map_50` for 0.5."""
    return f"map_{round(100 * threshold):02d}"


def _mean(values: list[float]) -> float:
    """Mean ignoring nan; nan when nothing is left (no warning, unlike np.nanmean)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def evaluate(
    probs: np.ndarray,
    y: np.ndarray,
    background: int = 0,
    min_len: int = 1,
    tious: tuple[float, ...] = TIOUS,
) -> dict[str, float]:
    """Every metric of clips with probabilities (n, T, C) and labels (n, T), as fractions
    in [0, 1]: `frame_acc` (pooled over labelled frames), `f1_25`, `f1_50` (tp/fp/fn summed
    over clips, as MS-TCN), `edit` (mean over clips), `map_10`... (mean AP over the classes
    with ground truth) and `map` (their mean over `tious`). Accuracy, F1 and edit judge the
    raw argmax, as MS-TCN does; mAP judges the localiser's detections."""
    probs, y = np.asarray(probs), np.asarray(y)
    if probs.shape[:2] != y.shape:
        raise ValueError(f"probs {probs.shape} do not match labels {y.shape}")
    pred = probs.argmax(-1)
    out = {"frame_acc": frame_accuracy(pred, y)}
    for overlap in OVERLAPS:
        out[f"f1_{round(100 * overlap)}"] = _pooled_f1(pred, y, overlap, background)
    out["edit"] = float(np.mean([edit_score(p, t, background) for p, t in zip(pred, y)])) / 100
    found = [localise(p, background, min_len, valid=t >= 0) for p, t in zip(probs, y)]
    truth = [runs(t, background) for t in y]
    actions = [c for c in range(probs.shape[-1]) if c != background]
    for threshold in tious:
        aps = [detection_ap(found, truth, c, threshold) for c in actions]
        out[map_key(threshold)] = _mean(aps)
    out["map"] = _mean([out[map_key(t)] for t in tious])
    return out

"""The paper's prediction rule and the metrics a trial reports.

A user's vector u is the mean of the embeddings of the user's training beliefs; a held-out
proposition is predicted Pro when its Pro statement is nearer to u than its Con statement
(Euclidean), as the released notebook's `euclidean_accuracy`. With a = |pro - u| and
b = |con - u|, the relative dissonance is d_rel = |a - b| / min(a, b). Only votes of users
with at least one training vote are scored (the paper's "common users").

Metric names: `{split}_acc`, `{split}_f1` (macro over Pro/Con), `{split}_triplet_acc`
(triplets built the training way from that split's votes), `test_acc_q1`..`q5` (accuracy by
d_rel quintile of the test votes), `test_dissonance_slope` (the least-squares slope of those
five accuracies over the quintile number: accuracy gained per quintile), `test_para_acc`
(the test votes predicted from a paraphrase of each title instead of the title).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score

from jobs.beliefs.votes import Votes

QUINTILES = 5
SLOPE = "test_dissonance_slope"


def acc_metric(split: str) -> str:
    return f"{split}_acc"


@dataclass(frozen=True)
class Predicted:
    pro: np.ndarray  # (votes,) bool: the prediction
    truth: np.ndarray  # (votes,) bool
    d_rel: np.ndarray | None = None  # (votes,), where the rule gives one
    gap: np.ndarray | None = None  # (votes,) |con - u| - |pro - u|: > 0 predicts Pro
    prop: np.ndarray | None = None  # (votes,) the proposition voted on


def user_vectors(emb: np.ndarray, train: Votes, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, dim) mean training-belief embedding, and which users have one."""
    sums = np.zeros((n_users, emb.shape[1]))
    np.add.at(sums, train.user, emb[train.belief])
    counts = np.bincount(train.user, minlength=n_users)
    return sums / np.maximum(counts, 1)[:, None], counts > 0


def distances(u: np.ndarray, pro: np.ndarray, con: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.linalg.norm(pro - u, axis=-1), np.linalg.norm(con - u, axis=-1)


def relative_dissonance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| / min(a, b); 0 where min is 0 (as the reference)."""
    low = np.minimum(a, b)
    return np.where(low > 0, np.abs(a - b) / np.where(low > 0, low, 1.0), 0.0)


def predict(
    emb: np.ndarray, train: Votes, held: Votes, n_users: int, candidates: np.ndarray | None = None
) -> Predicted:
    """The paper's rule for the held-out votes of users seen in training; `candidates`: the
    Pro/Con statements' embeddings to place (default: the titles', `emb`)."""
    u, seen = user_vectors(emb, train, n_users)
    keep = seen[held.user]
    users, props = held.user[keep], held.prop[keep]
    cand = emb if candidates is None else candidates
    a, b = distances(u[users], cand[2 * props], cand[2 * props + 1])
    return Predicted(a < b, held.pro[keep], relative_dissonance(a, b), b - a, props)


def baseline(method: str, train: Votes, held: Votes, n_users: int, seed: int) -> Predicted:
    """user_majority: the user's own majority stance in training (ties: Pro);
    group_majority: the majority stance of every training vote; random: a fair coin."""
    seen = np.bincount(train.user, minlength=n_users) > 0
    keep = seen[held.user]
    users = held.user[keep]
    if method == "user_majority":
        pros = np.bincount(train.user, weights=train.pro, minlength=n_users)
        guess = (2 * pros >= np.bincount(train.user, minlength=n_users))[users]
    elif method == "group_majority":
        guess = np.full(len(users), 2 * train.pro.sum() >= len(train.pro))
    else:
        guess = np.random.default_rng(seed).random(len(users)) < 0.5
    return Predicted(guess, held.pro[keep])


def scores(split: str, p: Predicted) -> dict[str, float]:
    if not len(p.truth):
        return {}
    f1 = f1_score(p.truth, p.pro, labels=[True, False], average="macro", zero_division=0)
    return {acc_metric(split): float(np.mean(p.pro == p.truth)), f"{split}_f1": float(f1)}


def by_dissonance(p: Predicted) -> dict[str, float]:
    """Accuracy per d_rel quintile of these votes, and the slope over the quintiles."""
    if p.d_rel is None or len(p.truth) < QUINTILES:
        return {}
    order = np.argsort(p.d_rel, kind="stable")
    correct = (p.pro == p.truth)[order]
    accs = [float(np.mean(part)) for part in np.array_split(correct, QUINTILES)]
    slope = float(np.polyfit(np.arange(1, QUINTILES + 1), accs, 1)[0])
    return {**{f"test_acc_q{i + 1}": a for i, a in enumerate(accs)}, SLOPE: slope}


def lean_kept(frozen: np.ndarray, loadings: np.ndarray, train_props: np.ndarray) -> np.ndarray:
    """Per proposition: whether the training proposition whose Pro statement is nearest its
    own in the frozen encoder (by topic and wording: what the encoder sees) leans the same
    way in the hidden opinion space (a positive dot product of their loadings)."""
    pro = frozen[0::2]
    gaps = np.linalg.norm(pro[:, None, :] - pro[None, train_props, :], axis=-1)
    gaps[train_props, np.arange(len(train_props))] = np.inf  # not itself
    nearest = train_props[np.argmin(gaps, axis=1)]
    return np.einsum("pa,pa->p", loadings, loadings[nearest]) > 0


def by_lean(p: Predicted, kept: np.ndarray) -> dict[str, float]:
    """Test accuracy where the nearest training proposition leans the same way, and where it
    leans the other way: an encoder that transfers topic, not stance, is right on the first
    and wrong on the second."""
    if p.prop is None:
        return {}
    same = kept[p.prop]
    correct = p.pro == p.truth
    out = {}
    for name, mask in (("test_acc_lean_kept", same), ("test_acc_lean_flipped", ~same)):
        if mask.any():
            out[name] = float(np.mean(correct[mask]))
    return out


def triplet_accuracy(emb: np.ndarray, rows: np.ndarray) -> float:
    """Share of (anchor, positive, negative) with the positive nearer (Euclidean)."""
    if not len(rows):
        return float("nan")
    a, p, n = emb[rows[:, 0]], emb[rows[:, 1]], emb[rows[:, 2]]
    return float(np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1)))


def fit_pro_scale(gap: np.ndarray, truth: np.ndarray) -> float:
    """s in p(Pro) = sigmoid(s * (b - a)), b - a the distance gap, by maximum likelihood on
    validation votes (the served endpoint's probability); 1.0 when there are none."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(truth)) < 2:
        return 1.0
    fit = LogisticRegression(fit_intercept=False, C=1e6).fit(gap.reshape(-1, 1), truth)
    return float(max(fit.coef_[0, 0], 0.0))

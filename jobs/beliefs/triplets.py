"""Training triplets as the paper's released code builds them (belief_library.py:
get_belief_cooccurrence_dic, get_stance_triplet), on statement indices.

For every belief s held by a user who holds at least one other belief: positives are beliefs
that co-occur with s in some user's beliefs (a list with repeats: a pair held by many users
is drawn more often), up to PER_SIDE of them drawn without replacement; negatives are the
exact opposite statement, always, plus up to PER_SIDE - 1 beliefs that co-occur with the
opposite; every (positive, negative) pair makes a triplet (anchor s, positive, negative).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

PER_SIDE = 5  # the reference's `thres`


def opposite(belief: int) -> int:
    """The other stance on the same proposition (statements 2 i and 2 i + 1)."""
    return belief ^ 1


def cooccurrence(user: np.ndarray, belief: np.ndarray) -> dict[int, list[int]]:
    """belief -> every belief held with it by one user (once per such user)."""
    held: dict[int, list[int]] = defaultdict(list)
    for u, b in zip(user.tolist(), belief.tolist()):
        if b not in held[u]:
            held[u].append(b)
    together: dict[int, list[int]] = defaultdict(list)
    for beliefs in held.values():
        for b in beliefs:
            together[b].extend(other for other in beliefs if other != b)
    return {b: others for b, others in together.items() if others}


def triplets(together: dict[int, list[int]], rng: np.random.Generator) -> np.ndarray:
    """(n, 3) int array of (anchor, positive, negative) statement indices."""
    rows = []
    for anchor in sorted(together):
        positives = np.asarray(together[anchor])
        if len(positives) > PER_SIDE - 1:
            positives = rng.choice(positives, size=min(PER_SIDE, len(positives)), replace=False)
        opp = opposite(anchor)
        others = np.asarray(together.get(opp, []), dtype=np.int64)
        if len(others) > PER_SIDE - 2:
            others = rng.choice(others, size=PER_SIDE - 1, replace=False)
        negatives = np.concatenate([[opp], others])
        rows += [(anchor, p, n) for p in positives for n in negatives]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

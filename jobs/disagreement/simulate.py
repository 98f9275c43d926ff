"""Part 2, a simulation (stated as such): which measure tracks an effect of misinformation?

Periods t = 1..T (months, say). Two latent drivers follow AR(1) series with persistence
PERSISTENCE and unit variance: misinformation exposure M_t and other drivers D_t. The
latent effect (polarisation, say) is

    E_t = (alpha * M_t + (1 - alpha) * D_t) / sqrt(alpha^2 + (1 - alpha)^2)

Each period has `posts` posts. A post shares misinformation with probability
sigmoid(logit(MISINFO_SHARE) + MISINFO_SLOPE * M_t) (a perfect classifier counts them: the
count's only noise is sampling). A post is a reply to a statement whose stance relation
follows x_t = EFFECT_SLOPE * E_t + noise * v_t, v_t ~ N(0, 1); a third of the posts
disagree at x = 0, and what more disagreement `displaced` is a structural choice:
- "both": p(disagree) = sigmoid(logit(1/3) + x_t), the rest split evenly between agreeing
  and neutral replies (a multinomial logit in which only disagreement moves);
- "agree": neutral replies stay a third, p(disagree) = 2/3 sigmoid(x_t), agreement the rest
  (the effect turns agreement into disagreement);
- "neutral": agreeing replies stay a third, p(disagree) = 2/3 sigmoid(x_t), neutral the rest
  (the effect turns bystanders into opponents).
A post's text is drawn from the corpus's replies of its relation. The period's measures:
the misinformation count, and each disagreement measure averaged over its posts (the
paper's monthly mean).

What the structure decides: the effect shows itself in disagreement and in nothing else,
so at alpha = 0 a disagreement measure can track it and the count cannot, by construction;
at alpha = 1 and noise 0 the count tracks E up to sampling noise. A measure's period mean
moves with E by the difference between its mean on disagreeing replies and on the replies
they displace, so `displaced` decides which contrast of the corpus a measure needs (against
agreement, against neutral replies, or against both). What the real texts decide: those
contrasts for each measure (part 1), and so the alpha below which it tracks E better than
the count does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERSISTENCE = 0.7  # AR(1) coefficient of both drivers (month to month)
MISINFO_SHARE = 0.10  # posts sharing misinformation at average exposure
MISINFO_SLOPE = 0.8  # logit change per standard deviation of exposure
DISAGREE_SHARE = 1 / 3  # disagreeing posts at the average effect
EFFECT_SLOPE = 1.0  # logit change per standard deviation of the effect
DISPLACED = ("both", "agree", "neutral")  # what more disagreement displaces (docstring)


@dataclass(frozen=True)
class World:
    effect: np.ndarray  # (T,) E_t
    exposure: np.ndarray  # (T,) M_t
    count: np.ndarray  # (T,) misinformation posts
    relation: np.ndarray  # (T, posts) 0 agree, 1 neutral, 2 disagree
    post: np.ndarray  # (T, posts) the corpus row each post's text comes from


def ar1(periods: int, rng: np.random.Generator) -> np.ndarray:
    x = np.empty(periods)
    x[0] = rng.standard_normal()
    for t in range(1, periods):
        x[t] = PERSISTENCE * x[t - 1] + np.sqrt(1 - PERSISTENCE**2) * rng.standard_normal()
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def effect(alpha: float, exposure: np.ndarray, other: np.ndarray) -> np.ndarray:
    return (alpha * exposure + (1 - alpha) * other) / np.hypot(alpha, 1 - alpha)


def shares(x: np.ndarray, displaced: str) -> tuple[np.ndarray, np.ndarray]:
    """p(disagree) and p(neutral) of each period, from its stance signal x."""
    if displaced == "both":
        p_dis = _sigmoid(_logit(DISAGREE_SHARE) + x)
        return p_dis, (1 - p_dis) / 2
    p_dis = (1 - DISAGREE_SHARE) * _sigmoid(x)
    if displaced == "agree":
        return p_dis, np.full_like(p_dis, DISAGREE_SHARE)
    if displaced == "neutral":
        return p_dis, 1 - DISAGREE_SHARE - p_dis
    raise ValueError(f"displaced: {displaced!r}; one of {', '.join(DISPLACED)}")


def simulate(alpha: float, noise: float, periods: int, posts: int, pool: np.ndarray,
             relation: np.ndarray, seed: int, stream: int = 0,
             displaced: str = "both") -> World:  # fmt: skip
    """One world: `pool` the corpus rows posts may quote, `relation` every row's known
    relation; (seed, stream) draw everything (the same for every measure of a seed)."""
    rng = np.random.default_rng([seed, stream])
    exposure, other = ar1(periods, rng), ar1(periods, rng)
    e = effect(alpha, exposure, other)
    count = rng.binomial(posts, _sigmoid(_logit(MISINFO_SHARE) + MISINFO_SLOPE * exposure))
    p_dis, p_neutral = shares(EFFECT_SLOPE * e + noise * rng.standard_normal(periods), displaced)
    u = rng.random((periods, posts))
    rel = np.where(u < p_dis[:, None], 2, np.where(u < (p_dis + p_neutral)[:, None], 1, 0))
    by_relation = [pool[relation[pool] == r] for r in range(3)]
    post = np.empty((periods, posts), dtype=np.int64)
    for r, rows in enumerate(by_relation):
        where = rel == r
        post[where] = rows[rng.integers(0, len(rows), size=int(where.sum()))]
    return World(e, exposure, count, rel, post)


def period_means(world: World, scores: np.ndarray) -> np.ndarray:
    """Each period's mean score over its posts."""
    return scores[world.post].mean(axis=1)

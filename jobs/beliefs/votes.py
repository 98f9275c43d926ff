"""Who voted what: simulated voters on the shipped propositions, or a real votes file; the
statements in the paper's template; the split by proposition.

A belief is a (proposition, stance) pair, written as the paper writes it: "I agree with the
following: <title>" (Pro) or "I disagree with the following: <title>" (Con). Statement 2 i
is proposition i's Pro statement, 2 i + 1 its Con statement, so a vote's belief index is
2 * proposition + (stance is Con).

Simulated voters (the paper's debate.org votes cannot be downloaded here): each user has a
position u on the four latent axes of propositions.AXES, drawn from a polarised mixture of
two camps, centred at +-CAMP_DISTANCE along the diagonal (progressive on every axis vs
conservative on every axis) with SPREAD per axis; a user votes on `votes_per_user` distinct
propositions drawn uniformly and votes Pro with probability sigmoid(beta * u . a), a being
the proposition's hidden loading. beta is the polarisation knob: 0 makes every vote a coin
flip, large beta makes every vote follow the user's camp.

A real votes file (data.path: .parquet or .csv) has one row per vote with columns `user`,
`proposition` (an id), `stance` (Pro/Con, agree/disagree, 1/0) and `text` (the proposition's
title, as the paper's debate titles); `load_votes` reads it, `check_votes` only checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skeptic.api import DataError

AGREE = "I agree with the following: "
DISAGREE = "I disagree with the following: "
CAMP_DISTANCE = 1.6  # each camp's centre from the origin, along the unit diagonal
SPREAD = 0.5  # sd of a user's position around the camp centre, per axis
COLUMNS = ("user", "proposition", "stance", "text")
PRO_WORDS = {"pro": True, "agree": True, "1": True, "true": True,
             "con": False, "disagree": False, "0": False, "false": False}  # fmt: skip


def statement(title: str, pro: bool) -> str:
    return (AGREE if pro else DISAGREE) + title


def title_of(text: str) -> str:
    """The proposition in a statement (the template stripped), or the text itself."""
    for prefix in (AGREE, DISAGREE):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


@dataclass(frozen=True)
class Votes:
    """Every vote, as parallel arrays, and the propositions' texts."""

    titles: list[str]  # per proposition
    user: np.ndarray  # (votes,) int
    prop: np.ndarray  # (votes,) int, index into titles
    pro: np.ndarray  # (votes,) bool
    paraphrases: list[tuple[str, ...]] = field(default_factory=list)  # per proposition, or []

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1 if len(self.user) else 0

    @property
    def belief(self) -> np.ndarray:
        """Each vote's statement index: 2 * proposition + (Con)."""
        return 2 * self.prop + (~self.pro).astype(np.int64)

    def statements(self) -> list[str]:
        return [statement(t, pro) for t in self.titles for pro in (True, False)]

    def paraphrase_statements(self, which: int = 0) -> list[str]:
        """The statements with each proposition's `which`-th paraphrase as its title."""
        return [statement(p[which], pro) for p in self.paraphrases for pro in (True, False)]

    def subset(self, mask: np.ndarray) -> Votes:
        return Votes(self.titles, self.user[mask], self.prop[mask], self.pro[mask],
                     self.paraphrases)  # fmt: skip


def simulate(
    loadings: np.ndarray, titles: list[str], paraphrases: list[tuple[str, ...]], *,
    users: int, votes_per_user: int, beta: float, seed: int,
) -> Votes:  # fmt: skip
    """Votes of `users` simulated voters (module docstring) on propositions with `loadings`
    (propositions x axes)."""
    rng = np.random.default_rng(seed)
    n_props, n_axes = loadings.shape
    per_user = min(votes_per_user, n_props)
    camp = np.where(rng.random(users) < 0.5, 1.0, -1.0)
    centre = camp[:, None] * CAMP_DISTANCE / np.sqrt(n_axes)
    position = centre + rng.normal(0.0, SPREAD, (users, n_axes))
    prop = np.stack([rng.choice(n_props, per_user, replace=False) for _ in range(users)])
    user = np.repeat(np.arange(users), per_user)
    prop = prop.reshape(-1)
    lean = np.einsum("va,va->v", position[user], loadings[prop])
    pro = rng.random(len(prop)) < 1.0 / (1.0 + np.exp(-beta * lean))
    return Votes(list(titles), user, prop, pro, list(paraphrases))


def latent_statements(loadings: np.ndarray) -> np.ndarray:
    """Each statement's place in the hidden opinion space (+a for Pro, -a for Con): the
    paper's rule on these is the `oracle` arm, the most the simulated votes allow."""
    out = np.empty((2 * len(loadings), loadings.shape[1]), dtype=np.float64)
    out[0::2], out[1::2] = loadings, -loadings
    return out


def split_propositions(
    n_props: int, fold: int, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) proposition indices: the propositions shuffled by `seed` and cut
    into `folds` folds as the paper's KFold over debate titles; fold `fold` is the test
    split, the next one the validation split (every choice), the rest train."""
    order = np.random.default_rng(seed).permutation(n_props)
    parts = np.array_split(order, folds)
    held = (fold % folds, (fold + 1) % folds)
    test, val = parts[held[0]], parts[held[1]]
    train = np.concatenate([p for i, p in enumerate(parts) if i not in held])
    return np.sort(train), np.sort(val), np.sort(test)


# ---- a real votes file ----------------------------------------------------------------------


def check_votes(path: str | Path) -> None:
    """The checks load_votes makes, naming the file, row and column at fault."""
    load_votes(path)


def load_votes(path: str | Path) -> Votes:
    """Votes from a .parquet or .csv file with columns COLUMNS (module docstring)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError("path", f"{path}: no such votes file (a .parquet or .csv)")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001  (pyarrow and pandas raise many types)
        raise DataError("path", f"{path}: cannot read it as a table: {err}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError("path", f"{path}: missing column(s) {missing}; need {list(COLUMNS)}")
    if frame.empty:
        raise DataError("path", f"{path}: no rows")
    stance = frame["stance"].astype(str).str.strip().str.lower()
    bad = ~stance.isin(PRO_WORDS.keys())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError("path", f"{path}: row {row + 2}, column stance: "
                        f"{frame['stance'].iloc[row]!r} is not Pro/Con (or agree/disagree, 1/0)")  # fmt: skip
    text = frame["text"]
    empty = text.isna() | (text.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError("path", f"{path}: row {row + 2}, column text: empty proposition text")
    props = pd.factorize(frame["proposition"].astype(str))
    users = pd.factorize(frame["user"].astype(str))[0]
    titles = frame.groupby(props[0])["text"].first().astype(str).str.strip().tolist()
    if len(titles) < 5:
        raise DataError("path", f"{path}: {len(titles)} propositions; the 5-fold split needs 5+")
    pro = stance.map(PRO_WORDS).to_numpy(dtype=bool)
    return Votes(titles, users.astype(np.int64), props[0].astype(np.int64), pro)

"""The exchanges the study measures: statements, replies with a known stance relation, and
the same texts with their topic removed.

The shipped corpus (exchanges/*.json, written for this study by language-model sessions
following one brief) has 110 topics: 74 of the `beliefs` study's debate propositions and 36
misinformation-prone claims (vaccines, masks, fluoride, the moon landings, 5G, chemtrails,
raw milk, ...). Each topic has a pro and a con statement,
and to each statement an agreeing, a neutral and a disagreeing reply, each in two wordings
(a reply and its paraphrase). Agreeing with a negative claim is written in negative words
and disagreeing is often polite, so that negativity alone does not give the relation away.

Each topic tags how its disagreeing replies say so (`disagree_form`: explicit "I disagree",
a bare counter-claim, or polite and hedged; about a third each), so the report can show
which kinds of disagreement a measure reads.

Every topic lists its `terms`: the words and phrases that name it. `remove_topic` masks
them (whole words, case-insensitive, longest first) with "it", which keeps the sentence
grammatical for the tagger and the encoder.

A corpus file of the same shape (a JSON list of topics, or a folder of such files) is read
by the same code: `load(path)`, checked by `read_topics(path)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from skeptic.api import DataError

SHIPPED = Path(__file__).with_name("exchanges")
SIDES = ("pro", "con")
RELATIONS = ("agree", "neutral", "disagree")  # their index is the known disagreement level
FORMS = ("explicit", "counter", "polite")  # how a disagreeing reply says so (optional tag)
MASK = "it"


@dataclass(frozen=True)
class Corpus:
    """One row per reply: its topic (index into `topics`), the statement's side, the known
    relation (0 agree, 1 neutral, 2 disagree), the wording (0 the reply, 1 its paraphrase),
    and the statement and reply texts with the topic present and removed."""

    topics: tuple[str, ...]
    topic: np.ndarray  # (n,) int
    side: np.ndarray  # (n,) int: 0 pro, 1 con
    relation: np.ndarray  # (n,) int
    wording: np.ndarray  # (n,) int
    statement: dict[str, list[str]]  # "present" / "removed" -> (n,) texts
    reply: dict[str, list[str]]
    form: np.ndarray | None = None  # (n,) str: a disagreeing reply's form ("" otherwise)

    def __len__(self) -> int:
        return len(self.topic)


def remove_topic(text: str, terms: list[str]) -> str:
    """The text with every topic term masked."""
    ordered = sorted(terms, key=len, reverse=True)
    pattern = r"\b(?:" + "|".join(re.escape(t) for t in ordered) + r")\b"
    return re.sub(pattern, MASK, text, flags=re.IGNORECASE)


def _files(path: Path) -> list[Path]:
    return sorted(path.glob("*.json")) if path.is_dir() else [path]


def read_topics(path: str | Path) -> list[dict[str, Any]]:
    """Every topic of a corpus file or folder, checked (DataError names the bad entry)."""
    path = Path(path)
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    files = _files(path)
    if not files:
        raise DataError("path", f"{path} holds no .json corpus file")
    topics: list[dict[str, Any]] = []
    for file in files:
        try:
            entries = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError("path", f"{file} is not a JSON corpus file ({err})") from None
        if not isinstance(entries, list):
            raise DataError("path", f"{file} must hold a JSON list of topics")
        for i, entry in enumerate(entries):
            _check_topic(entry, f"{file.name}[{i}]")
            topics.append(entry)
    names = [t["topic"] for t in topics]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError("path", f"topic {twice[0]!r} appears twice")
    return topics


def _check_topic(entry: Any, where: str) -> None:
    def fail(field: str, why: str) -> None:
        raise DataError("path", f"{where}.{field}: {why}")

    if not isinstance(entry, dict):
        fail("", "a topic is a JSON object")
    for field in ("topic", "terms", "statements", "replies"):
        if field not in entry:
            fail(field, "missing")
    if not isinstance(entry["topic"], str) or not entry["topic"]:
        fail("topic", "a non-empty string")
    terms = entry["terms"]
    if (
        not isinstance(terms, list)
        or not terms
        or not all(isinstance(t, str) and t.strip() for t in terms)
    ):
        fail("terms", "a non-empty list of the words that name the topic")
    for side in SIDES:
        text = entry["statements"].get(side) if isinstance(entry["statements"], dict) else None
        if not isinstance(text, str) or not text.strip():
            fail(f"statements.{side}", "a non-empty string")
        replies = entry["replies"].get(side) if isinstance(entry["replies"], dict) else None
        if not isinstance(replies, dict):
            fail(f"replies.{side}", f"an object with {', '.join(RELATIONS)}")
        for rel in RELATIONS:
            wordings = replies.get(rel)
            if not isinstance(wordings, list) or not 1 <= len(wordings) <= 2 \
                    or not all(isinstance(w, str) and w.strip() for w in wordings):  # fmt: skip
                fail(f"replies.{side}.{rel}", "a list of 1 or 2 non-empty strings (a reply "
                     "and its paraphrase)")  # fmt: skip
        forms = entry.get("disagree_form")
        if forms is not None and (not isinstance(forms, dict) or forms.get(side) not in FORMS):
            fail(f"disagree_form.{side}", f"one of {', '.join(FORMS)} (or leave disagree_form out)")


def load(path: str | Path = SHIPPED, limit: int | None = None) -> Corpus:
    """The corpus at `path` (the shipped one by default), its first `limit` topics (files in
    name order), flattened to one row per reply."""
    return _load(str(Path(path).resolve()), limit)


@cache
def _load(path: str, limit: int | None) -> Corpus:
    topics = read_topics(path)[:limit]
    rows: list[tuple[int, int, int, int, str, str, list[str]]] = []
    forms = []
    for t, entry in enumerate(topics):
        for s, side in enumerate(SIDES):
            for r, rel in enumerate(RELATIONS):
                for w, reply in enumerate(entry["replies"][side][rel]):
                    rows.append((t, s, r, w, entry["statements"][side], reply, entry["terms"]))
                    tagged = entry.get("disagree_form", {}).get(side, "")
                    forms.append(tagged if rel == "disagree" else "")
    tagged_all = all("disagree_form" in entry for entry in topics)
    statement = [row[4] for row in rows]
    reply = [row[5] for row in rows]
    return Corpus(
        topics=tuple(t["topic"] for t in topics),
        topic=np.array([row[0] for row in rows]),
        side=np.array([row[1] for row in rows]),
        relation=np.array([row[2] for row in rows]),
        wording=np.array([row[3] for row in rows]),
        statement={"present": statement,
                   "removed": [remove_topic(x, row[6]) for x, row in zip(statement, rows)]},
        reply={"present": reply,
               "removed": [remove_topic(x, row[6]) for x, row in zip(reply, rows)]},
        form=np.array(forms) if tagged_all else None,
    )  # fmt: skip


def split_topics(
    n_topics: int, val_fraction: float, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Topics for choices (validation) and each remaining topic's test fold: a seeded
    permutation, its first `val_fraction` validate, the rest go round-robin to `folds`
    folds. Returns (validation topic indices, fold of every topic, -1 for validation)."""
    order = np.random.default_rng(seed).permutation(n_topics)
    n_val = max(1, round(val_fraction * n_topics))
    fold = np.full(n_topics, -1)
    for i, t in enumerate(order[n_val:]):
        fold[t] = i % folds
    return np.sort(order[:n_val]), fold


def check_sizes(n_topics: int, val_fraction: float, folds: int) -> None:
    """Every fold needs a topic and validation at least one (DataError names the field)."""
    n_val = max(1, round(val_fraction * n_topics))
    if n_topics - n_val < folds:
        raise DataError("path", f"{n_topics} topics leave {n_topics - n_val} for {folds} "
                        f"test folds (train.folds); need at least one topic a fold")  # fmt: skip

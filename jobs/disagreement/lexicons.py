"""The paper's disagreement index, with the lexicons that ship in packages.

Hodel & West (repository hodeld/disagreement-misinfo, measurement/disagreement.py) score a
text as the sum of SentiWordNet's negative scores over its nouns, adjectives and adverbs
(lemmatised, POS-tagged, stopwords removed, each word's first WordNet sense) divided by
the number of those words SentiWordNet matched. SentiWordNet and NLTK's WordNet are not on
the package registries, so `index` applies the same formula with lexicons that are:

- `vader`: VADER's valence lexicon (vaderSentiment, MIT); a word's negative score is its
  negative valence scaled to [0, 1] (valence -4 -> 1), 0 for a positive word.
- `nrc`: the NRC Emotion Lexicon as the nrclex package ships it (code MIT; the lexicon's
  own terms: free for research and non-commercial use, commercial use needs a licence
  from the National Research Council Canada); negative score 1 for a word associated
  with "negative", else 0.
- `empath`: Empath's categories (empath-client, MIT; its category file ships with it);
  negative score 1 for a word in `negative_emotion`, else 0.

AFINN is left out: the `afinn` package on PyPI is licensed GPL, which Skeptic's licence
does not take in; VADER covers the same kind of word list.

A word "matches" when its lexicon knows it (SentiWordNet knows nearly every WordNet word,
most with a zero negative score; these lexicons know fewer, mostly sentiment-bearing
words). The lemma is looked up first, as in the paper, then the surface form (VADER and
NRC list some inflected forms only). There is no sense to choose: each lexicon gives one
score per word. A text with no matched word scores 0 (no negative evidence) where the
paper's pandas division gives NaN and the period mean skips it. Tagging is pattern's
Brill tagger as textblob ships it (Penn tags, no download); lemmas are lemminflect's;
stopwords are scikit-learn's English list (the paper: NLTK's, not on the registries).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

LEXICONS = ("vader", "nrc", "empath")
LICENCES = {
    "vader": "vaderSentiment 3.3.2: MIT (code and lexicon)",
    "nrc": "nrclex 4.1.0: MIT code; the NRC Emotion Lexicon itself is free for research "
    "and non-commercial use only (commercial use needs a licence from NRC Canada)",
    "empath": "empath 0.89: MIT (Fast et al., empath-client; category file shipped)",
}
CONTENT = {"N": "NOUN", "J": "ADJ", "R": "ADV"}  # Penn tag's first letter -> UPOS
WORD = re.compile(r"^[a-z][a-z'-]+$")


@dataclass(frozen=True)
class Lexicon:
    """Negative scores in [0, 1] of the words a lexicon knows (a known word may score 0)."""

    name: str
    negative: Mapping[str, float]

    def score(self, lemma: str, surface: str) -> float | None:
        """The word's negative score, or None where the lexicon does not know it."""
        for form in (lemma, surface):
            if form in self.negative:
                return self.negative[form]
        return None


@cache
def lexicon(name: str) -> Lexicon:
    """One of LEXICONS, loaded from its package (offline)."""
    if name == "vader":
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        valence = SentimentIntensityAnalyzer().lexicon
        return Lexicon(name, {w: max(0.0, -v) / 4.0 for w, v in valence.items() if WORD.match(w)})
    if name == "nrc":
        import json
        from importlib import resources

        with resources.files("nrclex.data").joinpath("nrc_en.json").open(encoding="utf-8") as f:
            table = json.load(f)
        return Lexicon(name, {w: float("negative" in e) for w, e in table.items()})
    if name == "empath":
        from empath import Empath

        cats = Empath().cats
        known = {w for words in cats.values() for w in words if WORD.match(w)}
        negative = set(cats["negative_emotion"])
        return Lexicon(name, {w: float(w in negative) for w in known})
    raise ValueError(f"lexicon: {name!r}; known: {', '.join(LEXICONS)}")


@cache
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@cache
def content_words(text: str) -> tuple[tuple[str, str], ...]:
    """(lemma, surface) of the text's nouns, adjectives and adverbs, lower-cased, without
    stopwords or tokens that are not words."""
    from lemminflect import getLemma
    from textblob.en import tag

    out = []
    for token, penn in tag(text):
        surface = token.lower()
        upos = CONTENT.get(penn[:1])
        if upos is None or surface in _stopwords() or not WORD.match(surface):
            continue
        lemmas = getLemma(surface, upos=upos)
        out.append(((lemmas[0] if lemmas else surface).lower(), surface))
    return tuple(out)


def index(text: str, lex: Lexicon) -> float:
    """The paper's per-text disagreement: summed negative scores of the matched content
    words over their number (0 where none matched)."""
    scores = [
        s for lemma, surface in content_words(text) if (s := lex.score(lemma, surface)) is not None
    ]
    return float(sum(scores) / len(scores)) if scores else 0.0


def coverage(text: str, lex: Lexicon) -> bool:
    """Whether the lexicon matched any content word of the text."""
    return any(lex.score(lemma, surface) is not None for lemma, surface in content_words(text))


def indices(texts: list[str], name: str) -> np.ndarray:
    lex = lexicon(name)
    return np.array([index(t, lex) for t in texts], dtype=np.float64)

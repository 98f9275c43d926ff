"""The shipped propositions of study `beliefs` (jobs.beliefs.propositions): the rules its
module docstring states that can be checked by counting."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jobs.beliefs.propositions import AXES, PROPOSITIONS, TOPICS, by_key, loadings

APOLITICAL_MAX = 0.15


def _is_apolitical(loading: tuple[float, ...]) -> bool:
    return max(abs(x) for x in loading) <= APOLITICAL_MAX


def test_axes_and_count():
    assert AXES == ("economic", "social", "secular", "cosmopolitan")
    assert len(PROPOSITIONS) >= 160
    assert 10 <= len(TOPICS) <= 14 and len(set(TOPICS)) == len(TOPICS)


def test_keys_titles_and_paraphrases_are_unique_and_well_formed():
    keys = [p.key for p in PROPOSITIONS]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in keys)
    texts = [t.lower() for p in PROPOSITIONS for t in (p.title, *p.paraphrases)]
    dupes = {t for t in texts if texts.count(t) > 1}
    assert not dupes, dupes  # titles, and every paraphrase against every title and paraphrase
    for p in PROPOSITIONS:
        assert len(p.paraphrases) == 2, p.key
        assert 3 <= len(p.title.split()) <= 12, p.title
        assert p.topic in TOPICS, p.key
        for text in (p.title, *p.paraphrases):
            assert text.isascii() and text == text.strip() and text, (p.key, text)
            assert not text.endswith(("?", ".")), (p.key, text)
    assert by_key() == {p.key: p for p in PROPOSITIONS}


def test_loadings_shape_and_values():
    a = loadings()
    assert a.shape == (len(PROPOSITIONS), len(AXES)) and a.dtype == np.float32
    for p, row in zip(PROPOSITIONS, a, strict=True):
        assert len(p.loading) == len(AXES)
        assert all(round(x, 1) == x and -1.0 <= x <= 1.0 for x in p.loading), p.key
        np.testing.assert_allclose(row, p.loading)


def test_opinion_and_apolitical_profiles():
    """An opinion proposition: one main axis in 0.5..1.0, at most one secondary in 0.2..0.5,
    the rest 0; an apolitical one: every |loading| <= 0.15. Nothing in between."""
    opinion = apolitical = 0
    for p in PROPOSITIONS:
        if _is_apolitical(p.loading):
            apolitical += 1
            continue
        main, second, *rest = sorted((abs(x) for x in p.loading), reverse=True)
        assert 0.5 <= main <= 1.0, p.key
        assert second == 0.0 or 0.2 <= second <= 0.5, p.key
        assert all(x == 0.0 for x in rest), p.key
        opinion += 1
    assert 125 <= opinion <= 135, opinion
    assert 25 <= apolitical <= 35, apolitical


def test_apolitical_topics():
    light = {"entertainment", "sports", "lifestyle", "technology"}
    assert all(p.topic in light for p in PROPOSITIONS if _is_apolitical(p.loading))


@pytest.mark.parametrize("axis", range(4), ids=AXES)
def test_each_axis_is_well_covered_and_sign_balanced(axis: int):
    strong = [p.loading[axis] for p in PROPOSITIONS if abs(p.loading[axis]) >= 0.5]
    assert len(strong) >= 20, len(strong)
    negative = sum(x < 0 for x in strong) / len(strong)
    assert 0.4 <= negative <= 0.6, negative

"""Study `disagreement`: the paper's formula on a hand-made lexicon, the shipped lexicons
offline, the corpus (loading, checks, topic removal, folds), the simulation (the effect
follows alpha), AUC and Spearman against scipy, the parameters, the decision rule, the
scorer's endpoint, and the smoke sweep served over real HTTP."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from mlflow import MlflowClient
from netutil import http_json, served_app
from pydantic import ValidationError
from reported import Reported, judged
from scipy import stats as sps

from jobs.disagreement import corpus, endpoint, evaluate, simulate, verdict
from jobs.disagreement.lexicons import LEXICONS, Lexicon, content_words, index, lexicon
from jobs.disagreement.measures import Weights
from jobs.disagreement.scorer import Scorer, state
from jobs.disagreement.study import Params
from skeptic.api import DataError, Decision, SpecError
from skeptic.spec import load_spec
from skeptic.study import get_study


def spec_of(smoke: bool = False, sets: tuple[str, ...] = ()):
    study = get_study("disagreement")
    return load_spec(study.name, study.defaults, Params, smoke=study.smoke if smoke else None,
                     sets=list(sets))  # fmt: skip


# ---- the paper's formula ------------------------------------------------------------------------


def test_the_index_averages_negative_scores_over_matched_nouns_adjectives_and_adverbs():
    tiny = Lexicon("tiny", {"terrible": 1.0, "idea": 0.0, "plan": 0.2, "badly": 0.5, "hate": 1.0,
                            "fail": 1.0})  # fmt: skip
    text = "I hate this terrible idea, and the plan for the weather failed badly."
    words = dict(content_words(text))
    assert {"terrible", "idea", "plan", "badly", "weather"} <= set(words)
    assert "hate" not in words and "fail" not in words  # verbs are not counted
    # matched: terrible 1.0, idea 0.0, plan 0.2, badly 0.5; "weather" is unknown: not counted
    assert index(text, tiny) == pytest.approx((1.0 + 0.0 + 0.2 + 0.5) / 4)
    assert index("The weather.", tiny) == 0.0  # nothing matched: no negative evidence


def test_lemmas_are_looked_up_before_surface_forms():
    tiny = Lexicon("tiny", {"plan": 1.0, "plans": 0.0})
    assert index("Their plans.", tiny) == 1.0  # lemma "plan" first, as the paper lemmatises


@pytest.mark.parametrize("name", LEXICONS)
def test_each_lexicon_loads_from_its_package_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NLTK_DATA", "/nonexistent")  # nothing NLTK would download
    lex = lexicon(name)
    assert len(lex.negative) > 5000 and all(0 <= v <= 1 for v in lex.negative.values())
    assert lex.score("upset" if name == "empath" else "terrible", "") > 0
    assert lex.score("happy", "") in (0.0, None)
    assert index("What a horrible, cruel and disgusting decision.", lex) > index(
        "What a lovely, kind and generous decision.", lex
    )


# ---- the corpus ---------------------------------------------------------------------------------


def test_the_shipped_corpus_is_balanced_and_tagged():
    c = corpus.load()
    n = len(c.topics)
    assert n >= 100 and len(c) == 12 * n  # 2 sides x 3 relations x 2 wordings
    assert np.bincount(c.relation).tolist() == [4 * n] * 3
    assert np.bincount(c.side).tolist() == [6 * n] * 2
    assert set(c.form[c.relation == 2]) == set(corpus.FORMS) and set(c.form[c.relation != 2]) == {
        ""
    }
    assert (c.wording[1::2] == 1).all()  # each paraphrase follows its reply
    assert corpus.load(corpus.SHIPPED, 5).topics == c.topics[:5]  # data.size caps the topics


def test_topic_removal_leaves_no_topic_term():
    for entry in corpus.read_topics(corpus.SHIPPED):
        pattern = re.compile(
            r"\b(?:" + "|".join(map(re.escape, entry["terms"])) + r")\b", re.IGNORECASE
        )
        texts = [entry["statements"][s] for s in corpus.SIDES]
        texts += [t for s in corpus.SIDES for r in corpus.RELATIONS for t in entry["replies"][s][r]]
        assert all(pattern.search(t) for t in texts), entry["topic"]  # each names its topic
        for t in texts:
            assert not pattern.search(corpus.remove_topic(t, entry["terms"]).replace("it", "")), t
    masked = corpus.remove_topic(
        "Nuclear power plants: nuclear is safe.", ["nuclear", "nuclear power"]
    )
    assert masked == "it plants: it is safe."  # the longest term first


def test_folds_are_disjoint_and_cover_every_test_topic():
    val, fold = corpus.split_topics(30, 0.2, 12, seed=3)
    assert len(val) == 6 and (fold[val] == -1).all()
    assert sorted(np.bincount(fold[fold >= 0]).tolist()) == [2] * 12
    again, _ = corpus.split_topics(30, 0.2, 12, seed=3)
    np.testing.assert_array_equal(val, again)
    with pytest.raises(DataError, match="train.folds"):
        corpus.check_sizes(10, 0.2, 9)


def _topic(name: str) -> dict:
    def replies() -> dict:
        return {r: [f"A {r} reply about {name}.", f"Another {r} reply about {name}."]
                for r in corpus.RELATIONS}  # fmt: skip

    return {"topic": name, "terms": [name], "statements": {"pro": f"{name} is good.",
            "con": f"{name} is bad."}, "replies": {"pro": replies(), "con": replies()}}  # fmt: skip


def test_a_corpus_file_loads_and_a_bad_one_names_its_field(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([_topic("tea"), _topic("coffee")]))
    c = corpus.load(folder)
    assert c.topics == ("tea", "coffee") and len(c) == 24 and c.form is None
    assert c.reply["removed"][0] == "A agree reply about it."
    broken = _topic("milk")
    del broken["replies"]["con"]["neutral"]
    for entries, says in (([broken], "a.json[0].replies.con.neutral"),
                          ([_topic("tea"), _topic("tea")], "appears twice"),
                          ({"topic": "tea"}, "list of topics")):  # fmt: skip
        (folder / "a.json").write_text(json.dumps(entries))
        with pytest.raises(DataError, match=re.escape(says)):
            corpus.read_topics(folder)
    (folder / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="not a JSON corpus file"):
        corpus.read_topics(folder)


# ---- the statistics and the simulation ---------------------------------------------------------


def test_auc_and_spearman_agree_with_scipy():
    rng = np.random.default_rng(0)
    relation = rng.integers(0, 3, 200)
    scores = relation + rng.normal(0, 2, 200)
    use = relation != 1
    u = sps.mannwhitneyu(scores[use][relation[use] == 2], scores[use][relation[use] == 0]).statistic
    pairs = (relation == 2).sum() * (relation == 0).sum()
    assert evaluate.auc(scores, relation) == pytest.approx(u / pairs)
    ranks = np.corrcoef(sps.rankdata(scores), sps.rankdata(relation))[0, 1]
    assert evaluate.rho(scores, relation) == pytest.approx(ranks)
    assert np.isnan(evaluate.auc(scores[relation == 2], relation[relation == 2]))


def _world(alpha: float, noise: float, seed: int, displaced: str = "both", posts: int = 20_000):
    relation = np.repeat([0, 1, 2], 10)
    return simulate.simulate(alpha, noise, 48, posts, np.arange(30), relation, seed, 0, displaced)


def test_at_alpha_one_the_count_tracks_the_effect_up_to_sampling_noise():
    for seed in range(3):
        w = _world(1.0, 0.0, seed)
        np.testing.assert_allclose(w.effect, w.exposure)
        assert evaluate.rho(w.count.astype(float), w.effect) > 0.97


def test_the_effect_follows_alpha_and_shows_in_disagreement():
    at_zero = [evaluate.rho(w.count.astype(float), w.effect)
               for w in (_world(0.0, 0.0, s) for s in range(20))]  # fmt: skip
    assert abs(np.mean(at_zero)) < 0.15  # the count knows nothing of the other drivers
    half = [np.corrcoef(w.effect, w.exposure)[0, 1] for w in (_world(0.5, 0, s) for s in range(20))]
    assert 0.55 < np.mean(half) < 0.85  # sqrt(1/2) expected
    w = _world(0.0, 0.0, 1)
    share = (w.relation == 2).mean(axis=1)
    assert evaluate.rho(share, w.effect) > 0.97  # without noise, stance follows the effect
    noisy = _world(0.0, 1.5, 1)
    assert evaluate.rho((noisy.relation == 2).mean(axis=1), noisy.effect) < 0.9
    same = _world(0.3, 0.5, 7)  # a seed draws the same world for every measure
    np.testing.assert_array_equal(same.post, _world(0.3, 0.5, 7).post)


@pytest.mark.parametrize("displaced, fixed", [("agree", 1), ("neutral", 0), ("both", None)])
def test_disagreement_displaces_what_the_structure_says(displaced, fixed):
    w = _world(0.0, 0.0, 2, displaced)
    share = np.stack([(w.relation == r).mean(axis=1) for r in range(3)])  # relation x period
    assert evaluate.rho(share[2], w.effect) > 0.97
    moved = [r for r in (0, 1) if r != fixed]
    for r in moved:  # what disagreement displaces falls as the effect rises
        assert evaluate.rho(share[r], w.effect) < -0.9
    if fixed is not None:  # the other stays a third
        np.testing.assert_allclose(share[fixed], 1 / 3, atol=0.02)
    zero = simulate.shares(np.zeros(1), displaced)
    np.testing.assert_allclose([zero[0][0], zero[1][0]], [1 / 3, 1 / 3])


# ---- parameters, spec and the decision rule -----------------------------------------------------


@pytest.mark.parametrize(
    "values, field",
    [({"part": "validity", "measure": "count"}, "measure"),
     ({"part": "validity", "alpha": 0.5}, "alpha"),
     ({"part": "simulation", "alpha": 0.5}, "noise"),
     ({"part": "simulation", "alpha": 0.5, "noise": 1}, "displaced"),
     ({"part": "validity", "displaced": "both"}, "displaced"),
     ({"part": "simulation", "alpha": 0.5, "noise": 1, "displaced": "agree", "text": "removed"},
      "text"),
     ({"alpha": 2.0}, "alpha")],
)  # fmt: skip
def test_params_name_the_field_that_does_not_fit(values, field):
    with pytest.raises(ValidationError, match=field):
        Params(**values)


def test_more_seeds_than_folds_is_refused_naming_the_field():
    study = get_study("disagreement")
    spec = spec_of(True, ("sweep.seeds=3",))
    with pytest.raises(SpecError, match="sweep.seeds"):
        study.check_spec(spec, None)


def test_comparisons_cover_each_lexicon_and_each_cell():
    spec = spec_of()
    names = {c.name for c in get_study("disagreement").comparisons(spec)}
    for m in LEXICONS:
        assert {f"chance_{m}", f"flat_{m}", f"emb_{m}", f"removed_{m}"} <= names
        for alpha in (0, 0.25, 0.5, 0.75, 1):
            for displaced in simulate.DISPLACED:
                assert f"rho_{m}_{verdict.tag(alpha, 1.5, displaced)}" in names
    deciding = {c.name: c.deciding for c in get_study("disagreement").comparisons(spec)}
    assert deciding["rho_vader_a0p5_n0p5_agree"] and deciding["chance_vader"]
    for reported in ("rho_vader_a1_n0p5_both", "rho_vader_a0p75_n0p5_agree",
                     "rho_stance_a0_n0p5_both", "chance_stance", "emb_vader"):  # fmt: skip
        assert not deciding[reported], reported  # the label does not read them


def _sim(measure: str, alpha: float, noise: float, decision: Decision) -> tuple:
    return f"rho_{measure}_{verdict.tag(alpha, noise, 'both')}", alpha, noise, measure, decision


def _judged(part1: dict[str, Decision], part2: list[tuple]) -> dict:
    out = judged(part1)
    for name, alpha, noise, measure, decision in part2:
        j = judged({name: decision})[name]
        cell = {"part": "simulation", "alpha": alpha, "noise": noise, "displaced": "both"}
        compare = type(j.compare)(name, cell | {"measure": "count"}, cell | {"measure": measure})
        out[name] = type(j)(compare, None, 1.0, 1.0, 0.05, decision)
    return out


B, A, U, NI, EQ = (Decision.B_BETTER, Decision.A_BETTER, Decision.UNDECIDED,
                   Decision.NON_INFERIOR, Decision.EQUIVALENT)  # fmt: skip
WORKS = {"chance_vader": B, "removed_vader": NI, "chance_nrc": U}
FAILS = {"chance_vader": A, "chance_nrc": U, "flat_nrc": EQ}
WINS = [_sim("vader", 0.0, 0.5, B), _sim("nrc", 0.5, 0.5, B), _sim("vader", 0.5, 0.5, U),
        _sim("vader", 0.75, 0.5, A)]  # fmt: skip
LOSES = [_sim("vader", 0.0, 0.5, A), _sim("nrc", 0.0, 0.5, A), _sim("vader", 0.5, 0.5, U)]


@pytest.mark.parametrize(
    "part1, part2, held, says",
    [(WORKS, WINS, False, "Overturned"),
     (FAILS, WINS, None, "Part 1 (real text) held"),
     (WORKS, LOSES, None, "Part 2 (simulation) held"),
     (FAILS, LOSES, True, "Held"),
     ({"chance_vader": U}, LOSES, True, "Held"),
     ({"chance_vader": U}, [_sim("vader", 0.0, 0.5, B), _sim("vader", 0.5, 0.5, U)], None,
      "better than the count in 1 and the count beats every lexicon index in 0")],
)  # fmt: skip
def test_decide(part1, part2, held, says):
    label, why = verdict.decide(_judged(part1, part2))
    assert label is held and says in why, why
    assert "Caveat: part 2 is a simulation" in why


# ---- a trial and the served scorer --------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    study = get_study("disagreement")
    return study.prepare_data(spec_of(True))


def test_a_validity_trial_reports_auc_per_fold_and_the_champion_checkpoint(data):
    p = Params(measure="combined", folds=2)
    ctx = Reported(params=p, data=data, seed=1)
    get_study("disagreement").train(ctx)
    ((metrics, checkpoint),) = ctx.reports
    c = data["corpus"]
    fold = data["fold"][c.topic] == 1
    s = data["weights"]["present"].score(data["scores"]["present"])
    assert metrics["test_auc"] == pytest.approx(evaluate.auc(s[fold], c.relation[fold]))
    assert metrics["test_auc_above_chance"] == pytest.approx(metrics["test_auc"] - 0.5)
    assert {"test_auc_explicit", "test_auc_polite", "test_para_rho", "val_rho"} <= set(metrics)
    model = Scorer(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    assert model.weights("pair") == data["weights"]["present"]
    assert model.weights("text") == data["weights"][evaluate.TEXT_ONLY]


def test_each_seed_tests_one_fold_and_the_folds_cover_the_test_topics(data):
    c = data["corpus"]
    masks = [evaluate.in_fold(data, seed, 2) for seed in range(2)]
    assert not (masks[0] & masks[1]).any()
    np.testing.assert_array_equal(masks[0] | masks[1], ~np.isin(c.topic, data["val_topics"]))
    np.testing.assert_array_equal(evaluate.in_fold(data, 3, 2), masks[1])  # seed % folds


def test_a_simulation_trial_pairs_its_measures_on_one_world(data):
    runs = {}
    for m in ("count", "vader"):
        p = Params(part="simulation", measure=m, alpha=1.0, noise=0.5, displaced="both",
                   periods=12, posts=300, folds=2)  # fmt: skip
        ctx = Reported(params=p, data=data, seed=4)
        get_study("disagreement").train(ctx)
        runs[m] = ctx.reports[0][0]
    assert runs["count"]["test_rho_count"] == pytest.approx(1.0)
    assert runs["count"]["test_rho"] > 0.5  # alpha = 1: the count follows the effect
    assert set(runs["vader"]) == {"val_rho", "test_rho", "val_rho_count", "test_rho_count"}


def _scorer() -> Scorer:
    text = Weights(LEXICONS, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (4.0, 0.0, 0.0), -1.0)
    pair = Weights((*LEXICONS, "stance"), (0.0,) * 4, (1.0,) * 4, (0.0, 0.0, 0.0, 5.0), -2.0)
    saved = state(pair, text)
    model = Scorer(saved["model_config"])
    model.load_state_dict(saved["model"])
    return model


def test_the_endpoint_scores_texts_and_gives_each_period_its_interval():
    request = endpoint.ScoreRequest(texts=[
        {"text": "A horrible, cruel, disgusting plan.", "period": "2021-01"},
        {"text": "A lovely plan.", "period": "2021-01"},
        {"text": "A plan.", "period": "2021-02"},
        "No period here.",
        {"text": "Tea is good.", "reply_to": "Tea is bad.", "period": "2021-02"},
    ])  # fmt: skip
    answer = endpoint.ScoreResponse.model_validate(endpoint.answer(_scorer(), request))
    texts = answer.texts
    vader = np.array([t.vader for t in texts[:4]])
    np.testing.assert_allclose([t.score for t in texts[:4]], 1 / (1 + np.exp(-(4 * vader - 1))))
    assert texts[0].score > texts[1].score and texts[3].period is None
    assert texts[4].stance is not None and texts[0].stance is None
    assert texts[4].score == pytest.approx(1 / (1 + np.exp(-(5 * texts[4].stance - 2))))
    first, second = answer.periods
    assert (first.period, first.texts, second.texts) == ("2021-01", 2, 2)
    mean, half = np.mean([texts[0].score, texts[1].score]), None
    half = sps.t.ppf(0.975, 1) * np.std([texts[0].score, texts[1].score], ddof=1) / np.sqrt(2)
    assert first.index == pytest.approx(mean) and first.ci_high == pytest.approx(mean + half)


@pytest.mark.parametrize(
    "body, says",
    [({"texts": []}, "texts"), ({"texts": ["  "]}, "texts.0"), ({"texts": ["x" * 2001]}, "texts.0"),
     ({"texts": [{"text": "ok", "mood": "x"}]}, "mood"), ({"texts": [3]}, "texts.0"),
     ({}, "texts")],
)  # fmt: skip
def test_the_request_schema_names_the_bad_field(body, says):
    with pytest.raises(ValidationError) as err:
        endpoint.ScoreRequest.model_validate(body)
    assert says in str(err.value)


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disagreement_smoke(smoke_sweep):
    return smoke_sweep("disagreement")  # shared with tests/test_every_study.py


@pytest.mark.slow
def test_the_smoke_sweep_logs_a_run_per_cell_and_serves_its_scorer(disagreement_smoke, ray_session):
    uri, _, _ = disagreement_smoke
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("disagreement")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    sims = {(r.data.params["alpha"], r.data.params["measure"], r.data.params["seed"])
            for r in runs if r.data.params.get("part") == "simulation"}  # fmt: skip
    assert len(sims) == 2 * 3 * 2  # alpha x measure x seed, one child run each
    version = client.get_model_version_by_alias("disagreement", "champion")
    params = client.get_run(version.run_id).data.params
    assert (params["measure"], params["text"]) == ("combined", "present")
    args = {"model": "disagreement@champion", "tracking_uri": uri,
            "ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 1}  # fmt: skip
    with served_app(args, "disagreement", timeout_s=180) as base:
        status, meta = http_json("GET", f"{base}/metadata", timeout=60)
        assert status == 200, meta
        body = meta["endpoints"]["score"]["request"]["examples"][0]  # as the README
        status, answer = http_json("POST", f"{base}/score", body, timeout=120)
        assert status == 200, answer
        assert len(answer["texts"]) == 3 and [p["period"] for p in answer["periods"]] == [
            "2021-03", "2021-04"]  # fmt: skip
        assert answer["texts"][0]["stance"] is not None and answer["texts"][1]["stance"] is None
        for bad, where in (({"texts": []}, "texts"), ({"texts": [{"txt": "a"}]}, "texts")):
            status, answer = http_json("POST", f"{base}/score", bad, timeout=60)
            assert status == 422 and where in json.dumps(answer), answer

"""Study beliefs: triplets as the released code builds them, the paper's prediction rule on
hand-made vectors, d_rel, the split by proposition, the votes-file path, the encoder (offline
from its package; cached lower layers give the whole encoder's output), the decision rule,
and `skeptic run beliefs --smoke` end to end (shared Ray, real MLflow store) with the
champion served over HTTP. The shipped propositions: tests/test_beliefs_propositions.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from netutil import http_json, served_app
from reported import Reported, judged

from jobs.beliefs import evaluate, verdict
from jobs.beliefs.arms import Arm, stage_result
from jobs.beliefs.encoder import SentenceEncoder, lower_states, pretrained
from jobs.beliefs.study import BeliefsStudy, Params
from jobs.beliefs.triplets import cooccurrence, opposite, triplets
from jobs.beliefs.votes import AGREE, Votes, load_votes, split_propositions
from skeptic.api import DataError, Decision, SpecError
from skeptic.schema import Tag
from skeptic.spec import load_spec


def _votes(rows: list[tuple[int, int, bool]], n_props: int = 6) -> Votes:
    user, prop, pro = (np.array(col) for col in zip(*rows))
    return Votes([f"p{i}" for i in range(n_props)], user, prop, pro.astype(bool))


# ---- triplets, the rule, d_rel, the split -----------------------------------------------------


def test_triplets_take_positives_from_a_holder_and_always_the_exact_opposite():
    votes = _votes([(0, 0, True), (0, 1, False), (0, 2, True), (1, 0, False), (1, 3, True),
                    (1, 4, True), (2, 0, True), (2, 5, False)])  # fmt: skip
    together = cooccurrence(votes.user, votes.belief)
    rows = triplets(together, np.random.default_rng(0))
    held = {u: set(votes.belief[votes.user == u]) for u in set(votes.user.tolist())}
    for anchor, pos, neg in rows:
        assert any({anchor, pos} <= beliefs for beliefs in held.values()), (anchor, pos)
    for anchor in set(rows[:, 0].tolist()):
        negatives = set(rows[rows[:, 0] == anchor, 2].tolist())
        assert opposite(anchor) in negatives
        assert negatives - {opposite(anchor)} <= set(together.get(opposite(anchor), []))
    # belief 0 (p0 Pro) is held by users 0 and 2: 3 positives, and its opposite (1) by user 1,
    # whose other beliefs (6, 8) are the other negatives: 3 x 3 triplets
    assert (rows[:, 0] == 0).sum() == 9


def test_no_held_out_proposition_leaks_into_training_triplets():
    study = BeliefsStudy()
    p = Params(users=80, votes_per_user=20)
    votes = study._votes(p, 0, {})
    train_p, _, _ = split_propositions(len(votes.titles), 0, 5, 0)
    train = votes.subset(np.isin(votes.prop, train_p))
    rows = triplets(cooccurrence(train.user, train.belief), np.random.default_rng(0))
    assert len(rows) > 100
    assert set((rows // 2).ravel().tolist()) <= set(train_p.tolist())


def test_the_split_is_by_proposition_and_the_test_folds_cover_every_one():
    tests = []
    for fold in range(5):
        train, val, test = split_propositions(164, fold, 5, seed=0)
        assert not (set(train) & set(val)) and not (set(train) & set(test))
        assert not (set(val) & set(test))
        assert len(train) + len(val) + len(test) == 164
        tests += test.tolist()
    assert sorted(tests) == list(range(164))
    assert not np.array_equal(split_propositions(164, 0, 5, 0)[2],
                              split_propositions(164, 0, 5, 1)[2])  # fmt: skip


def test_the_prediction_rule_and_d_rel_on_hand_made_vectors():
    # statements 0/1: p0 Pro/Con ... ; user 0 holds p0 Pro and p1 Pro
    emb = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [4.0, 2.0], [1.0, 1.0], [3.0, 1.0]])
    train = _votes([(0, 0, True), (0, 1, True)], n_props=3)
    held = _votes([(0, 2, True), (1, 2, False)], n_props=3)  # user 1 has no training vote
    pred = evaluate.predict(emb, train, held, n_users=2)
    # u = (0, 1): Pro (1, 1) at 1, Con (3, 1) at 3 -> Pro; d_rel = |1 - 3| / 1 = 2
    assert pred.pro.tolist() == [True] and pred.truth.tolist() == [True]
    assert pred.d_rel.tolist() == pytest.approx([2.0]) and pred.gap.tolist() == pytest.approx([2.0])
    assert evaluate.relative_dissonance(np.array([0.0, 2.0]), np.array([1.0, 3.0])).tolist() == [
        0.0, 0.5]  # fmt: skip


def test_accuracy_by_dissonance_quintile_and_its_slope():
    truth = np.ones(10, dtype=bool)
    pro = np.array([False, False, True, False, True, True, True, True, True, True])
    pred = evaluate.Predicted(pro, truth, d_rel=np.arange(10, dtype=float))
    out = evaluate.by_dissonance(pred)
    assert [out[f"test_acc_q{i}"] for i in range(1, 6)] == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert out[evaluate.SLOPE] == pytest.approx(np.polyfit(range(1, 6), [0, 0.5, 1, 1, 1], 1)[0])


def test_baselines_user_and_group_majority():
    train = _votes([(0, 0, True), (0, 1, True), (0, 2, False), (1, 0, False), (1, 1, False)])
    held = _votes([(0, 3, True), (1, 3, True)])
    assert evaluate.baseline("user_majority", train, held, 2, 0).pro.tolist() == [True, False]
    assert evaluate.baseline("group_majority", train, held, 2, 0).pro.tolist() == [False, False]


# ---- a real votes file -------------------------------------------------------------------------


def _votes_table(n_users: int = 30, n_props: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"d{q}", "Pro" if rng.random() < 0.5 else "Con", f"Debate number {q}")
            for u in range(n_users) for q in rng.choice(n_props, 6, replace=False)]  # fmt: skip
    return pd.DataFrame(rows, columns=["user", "proposition", "stance", "text"])


def test_a_votes_file_loads_as_parquet_and_csv(tmp_path):
    frame = _votes_table()
    frame.to_parquet(tmp_path / "votes.parquet")
    frame.to_csv(tmp_path / "votes.csv", index=False)
    a, b = load_votes(tmp_path / "votes.parquet"), load_votes(tmp_path / "votes.csv")
    assert a.titles == b.titles and len(a.titles) == 10 and a.n_users == 30
    assert np.array_equal(a.pro, (frame["stance"] == "Pro").to_numpy())
    assert a.statements()[0] == AGREE + a.titles[0]


@pytest.mark.parametrize(("edit", "says"), [
    (lambda f: f.drop(columns="text"), "missing column"),
    (lambda f: f.assign(stance=["maybe"] + list(f["stance"][1:])), "row 2, column stance"),
    (lambda f: f.assign(text=[""] + list(f["text"][1:])), "row 2, column text"),
])  # fmt: skip
def test_a_broken_votes_file_names_the_row_and_column(tmp_path, edit, says):
    edit(_votes_table()).to_csv(tmp_path / "votes.csv", index=False)
    with pytest.raises(DataError, match=says):
        load_votes(tmp_path / "votes.csv")


def test_a_votes_file_needs_data_name_table_and_no_oracle_arm(tmp_path):
    _votes_table().to_csv(tmp_path / "votes.csv", index=False)
    study = BeliefsStudy()
    path = tmp_path / "votes.csv"
    spec = load_spec("beliefs", study.defaults, Params, sets=[f"data.path={path}", "data.name=table"])
    with pytest.raises(SpecError, match="sweep.arms.oracle"):
        study.check_spec(spec, study.check_data(spec))
    with pytest.raises(SpecError, match="data.name"):
        study.check_data(load_spec("beliefs", study.defaults, Params, sets=["data.name=digits"]))


# ---- the encoder -------------------------------------------------------------------------------

OFFLINE = """
import torch
from jobs.beliefs.encoder import pretrained, tokens, mean_pool
bert = pretrained()
enc = tokens(["I agree with the following: God really exists"])
with torch.no_grad():
    out = bert(**enc).last_hidden_state
print(tuple(mean_pool(out, enc["attention_mask"]).shape))
"""


def test_the_encoder_loads_offline_from_its_package_with_the_network_pointing_nowhere():
    nowhere = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "http_proxy": nowhere,
            "https_proxy": nowhere, "HF_ENDPOINT": nowhere, "NO_PROXY": ""}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", OFFLINE], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(1, 384)"


@pytest.fixture(scope="module")
def bert():
    return pretrained()


def test_cached_lower_layers_give_the_whole_encoders_output(bert):
    texts = ["I agree with the following: Taxes should be lowered",
             "I disagree with the following: Cats are better than dogs"]  # fmt: skip
    arm = Arm("frozen", lower_states(bert, texts, first_trained=4), texts, torch.device("cpu"))
    config = {"bert": bert.config.to_dict(), "head": False}
    whole = SentenceEncoder(config).eval()
    whole.bert.load_state_dict(bert.state_dict(), strict=False)
    assert np.allclose(arm.embeddings(), whole.encode(texts).numpy(), atol=2e-2)


def test_a_trained_top_layer_round_trips_through_the_served_state(bert):
    texts = [f"I {w} with the following: Claim {i}" for i in range(4) for w in ("agree", "disagree")]
    arm = Arm("top", lower_states(bert, texts, first_trained=5), texts, torch.device("cpu"))
    with torch.no_grad():
        for param in arm.top.parameters():
            param.add_(0.01 * torch.randn_like(param))
    state = arm.state(pro_scale=2.0)
    served = BeliefsStudy().build_model(state["model_config"])
    served.load_state_dict(state["model"], strict=True)
    served.eval()  # as the pyfunc loader does
    assert served.pro_scale == 2.0
    assert np.allclose(served.encode(texts).numpy(), arm.embeddings(), atol=2e-2)


def test_a_trial_on_a_votes_file_reports_accuracy_dissonance_and_the_encoder(tmp_path):
    frame = _votes_table(n_users=40, n_props=10)
    frame.to_parquet(tmp_path / "votes.parquet")
    votes = load_votes(tmp_path / "votes.parquet")
    study = BeliefsStudy()
    p = Params(method="top", layers=1, epochs=1)
    cache = stage_result(study._texts(votes), p.layers)
    ctx = Reported(p, {"votes": votes, "split_seed": 0}, upstream={"lower": cache})
    study.train(ctx)
    metrics, state = ctx.reports[-1]
    for key in ("val_acc", "test_acc", "test_f1", "test_triplet_acc", evaluate.SLOPE):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert "test_para_acc" not in metrics  # a votes file has no paraphrases
    assert set(state) == {"model", "model_config"}


# ---- the decision ------------------------------------------------------------------------------


B, A, U, EQ = Decision.B_BETTER, Decision.A_BETTER, Decision.UNDECIDED, Decision.EQUIVALENT


@pytest.mark.parametrize(("tuned", "level", "group", "frozen", "held", "says"), [
    (B, U, B, U, False, "Overturned"),
    (B, U, U, B, None, "nor shown within"),
    (U, EQ, U, B, True, "Held"),
    (A, U, A, B, True, "Held"),
    (A, U, A, U, None, "neither the frozen nor the fine-tuned"),  # both fail: not "held"
    (U, EQ, U, U, None, "neither the frozen nor the fine-tuned"),
])  # fmt: skip
def test_decide(tuned, level, group, frozen, held, says):
    comparisons = judged({verdict.TUNED: tuned, verdict.LEVEL: level, verdict.VS_GROUP: group,
                           verdict.FROZEN_GROUP: frozen, verdict.DISSONANCE: B})  # fmt: skip
    label, why = verdict.decide(comparisons)
    assert label is held and says in why and "dissonance claim: supported" in why


def test_the_tuned_arm_is_full_where_the_sweep_has_it():
    assert verdict.tuned_arm({"full": {}, "frozen": {}}) == "full"
    tuned_is_b = {verdict.TUNED, verdict.VS_GROUP, verdict.DISSONANCE, verdict.VS_USER}
    assert {c.b["arm"] for c in verdict.comparisons("top2") if c.name in tuned_is_b} == {"top2"}
    assert next(c for c in verdict.comparisons("top2") if c.name == verdict.DISSONANCE).a is None


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beliefs_smoke(smoke_sweep):
    return smoke_sweep("beliefs")  # shared with tests/test_every_study.py


@pytest.mark.slow
def test_smoke_sweep_logs_every_trial_the_verdict_and_a_champion(beliefs_smoke):
    uri, folder, _ = beliefs_smoke
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("beliefs")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "sweep")
    trials = [r for r in runs if Tag.TRIAL_ID in r.data.tags]
    keys = sorted((t.data.params["method"], t.data.params["seed"]) for t in trials)
    assert keys == [(m, s) for m in ("frozen", "group_majority", "top") for s in ("0", "1")]
    assert all(t.data.tags[Tag.OUTCOME] == "completed" for t in trials)
    for t in trials:
        assert {"val_acc", "test_acc", "test_f1"} <= set(t.data.metrics), t.data.params
    top = [t for t in trials if t.data.params["method"] == "top"]
    assert all(evaluate.SLOPE in t.data.metrics and "train_fit_acc" in t.data.metrics for t in top)
    assert parent.data.tags[Tag.VERDICT] in ("held", "overturned", "undecided")
    assert Tag.decision(verdict.TUNED) in parent.data.tags
    version = client.get_model_version_by_alias("beliefs", "champion")
    champion = next(t for t in trials if t.info.run_id == version.run_id)
    assert champion.data.params["method"] in ("frozen", "top")
    report = next((folder / "runs" / "beliefs").glob("*/report"))
    assert "The paper beside this run" in (report / "report.md").read_text()
    assert (report / "accuracy_by_dissonance.png").is_file()


@pytest.mark.slow
def test_the_served_encoder_answers_text_over_http(beliefs_smoke, ray_session):
    uri, _, _ = beliefs_smoke
    args = {"model": "beliefs@champion", "tracking_uri": uri,
            "ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 1}  # fmt: skip
    with served_app(args, "beliefs", timeout_s=180) as base:
        body = {"beliefs": [AGREE + "The minimum wage should be raised",
                            "I disagree with the following: Taxes should be lowered"],
                "candidates": ["Universal healthcare should be provided by the state"],
                "nearest": 1}  # fmt: skip
        status, answer = http_json("POST", f"{base}/predict", body, timeout=120)
        assert status == 200, answer
        (pred,) = answer["predictions"]
        assert 0.0 <= pred["p_pro"] <= 1.0 and pred["stance"] in ("Pro", "Con")
        assert pred["d_rel"] == pytest.approx(
            abs(pred["d_pro"] - pred["d_con"]) / min(pred["d_pro"], pred["d_con"]), rel=1e-6)
        assert len(pred["nearest"]) == 1 and pred["nearest"][0]["belief"] in body["beliefs"]
        status, answer = http_json("POST", f"{base}/embed", {"statements": ["a", "b"]},
                                   timeout=120)
        assert status == 200 and answer["dim"] == 384 and len(answer["vectors"]) == 2
        for bad, where in (({**body, "beliefs": []}, "beliefs"),
                           ({**body, "candidates": ["ok", 3]}, "candidates.1"),
                           ({**body, "candidates": ["x" * 301]}, "candidates.0")):  # fmt: skip
            status, answer = http_json("POST", f"{base}/predict", bad, timeout=120)
            assert status == 422 and where in answer["detail"], answer

"""Study `consciousness`: the scenes (the target reads the cued slots only; the OOD split
shifts the distractors alone), the top-k selection (exactly k, gradients through the
straight-through path), random-k (uniform), the parameter budget, the spec checks, the
decision rule, the endpoint, and the smoke sweep served over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from netutil import http_json, served_app
from pydantic import ValidationError
from reported import Reported, judged
from scipy import stats as sps

from jobs.consciousness import endpoint, verdict
from jobs.consciousness.models import SceneNet, parameters, random_weights, topk_weights
from jobs.consciousness.scenes import (
    PIXELS,
    SHIFTED_DISTRACTORS,
    TRAIN_DISTRACTORS,
    cue_of,
    image_pools,
    make_scenes,
    splits,
    target,
)
from jobs.consciousness.study import Params, model_config
from skeptic.api import Decision, InvalidRequest
from skeptic.schema import Tag
from skeptic.spec import load_spec
from skeptic.study import get_study


def classes_of(scenes, pool) -> np.ndarray:
    """Each slot's digit class, found by matching its pixels against the pool's images."""
    lookup = {img.tobytes(): c for c, images in enumerate(pool) for img in images}
    flat = scenes.x[..., :PIXELS]
    return np.array([[lookup.get(s.tobytes(), -1) for s in scene] for scene in flat])


# ---- the scenes ----------------------------------------------------------------------------------


def test_image_pools_are_disjoint_and_hold_every_class():
    pools = image_pools(3)
    seen = {}
    for name, per_class in pools.items():
        assert len(per_class) == 10 and all(len(images) for images in per_class)
        for images in per_class:
            for img in images:
                assert seen.setdefault(img.tobytes(), name) == name, "an image in two pools"


@pytest.mark.parametrize("task", ["greater", "sum"])
def test_the_target_is_the_task_on_the_cued_slots_classes_only(task):
    pool = image_pools(0)["train"]
    cued = 2 if task == "greater" else 3
    scenes = make_scenes(pool, 400, 6, cued, task, np.random.default_rng(1))
    classes = classes_of(scenes, pool)
    assert (classes >= 0).all()
    picked = np.take_along_axis(classes, scenes.cued, axis=1)
    np.testing.assert_array_equal(target(task, picked), scenes.y)
    np.testing.assert_array_equal(cue_of(scenes.x), scenes.cued)
    assert 0.3 < scenes.y.mean() < 0.7  # both answers common


def test_changing_the_distractors_never_changes_the_target():
    pool = image_pools(0)["test"]
    kept = make_scenes(pool, 300, 6, 2, "greater", np.random.default_rng(5))
    for kw in ({"distractors": SHIFTED_DISTRACTORS}, {"invert": True}):
        shifted = make_scenes(pool, 300, 6, 2, "greater", np.random.default_rng(5), **kw)
        np.testing.assert_array_equal(shifted.y, kept.y)
        np.testing.assert_array_equal(shifted.cued, kept.cued)
        is_cued = np.zeros(kept.x.shape[:2], dtype=bool)
        np.put_along_axis(is_cued, kept.cued, True, axis=1)
        np.testing.assert_array_equal(shifted.x[is_cued], kept.x[is_cued])  # same cued digits
        assert not np.array_equal(shifted.x[~is_cued], kept.x[~is_cued])


def test_the_ood_split_is_disjoint_in_distractor_classes():
    sp = splits(2, 6, 2, "greater", (300, 100, 300))
    assert set(sp.ood) == {"classes", "inverted"}
    for shifted in sp.ood.values():  # the same scenes, distractors redrawn
        np.testing.assert_array_equal(shifted.y, sp.test.y)
        np.testing.assert_array_equal(shifted.cued, sp.test.cued)
    pools = image_pools(2)
    for scenes, pool, allowed in ((sp.train, "train", TRAIN_DISTRACTORS),
                                  (sp.test, "test", TRAIN_DISTRACTORS),
                                  (sp.ood["classes"], "test", SHIFTED_DISTRACTORS)):  # fmt: skip
        classes = classes_of(scenes, pools[pool])
        distractor = np.ones(classes.shape, dtype=bool)
        np.put_along_axis(distractor, scenes.cued, False, axis=1)
        assert set(np.unique(classes[distractor])) == set(allowed), pool


# ---- the selection -------------------------------------------------------------------------------


def test_topk_keeps_exactly_k_renormalised_and_passes_the_softmax_gradient():
    torch.manual_seed(0)
    scores = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, dtype=torch.float64)
    for k in (1, 2, 3, 7):
        w = topk_weights(scores, k)
        assert ((w > 0).sum(-1) == k).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(5, dtype=torch.float64))
        top = scores.detach().topk(k, -1).indices
        assert (w.gather(-1, top) > 0).all()
        (grad,) = torch.autograd.grad((w * g).sum(), scores)
        # straight-through: the gradient is the softmax's, checked by finite differences
        eps, numeric = 1e-6, torch.zeros_like(scores)
        soft = lambda s: (torch.softmax(s, -1) * g).sum()
        for i in range(5):
            for j in range(7):
                d = torch.zeros_like(scores)
                d[i, j] = eps
                numeric[i, j] = (soft(scores.detach() + d) - soft(scores.detach() - d)) / (2 * eps)
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)
        assert (grad != 0).all()  # every slot's score learns, selected or not


def test_random_k_selects_k_slots_uniformly():
    gen = torch.Generator().manual_seed(0)
    w = random_weights(torch.Size([6000, 6]), 2, torch.device("cpu"), gen)
    assert ((w > 0).sum(-1) == 2).all() and torch.allclose(w.sum(-1), torch.ones(6000))
    counts = (w > 0).sum(0).numpy()
    assert sps.chisquare(counts).pvalue > 1e-3, counts  # 2000 each, up to chance


def test_every_arm_has_the_same_parameter_budget():
    counts = {s: parameters(model_config(Params(select=s))) for s in
              ("dense", "soft", "topk", "random", "workspace")}  # fmt: skip
    assert counts["soft"] == counts["topk"] == counts["random"]
    for matched in ("dense", "workspace"):
        assert abs(counts[matched] - counts["soft"]) / counts["soft"] < 0.01, counts


def test_each_workspace_slot_writes_its_top_k():
    model = SceneNet(model_config(Params(select="workspace", k=1, memory=2)))
    x = torch.as_tensor(splits(0, 6, 2, "greater", (50, 10, 10)).train.x)
    weights = model.attend(x)[1]
    read = (weights > 0).sum(-1)
    assert ((read >= 1) & (read <= 2)).all()  # two workspace slots, one scene slot each
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))


def test_the_warm_up_reads_every_slot_softly():
    model = SceneNet(model_config(Params(select="topk", k=1)))
    x = torch.as_tensor(splits(0, 6, 2, "greater", (20, 10, 10)).train.x)
    assert ((model.attend(x)[1] > 0).sum(-1) == 1).all()
    model.warming = True
    assert ((model.attend(x)[1] > 0).sum(-1) == 6).all()


@pytest.mark.parametrize(("values", "field"), [
    ({"task": "greater", "cued": 3}, "cued"),
    ({"slots": 3, "cued": 3, "task": "sum"}, "cued"),
    ({"select": "topk", "k": 7}, "k"),
    ({"warmup": 15}, "warmup"),
])  # fmt: skip
def test_params_name_the_field_that_does_not_fit(values, field):
    with pytest.raises(ValidationError, match=f"{field}:"):
        Params(**values)


def test_a_trial_reports_accuracy_drop_selection_and_its_model():
    p = Params(scenes=400, epochs=2, warmup=1)
    ctx = Reported(params=p, data={}, seed=0)
    get_study("consciousness").train(ctx)
    assert len(ctx.reports) == 2
    metrics, state = ctx.reports[-1]
    for shift in ("classes", "inverted"):
        assert metrics[f"ood_{shift}_drop"] == pytest.approx(
            metrics["test_acc"] - metrics[f"ood_{shift}_acc"])
        assert f"ood_{shift}_sel_recall" in metrics
    assert {"val_acc", "test_sel_recall", "parameters"} <= set(metrics)
    assert "test_acc" not in ctx.reports[0][0]  # test numbers only at the end
    model = SceneNet(state["model_config"])
    model.load_state_dict(state["model"])


# ---- the decision rule ---------------------------------------------------------------------------


B, A, U, NI = Decision.B_BETTER, Decision.A_BETTER, Decision.UNDECIDED, Decision.NON_INFERIOR


@pytest.mark.parametrize(("drops", "ids", "chosen", "held", "says"), [
    ((B, B), (NI, NI), (B, B), False, "Overturned"),
    ((B, B), (U, NI), (B, B), None, "not shown smaller"),  # a drop bought by a poor fit
    ((A, U), (NI, NI), (B, B), True, "Held"),
    ((A, B), (NI, NI), (B, B), None, "depends on"),
    ((U, U), (NI, NI), (B, B), None, "not shown smaller"),
])  # fmt: skip
def test_decide(drops, ids, chosen, held, says):
    names = {"drop_dense_classes": drops[0], "drop_soft_classes": drops[1],
             "id_dense": ids[0], "id_soft": ids[1],
             "ood_random_classes": chosen[0], "sel_random_classes": chosen[1]}  # fmt: skip
    label, why = verdict.decide(judged(names))
    assert label is held and says in why


def test_comparisons_cover_every_setting_at_k_true():
    study = get_study("consciousness")
    default = load_spec(study.name, study.defaults, Params)
    per_setting = 2 + 2 * 4  # id vs dense and soft; per shift: drop x2, random, selection
    assert len(study.comparisons(default)) == 2 * per_setting  # two tasks
    scaling = load_spec(study.name, study.defaults, Params,
                        preset=("scaling", study.presets["scaling"].spec))  # fmt: skip
    named = {c.name: c for c in study.comparisons(scaling)}
    assert len(named) == 3 * 2 * per_setting  # slots x cued (one task)
    c = named["drop_soft_n8_k3_inverted"]
    assert c.b == {"select": "topk", "k": 3, "warmup": 3, "task": "sum", "slots": 8, "cued": 3}
    assert c.a["select"] == "soft" and c.metric == "ood_inverted_drop" and not c.higher_is_better
    assert named["id_dense_n4_k2"].question == "non_inferiority"


# ---- the endpoint --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topk_model():
    torch.manual_seed(0)
    return SceneNet(model_config(Params(select="topk", k=2))).eval()


def test_the_answer_shows_the_selected_slots_and_their_weights(topk_model):
    request = endpoint.SceneRequest.model_validate(
        endpoint.SceneRequest.model_json_schema()["examples"][0])
    answer = endpoint.SceneResponse.model_validate(endpoint.answer(topk_model, request))
    assert len(answer.selected) == 2 and len(answer.weights) == 6
    assert sum(s.weight for s in answer.selected) == pytest.approx(1.0)
    assert sum(w > 0 for w in answer.weights) == 2
    assert answer.question == "is the digit in slot 0 greater than the digit in slot 1?"


@pytest.mark.parametrize(("change", "says"), [
    ({"cue": [0, 0]}, "cue: the cued slots must differ"),
    ({"cue": [0, 6]}, "cue: slot 6 is not in a scene of 6 slots"),
    ({"slots": [[[0.0] * 8] * 7] * 6}, "slots.0"),
    ({"slots": [[[2.0] * 8] * 8] * 6}, "less than or equal to 1"),
])  # fmt: skip
def test_the_request_schema_names_the_bad_field(change, says):
    example = endpoint.SceneRequest.model_json_schema()["examples"][0]
    with pytest.raises(ValidationError, match=says.replace(".", r"\.")):
        endpoint.SceneRequest.model_validate({**example, **change})


def test_a_scene_the_model_cannot_take_is_an_invalid_request(topk_model):
    request = endpoint.SceneRequest(slots=endpoint.example_images(5), cue=[0, 1])
    with pytest.raises(InvalidRequest, match="slots: this model reads scenes of 6 slots"):
        endpoint.answer(topk_model, request)


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consciousness_smoke(smoke_sweep):
    return smoke_sweep("consciousness")  # shared with tests/test_every_study.py


@pytest.mark.slow
def test_the_served_champion_answers_with_its_conscious_state(consciousness_smoke, ray_session):
    uri, _, _ = consciousness_smoke
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("consciousness", "champion")
    assert client.get_run(version.run_id).data.params["select"] == "topk"
    args = {"model": "consciousness@champion", "tracking_uri": uri,
            "ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 1}  # fmt: skip
    with served_app(args, "consciousness", timeout_s=180) as base:
        status, meta = http_json("GET", f"{base}/metadata", timeout=60)
        assert (meta["params"]["slots"], meta["params"]["cued"]) == (6, 2), meta
        body = meta["endpoints"]["predict"]["request"]["examples"][0]  # as the README
        status, answer = http_json("POST", f"{base}/predict", body, timeout=120)
        assert status == 200, answer
        assert [s["slot"] for s in answer["selected"]] == sorted(
            range(6), key=lambda i: -answer["weights"][i])[:2]
        assert answer["model"] == "consciousness" and 0 <= answer["p_yes"] <= 1
        for bad, where in (({**body, "slots": endpoint.example_images(5)}, "slots: this model"),
                           ({**body, "cue": [1, 1]}, "cue"), ({**body, "cue": "0"}, "cue")):
            status, answer = http_json("POST", f"{base}/predict", bad, timeout=120)
            assert status == 422 and where in answer["detail"], answer
        assert Tag.TRIAL_ID in client.get_run(version.run_id).data.tags

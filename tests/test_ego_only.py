"""Study `ego_only`: tube masking, the MAE (its loss falls on a tiny batch it can overfit),
the segmenter's per-frame output, the labelled subsets, the stages (exo MAE continued by the
ego stage), a trial's reports, the spec checks, the decision rule, the endpoint's clip
handling, and the smoke sweep served over real HTTP. The clip generator and the folder path
are tests/test_ego_only_clips.py; the segment metrics tests/test_ego_only_metrics.py."""

from __future__ import annotations

import base64
import io

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from netutil import http_json, served_app
from pydantic import ValidationError
from reported import Reported, judged

from jobs.ego_only import endpoint, verdict
from jobs.ego_only.clips import ACTIONS, generate
from jobs.ego_only.data import Sizes, ego_clips, labelled
from jobs.ego_only.models import MAE, Segmenter, VideoViT, grid, patchify, visible_tokens
from jobs.ego_only.study import Params, encoder_config, model_config, pretrained
from skeptic.api import Decision, InvalidRequest
from skeptic.schema import Tag
from skeptic.spec import load_spec
from skeptic.stages import RunningStage
from skeptic.study import get_study

TINY = {"clips": 24, "dim": 16, "depth": 1, "heads": 2, "pretrain_epochs": 1, "batch": 8,
        "steps": 10, "finetune_batch": 4, "labelled": 0.5}  # fmt: skip
CPU = torch.device("cpu")


# ---- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("masking", "ratio"), [("tube", 0.75), ("tube", 0.9), ("random", 0.75)])
def test_masking_keeps_the_ratio_and_tubes_keep_the_same_places(masking, ratio):
    steps, places = 8, 16
    keep = visible_tokens(64, steps, places, ratio, masking, torch.Generator().manual_seed(0))
    assert keep.shape[1] == round(steps * places * (1 - ratio)) or masking == "tube"
    if masking == "tube":
        where = keep.reshape(64, steps, -1)
        assert where.shape[2] == max(1, round(places * (1 - ratio)))
        assert (where % places == where[:, :1] % places).all()  # the same places every step
        assert ((where // places) == torch.arange(steps)[None, :, None]).all()
    assert (keep.diff(dim=1) > 0).all()  # sorted, no token twice
    assert len({tuple(k.tolist()) for k in keep}) > 30  # each clip draws its own mask


def test_patchify_cuts_tubelets_in_the_embedding_order():
    config = {"frames": 4, "size": 16, "patch": 8, "tubelet": 2}
    frames = torch.arange(4 * 16 * 16 * 3, dtype=torch.float32).reshape(1, 4, 16, 16, 3)
    tubes = patchify(frames, config)
    assert tubes.shape == (1, *grid(config), 2 * 8 * 8 * 3)
    # step 1, place 3 (bottom right): frames 2-3, rows 8-15, columns 8-15
    np.testing.assert_array_equal(tubes[0, 1, 3].reshape(2, 8, 8, 3), frames[0, 2:4, 8:, 8:])


def test_the_mae_loss_falls_on_a_batch_it_can_overfit():
    torch.manual_seed(0)
    config = encoder_config(Params(dim=32, depth=1, heads=2))
    mae = MAE(VideoViT(config), 0.75)
    x = torch.from_numpy(generate("ego", 4, seed=1).x).float() / 255
    opt = torch.optim.AdamW(mae.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = mae.loss(x, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses


def test_the_segmenter_labels_every_frame():
    model = Segmenter(model_config(Params(dim=16, depth=1, heads=2), list(ACTIONS)))
    out = model(torch.rand(3, 16, 32, 32, 3))
    assert out.shape == (3, 16, len(ACTIONS))


def test_a_smaller_labelled_fraction_is_a_subset_of_a_larger_one():
    (train,) = ego_clips(Sizes(100, 16, 32), 0, {}, "train")
    few, more = labelled(train, 0.05, seed=3), labelled(train, 0.2, seed=3)
    assert (len(few), len(more)) == (5, 20)
    assert {c.tobytes() for c in few.x} <= {c.tobytes() for c in more.x}
    assert len(labelled(train, 0.05, seed=4).x) == 5 and not np.array_equal(
        labelled(train, 0.05, seed=4).x, few.x)  # fmt: skip


def test_the_test_clips_show_backgrounds_no_training_clip_shows():
    s = Sizes(40, 16, 32)
    parts = dict(zip(("train", "val", "test"), ego_clips(s, 0, {}, "train", "val", "test")))
    assert [len(parts[p]) for p in ("train", "val", "test")] == [40, s.val, s.test]
    assert not np.array_equal(parts["val"].x[0], parts["train"].x[0])


@pytest.mark.parametrize(("values", "field"), [
    ({"size": 36}, "size"),
    ({"frames": 15}, "frames"),
    ({"dim": 30, "heads": 4}, "heads"),
    ({"labelled": 0}, "labelled"),
    ({"exo": "kinetics"}, "exo"),
])  # fmt: skip
def test_params_name_the_field_that_does_not_fit(values, field):
    with pytest.raises(ValidationError, match=field):
        Params(**values)


# ---- stages and a trial --------------------------------------------------------------------------


def run_stage(name: str, params: Params, upstream: dict) -> dict:
    return get_study("ego_only").run_stage(
        name, RunningStage(name, params.model_dump(), 0, CPU, {}, upstream)
    )


def test_the_ego_stage_continues_the_exo_mae_and_a_trial_starts_from_it():
    p = Params(exo="mae", ego_mae=True, **TINY)
    exo = run_stage("exo", p, {})
    assert len(exo["losses"]) == 1 and set(exo) == {"encoder", "mae", "losses"}
    ego = run_stage("ego", p, {"exo": exo})
    fresh = run_stage("ego", Params(exo="none", ego_mae=True, **TINY), {"exo": {}})
    for name in ("pos_time", "blocks.0.attn.qkv.weight"):
        assert not torch.equal(ego["encoder"][name], exo["encoder"][name])  # trained further
        assert not torch.equal(ego["encoder"][name], fresh["encoder"][name])  # from exo's
    assert pretrained({"exo": exo, "ego": ego}) is ego["encoder"]
    assert pretrained({"exo": exo, "ego": {}}) is exo["encoder"]
    assert pretrained({"exo": {}, "ego": {}}) is None
    assert run_stage("ego", Params(exo="mae", ego_mae=False, **TINY), {"exo": exo}) == {}


def test_the_supervised_exo_stage_trains_the_encoder_on_exo_labels():
    p = Params(exo="supervised", ego_mae=False, **TINY)
    result = run_stage("exo", p, {})
    assert np.isfinite(result["losses"]).all()
    before = VideoViT(encoder_config(p)).state_dict()
    assert set(result["encoder"]) == set(before)


def test_a_trial_reports_segment_metrics_and_its_model():
    p = Params(exo="none", ego_mae=False, **TINY)
    ctx = Reported(params=p, data={}, seed=0)
    get_study("ego_only").train(ctx)
    assert len(ctx.reports) == 10
    metrics, state = ctx.reports[-1]
    for split in ("val", "test"):
        for key in ("frame_acc", "f1_25", "f1_50", "edit", "map"):
            assert 0 <= metrics[f"{split}_{key}"] <= 1 or np.isnan(metrics[f"{split}_{key}"])
    assert "test_f1_50" not in ctx.reports[0][0]  # test numbers only at the end
    assert metrics["labelled_clips"] == 12
    model = Segmenter(state["model_config"])
    model.load_state_dict(state["model"])


# ---- the decision rule ---------------------------------------------------------------------------


B, A, U, NI = Decision.B_BETTER, Decision.A_BETTER, Decision.UNDECIDED, Decision.NON_INFERIOR


def decisions(ni: Decision, sup: Decision, scratch: Decision, tags=("l2", "l10")) -> dict:
    out = {}
    for t in tags:
        for arm in verdict.EXO_ARMS:
            out[f"ni_{arm}_{t}"], out[f"sup_{arm}_{t}"] = ni, sup
        out[f"scratch_{t}"] = scratch
    return out


@pytest.mark.parametrize(("ni", "sup", "scratch", "held", "says"), [
    (NI, U, B, False, "Overturned"),
    (NI, B, B, False, "Overturned"),
    (U, A, B, True, "Held"),
    (U, A, U, None, "not shown to beat training from scratch"),  # the MAE learnt nothing
    (NI, U, U, None, "not shown to beat training from scratch"),
    (U, U, B, None, "nor shown worse"),
])  # fmt: skip
def test_decide(ni, sup, scratch, held, says):
    label, why = verdict.decide(judged(decisions(ni, sup, scratch)))
    assert label is held and says in why


def test_decide_says_when_the_answer_depends_on_the_labels():
    names = decisions(NI, U, B, tags=("l10",)) | decisions(U, A, B, tags=("l2",))
    label, why = verdict.decide(judged(names))
    assert label is None and "depends on how many labels" in why and "l10" in why


def test_comparisons_cover_every_fraction_and_only_the_arms_swept():
    study = get_study("ego_only")
    named = {c.name: c for c in study.comparisons(load_spec(study.name, study.defaults, Params))}
    assert len(named) == 2 * (2 * 3 + 1)  # per fraction: ni + sup per exo arm, scratch
    c = named["ni_exo_ego_mae_l2"]
    assert c.a == {"exo": "mae", "ego_mae": True, "labelled": 0.02}
    assert c.b == {"exo": "none", "ego_mae": True, "labelled": 0.02}
    assert c.question == "non_inferiority" and c.margin == verdict.MARGIN
    smoke = load_spec(study.name, study.defaults, Params, smoke=study.smoke)
    assert sorted(c.name for c in study.comparisons(smoke)) == [
        "ni_exo_mae_l25", "scratch_l25", "sup_exo_mae_l25"]  # fmt: skip


# ---- the endpoint --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(model_config(Params(dim=16, depth=1, heads=2), list(ACTIONS))).eval()


def clip(frames: int = 16, side: int = 32) -> np.ndarray:
    return generate("ego", 1, frames=frames, size=side, seed=2, pool="test").x[0]


def check_answer(answer: dict, frames: int) -> None:
    out = endpoint.ClipResponse.model_validate(answer)
    assert out.frames == frames and len(out.labels) == frames
    assert set(out.labels) <= set(ACTIONS)
    for s in out.segments:
        assert 0 <= s.start < s.end <= frames and s.label != "idle" and 0 <= s.score <= 1
        assert set(out.labels[s.start : s.end]) >= {s.label}


def test_a_clip_as_frames_or_as_a_video_gets_labels_and_segments(segmenter):
    x = clip(40, 48)  # longer than the window, larger than the model's frames
    check_answer(endpoint.segment(segmenter, endpoint.ClipRequest(frames=x.tolist())), 40)
    buffer = io.BytesIO()
    iio.imwrite(buffer, x, extension=".gif", loop=0)
    video = base64.b64encode(buffer.getvalue()).decode()
    check_answer(endpoint.segment(segmenter, endpoint.ClipRequest(video=video)), 40)


def test_long_clips_are_read_in_windows_whose_overlap_is_averaged(segmenter):
    x = clip(20)
    probs = endpoint.clip_probs(segmenter, x)
    first = endpoint.clip_probs(segmenter, x[:16])
    np.testing.assert_allclose(probs[:4], first[:4], atol=1e-6)  # only the first window
    assert probs.shape == (20, len(ACTIONS))
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize(("request_", "says"), [
    ({"frames": clip(8).tolist()}, "frames: this model reads clips of at least 16 frames, got 8"),
    ({"frames": [clip(16)[0].tolist(), clip(16)[0][:5].tolist()] * 8}, "frames: every frame"),
    ({"frames": np.zeros((1, 257, 8, 3), np.uint8).tolist()}, "frames: sides of at most 256"),
    ({"frames": clip(16)[..., :2].tolist()}, "frames: a T x H x W x 3 array"),
    ({"video": "not base64!"}, "video: not base64"),
    ({"video": base64.b64encode(b"GIF89a garbage").decode()}, "video: not a readable .gif"),
])  # fmt: skip
def test_a_clip_the_model_cannot_take_is_an_invalid_request(segmenter, request_, says):
    with pytest.raises(InvalidRequest, match=says):
        endpoint.segment(segmenter, endpoint.ClipRequest(**request_))


@pytest.mark.parametrize(("body", "says"), [
    ({}, "exactly one"),
    ({"frames": clip(16).tolist(), "video": "AAAA"}, "exactly one"),
    ({"frames": (clip(16).astype(int) + 300).tolist()}, "less than or equal to 255"),
    ({"frames": clip(16).tolist(), "k": 3}, "Extra inputs"),
    ({"frames": np.zeros((513, 1, 1, 3), np.uint8).tolist()}, "at most 512 items"),
])  # fmt: skip
def test_the_request_schema_names_the_bad_field(body, says):
    with pytest.raises(ValidationError, match=says):
        endpoint.ClipRequest.model_validate(body)


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ego_only_smoke(smoke_sweep):
    return smoke_sweep("ego_only")  # shared with tests/test_every_study.py


@pytest.mark.slow
def test_the_smoke_sweep_shares_its_stages_and_serves_a_segmenter(ego_only_smoke, ray_session):
    uri, _, seconds = ego_only_smoke
    assert seconds < 120, f"--smoke took {seconds:.0f}s (the issue asks under two minutes)"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ego_only").experiment_id])
    stages = [r for r in runs if r.data.tags.get(Tag.STAGE)]
    trained = [r for r in stages if r.data.metrics.get("pretrain_loss") is not None]
    assert len(trained) == 2 * 2  # exo MAE and ego MAE, per seed: shared by the trials
    version = client.get_model_version_by_alias("ego_only", "champion")
    args = {"model": "ego_only@champion", "tracking_uri": uri,
            "ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 1}  # fmt: skip
    with served_app(args, "ego_only", timeout_s=180) as base:
        status, meta = http_json("GET", f"{base}/metadata", timeout=60)
        assert status == 200 and meta["params"]["frames"] == 16, meta
        x = clip(24)
        status, answer = http_json("POST", f"{base}/predict", {"frames": x.tolist()}, timeout=120)
        assert status == 200, answer
        check_answer({k: v for k, v in answer.items() if k != "model"}, 24)
        status, answer = http_json("POST", f"{base}/predict", {"frames": clip(8).tolist()},
                                   timeout=120)  # fmt: skip
        assert status == 422 and "at least 16 frames" in answer["detail"], answer
    assert client.get_run(version.run_id).data.params["exo"] in ("none", "mae")

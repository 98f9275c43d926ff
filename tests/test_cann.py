"""Study cann as a whole: the trial on a real folder, the localiser the registry holds, the
decision rule, and `skeptic run cann --smoke` end to end (shared Ray, real MLflow store):
one child run per trial, the verdict, a champion that answers in a fresh process and over
HTTP. The CANN index itself: tests/test_cann_retrieval.py; the places: test_cann_places.py."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from netutil import http_json, served_app
from PIL import Image
from reported import Reported

from jobs.cann import localiser, verdict
from jobs.cann.features import extract
from jobs.cann.places import make_places, write_folder
from jobs.cann.study import CannStudy, Params
from skeptic.api import Compare, Decision, Judged, SpecError
from skeptic.schema import Tag
from skeptic.spec import load_spec

TINY = {"places": 6, "db_views": 2, "query_views": 1, "size": 96, "num_features": 150}


def _places(seed: int = 0):
    return make_places(**{k: v for k, v in TINY.items() if k != "num_features"},
                       aliasing=0.0, difficulty="easy", tile_seed=0, view_seed=seed)  # fmt: skip


def test_a_trial_on_a_real_folder_reports_recall_localisation_and_speed(tmp_path):
    write_folder(_places(), tmp_path / "places")
    study = CannStudy()
    one = {"difficulty": {"grid": ["hard"]}, "aliasing": {"grid": [0.25]}}
    spec = load_spec("cann", study.defaults, Params, smoke={
        "data": {"name": "imagefolder", "path": str(tmp_path / "places")}, "train": TINY,
        "sweep": {"space": one, "arms": {"cann": {"method": "cann"}}, "seeds": 1},
    })  # fmt: skip
    assert study.comparisons(spec)[0].a == {"arm": "global_cnn"}  # no point to select
    assert study.check_data(spec) is None  # the layout checked, nothing decoded
    ctx = Reported(Params(**TINY), study.prepare_data(spec))
    study.train(ctx)
    ((metrics, state),) = ctx.reports
    for key in ("val_loc", "test_loc", "test_recall1", "test_recall5", "query_s", "index_s"):
        assert np.isfinite(metrics[key]), key
    assert metrics["test_recall1"] >= 0.5  # easy views of 6 places
    assert state["model_config"]["class_names"] == _places().names


def test_a_swept_view_field_with_a_folder_is_refused_naming_it(tmp_path):
    write_folder(_places(), tmp_path / "places")
    study = CannStudy()
    folder = {"data": {"name": "imagefolder", "path": str(tmp_path / "places")}}
    spec = load_spec("cann", study.defaults, Params, smoke=folder)
    with pytest.raises(SpecError, match=r"sweep\.space\.aliasing.*grid=\[0\.25\]"):
        study.check_data(spec)


def test_the_localiser_rebuilt_from_its_tensors_finds_the_place_and_its_pose():
    places, p = _places(), Params(**TINY)
    state = localiser.checkpoint(p, places, extract(places.database.images, "sift", 150))
    model = CannStudy().build_model(json.loads(json.dumps(state["model_config"])))
    model.load_state_dict(state["model"])
    views = places.test
    batch = views.images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    out = CannStudy().predict(model.eval(), batch)
    assert out["scores"].shape == (len(batch), len(places.names))
    assert out["homography"].shape == (len(batch), len(places.names), 3, 3)
    top = out["scores"].argmax(1)
    assert (top == views.place).mean() >= 0.5
    from jobs.cann.localise import corner_error

    hit = np.flatnonzero(top == views.place)
    errors = [corner_error(out["homography"][i, top[i]], views.pose[i], 96) for i in hit]
    assert np.median(errors) < 3.0  # px, easy views


# ---- the decision rule, on hand-made decisions -----------------------------------------------


def _judged(**decisions: Decision) -> dict[str, Judged]:
    out = {}
    for c in verdict.comparisons():
        d = decisions.get(c.name, Decision.UNDECIDED)
        out[c.name] = Judged(c, None, 0.5, 0.5, 0.05, d)
    return out


B, A, NI = Decision.B_BETTER, Decision.A_BETTER, Decision.NON_INFERIOR


@pytest.mark.parametrize(
    ("decisions", "held", "says"),
    [
        ({"acc_vs_global": B, "acc_vs_vlad": NI, "query_vs_vlad": B, "index_vs_vlad": B},
         False, "accuracy overturned"),
        ({"acc_vs_global": B, "acc_vs_vlad": B, "query_vs_vlad": A, "index_vs_vlad": B},
         None, "speed held (VLAD is faster than CANN in query time)"),
        ({"acc_vs_global": A, "query_vs_vlad": B, "index_vs_vlad": B}, True, "accuracy held"),
        ({"acc_vs_global": B, "acc_vs_vlad": A}, True, "VLAD localises more"),
        ({"acc_vs_global": B}, None, "accuracy undecided"),
    ],
)  # fmt: skip
def test_decide_reads_both_labels(decisions, held, says):
    label, reason = verdict.decide(_judged(**decisions))
    assert label is held and says in reason, reason


def test_comparisons_are_declared_at_one_point_with_speed_lower_is_better():
    compares = {c.name: c for c in verdict.comparisons()}
    assert all(isinstance(c, Compare) for c in compares.values())
    assert {c.a["difficulty"] for c in compares.values()} == {verdict.POINT["difficulty"]}
    assert not compares["query_vs_vlad"].higher_is_better
    assert [n for n, c in compares.items() if c.deciding] == [
        "acc_vs_global", "acc_vs_vlad", "query_vs_vlad", "index_vs_vlad"
    ]  # fmt: skip


# ---- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cann_smoke(smoke_sweep):
    return smoke_sweep("cann")  # shared with tests/test_every_study.py


@pytest.mark.slow
def test_smoke_sweep_logs_every_trial_the_verdict_and_a_champion(cann_smoke):
    uri, folder, _ = cann_smoke
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cann")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "sweep")
    trials = [r for r in runs if Tag.TRIAL_ID in r.data.tags]
    stages = [r for r in runs if Tag.STAGE in r.data.tags]
    keys = sorted((t.data.params["method"], t.data.params["seed"]) for t in trials)
    assert keys == [(m, s) for m in ("cann", "global_cnn", "vlad") for s in ("0", "1")]
    assert all(t.data.tags[Tag.OUTCOME] == "completed" for t in trials)
    assert sorted(s.data.tags[Tag.STAGE] for s in stages) == ["global_net"] * 2
    for t in trials:
        for key in ("val_loc", "test_loc", "test_recall1", "log10_query_s", "log10_index_s"):
            assert key in t.data.metrics, (key, t.data.params["method"])
    assert parent.data.tags[Tag.VERDICT] in ("held", "overturned", "undecided")
    for name in ("acc_vs_global", "acc_vs_vlad", "query_vs_vlad", "index_vs_vlad"):
        assert Tag.decision(name) in parent.data.tags, name
    version = client.get_model_version_by_alias("cann", "champion")
    champion = next(t for t in trials if t.info.run_id == version.run_id)
    assert champion.data.params["method"] == "cann"  # the only localiser arm in the smoke
    report = next((folder / "runs" / "cann").glob("*/report"))
    text = (report / "report.md").read_text()
    assert "Accuracy:" in text and "CANN / VLAD query time" in text
    for plot in ("localisation_vs_threshold.png", "recall_vs_query_time.png"):
        assert (report / plot).is_file(), plot


FRESH = """
import json, sys
import mlflow, numpy as np
from jobs.cann.places import make_places
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/cann@champion")
params = model.metadata.metadata["params"]
seed = int(mlflow.MlflowClient().get_run(model.metadata.run_id).data.params["seed"])
places = make_places(places=params["places"], db_views=params["db_views"],
    query_views=params["query_views"], size=params["size"], aliasing=params["aliasing"],
    difficulty=params["difficulty"], tile_seed=0, view_seed=seed)
batch = places.test.images.transpose(0, 3, 1, 2).astype(np.float32) / 255
out = model.predict(batch)
print(json.dumps({"top": out["scores"].argmax(1).tolist(), "place": places.test.place.tolist(),
                  "homography": list(out["homography"].shape)}))
"""


@pytest.mark.slow
def test_the_champion_answers_a_query_in_a_fresh_process(cann_smoke):
    uri, folder, _ = cann_smoke
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-c", FRESH, uri], capture_output=True, text=True,
                          cwd=folder, env=env, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    hits = np.mean(np.array(answer["top"]) == np.array(answer["place"]))
    assert hits >= 0.5, answer  # hard queries of 8 places; chance is 1/8
    assert answer["homography"][2:] == [3, 3]


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_the_served_localiser_answers_places_scores_and_homographies_over_http(
    cann_smoke, ray_session
):
    uri, _, _ = cann_smoke
    args = {"model": "cann@champion", "tracking_uri": uri, "num_replicas": 1}
    with served_app(args, "cann", timeout_s=180) as base:
        view = _places().database.images[0]
        body = {"images": [_png(view)], "k": 2}
        status, answer = http_json("POST", f"{base}/predict", body, timeout=120)
        assert status == 200, answer
        ((best, second),) = answer["predictions"]
        assert {"label", "index", "score", "homography", "inliers"} <= set(best)
        assert best["score"] >= second["score"]
        assert np.asarray(best["homography"]).shape == (3, 3)
        body = {"images": ["bm90IGFuIGltYWdl"]}
        status, answer = http_json("POST", f"{base}/predict", body, timeout=120)
        assert status == 422 and answer["error"] == "bad_image", answer

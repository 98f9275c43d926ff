"""A study that declares its own endpoints (a text model) is served by the same app: real
Serve on the session's Ray, a real SQLite registry, real HTTP on 127.0.0.1.

The test study `text_echo` (tests/fixtures/skeptic_test_studies/text_echo.py) embeds texts
and declares POST /embed and POST /nearest instead of the labeller's /predict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from netutil import served_app
from test_serving import TOKEN, _experiment, _http
from test_serving_limits import _post

from skeptic.schema import Tag

APP = "text_echo"
CONFIG = {"dim": 8}
TEXTS = ["I agree with the following: X", "naïve café", "z"]


def _register_text_echo(uri: str, artifacts: Path) -> tuple[str, object]:
    """Register a text_echo model as a sweep would (register_champion): (version, model)."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from skeptic_test_studies.text_echo import TextEcho

    from skeptic.champion import register_champion

    study = TextEcho()
    model = study.build_model(CONFIG)
    state = {"model": model.state_dict(), "model_config": CONFIG}
    client = MlflowClient(uri)
    run_id = client.create_run(_experiment(client, study.name, artifacts)).info.run_id
    tags = {Tag.VERDICT: "undecided", Tag.SWEEP_ID: "sweep-text"}
    with _use_tracking_uri(uri):
        registered = register_champion(study, state, CONFIG, run_id, tags, score=1.0)
    client.set_terminated(run_id)
    return registered.version, model.eval()


def _local(model: object, texts: list[str]) -> np.ndarray:
    from skeptic_test_studies.text_echo import TextEcho

    return TextEcho().predict(model, np.array(texts, dtype=object))


@pytest.fixture(scope="module")
def text_served(ray_session, tmp_path_factory):
    """text_echo@champion at /text_echo on a free loopback port (token on, small body limit)."""
    root = tmp_path_factory.mktemp("serving-text")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version, model = _register_text_echo(uri, root / "artifacts")
    args = {
        "model": f"{APP}@champion", "tracking_uri": uri, "token": TOKEN,
        "ray_actor_options": {"num_cpus": 0.5}, "max_payload_bytes": 64 * 1024,
        "num_replicas": 1,
    }  # fmt: skip
    with served_app(args, APP, TOKEN) as base:
        url = base.removesuffix(f"/{APP}")
        yield {"base": base, "url": url, "version": version, "model": model}


def test_embed_answers_what_the_model_computes(text_served) -> None:
    status, answer = _http("POST", f"{text_served['base']}/embed", {"texts": TEXTS})
    assert status == 200, answer
    assert answer["model"] == APP and answer["version"] == text_served["version"]
    vectors = np.asarray(answer["vectors"], dtype=np.float32)
    assert vectors.shape == (len(TEXTS), CONFIG["dim"])
    assert np.allclose(vectors, _local(text_served["model"], TEXTS), atol=1e-6)


def test_nearest_and_no_labeller_route(text_served) -> None:
    body = {"texts": ["apple", "banana", "cherry"], "query": "banana"}
    status, answer = _http("POST", f"{text_served['base']}/nearest", body)
    assert status == 200, answer
    assert answer["index"] == 1 and answer["distance"] == pytest.approx(0.0, abs=1e-6)
    assert answer["model"] == APP and answer["version"] == text_served["version"]
    status, answer = _http("POST", f"{text_served['base']}/predict", {"inputs": [[0.0]]})
    assert status == 404 and answer["error"] == "not_found", answer
    status, answer = _http("POST", f"{text_served['base']}/embed", {"texts": ["a"]}, token=None)
    assert status == 401 and answer["error"] == "unauthorized", answer


# (id, request, status, error code, what the detail says): `route` defaults to embed,
# `type` sends `raw` with that Content-Type.
BAD_REQUESTS = [
    ("empty", {"body": {"texts": []}}, 422, "invalid_request", "texts: List should have at least 1"),
    ("number-item", {"body": {"texts": ["a", "b", 3]}}, 422, "invalid_request",
     "texts.2: Input should be a valid string"),
    ("null-item", {"body": {"texts": ["a", None]}}, 422, "invalid_request",
     "texts.1: Input should be a valid string"),
    ("too-long", {"body": {"texts": ["x" * 501]}}, 422, "invalid_request",
     "texts.0: String should have at most 500 characters"),
    ("too-many", {"body": {"texts": ["a"] * 65}}, 422, "invalid_request",
     "texts: List should have at most 64 items"),
    ("missing", {"body": {}}, 422, "invalid_request", "texts: Field required"),
    ("unknown-field", {"body": {"texts": ["a"], "k": 3}}, 422, "invalid_request",
     "k: Extra inputs are not permitted"),
    ("nearest-no-query", {"body": {"texts": ["a"]}, "route": "nearest"}, 422, "invalid_request",
     "query: Field required"),
    ("list-body", {"body": ["a", "b"]}, 422, "invalid_request", "must be a JSON object, got list"),
    ("malformed", {"raw": b'{"texts": ["a"'}, 400, "malformed_json", "not valid JSON"),
    ("too-deep", {"raw": b'{"texts": ' + b"[" * 100 + b"]" * 100 + b"}"}, 422, "json_too_deep",
     "levels deep"),
    ("payload", {"body": {"texts": ["x" * 500] * 140}}, 413, "payload_too_large",
     "over the limit"),
    ("text-plain", {"raw": b'{"texts": ["a"]}', "type": "text/plain"}, 415,
     "unsupported_media_type", "application/json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "status", "code", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(
    text_served, request_, status, code, detail
) -> None:
    url = f"{text_served['base']}/{request_.get('route', 'embed')}"
    if "type" in request_:
        got, answer = _post(url, request_["raw"], request_["type"])
    else:
        got, answer = _http("POST", url, request_.get("body"), raw=request_.get("raw"))
    assert got == status, answer
    assert answer["error"] == code and detail in answer["detail"], answer
    ok, answer = _http("POST", f"{text_served['base']}/embed", {"texts": ["still here"]})
    assert ok == 200 and len(answer["vectors"]) == 1, answer


def test_metadata_and_openapi_document_both_endpoints(text_served) -> None:
    status, meta = _http("GET", f"{text_served['base']}/metadata")
    assert status == 200, meta
    assert meta["study"] == APP and meta["version"] == text_served["version"]
    assert meta["metric"] == {"name": "score", "value": 1.0}
    assert set(meta["endpoints"]) == {"embed", "nearest"}
    embed = meta["endpoints"]["embed"]
    assert embed["summary"] == "embed texts"
    texts = embed["request"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 64, 500)
    assert set(embed["response"]["properties"]) == {"vectors", "model", "version"}
    nearest = meta["endpoints"]["nearest"]
    assert set(nearest["request"]["required"]) == {"texts", "query"}
    assert set(nearest["response"]["properties"]) == {"index", "distance", "model", "version"}
    # only a labeller has an input shape and class names
    assert not {"input_shape", "input_dtype", "class_names"} & set(meta)

    status, spec = _http("GET", f"{text_served['base']}/openapi.json")
    assert status == 200, spec
    assert {"/embed", "/nearest"} <= set(spec["paths"]) and "/predict" not in spec["paths"]
    post = spec["paths"]["/embed"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["texts"]["maxItems"] == 64
    ref = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    answer = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(answer["properties"]) == {"vectors", "model", "version"}
    assert {"400", "401", "413", "415", "422"} <= set(post["responses"])


def test_cli_query_route(text_served, monkeypatch, capsys) -> None:
    """`skeptic query NAME --route embed --json ...` (a subprocess, as a user runs it)."""
    env = {**os.environ, "SKEPTIC_API_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "skeptic", "query", APP, "--route", "embed",
         "--json", json.dumps({"texts": TEXTS[:2]}), "--url", text_served["url"]],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    vectors = np.asarray(json.loads(done.stdout)["vectors"], dtype=np.float32)
    assert np.allclose(vectors, _local(text_served["model"], TEXTS[:2]), atol=1e-6)

    from serving import cli

    monkeypatch.setenv("SKEPTIC_API_TOKEN", TOKEN)
    body = json.dumps({"texts": ["a"]})
    for argv, message in (
        (["--route", "../metadata", "--json", body], "--route '../metadata'"),
        (["--route", "", "--json", body], "--route ''"),
        (["x.png", "--route", "embed"], "IMAGE files go to --route predict"),
        (["--route", "embed", "--json", body, "--k", "2"], "--k is for --route predict"),
        (["--route", "embed"], "give the request body with --json"),
    ):
        assert cli.main(["query", APP, *argv, "--url", text_served["url"]]) == 2, argv
        assert message in capsys.readouterr().err, argv
    # a route the app does not have: the server's 404, exit 1
    argv = ["query", APP, "--route", "nope", "--json", body, "--url", text_served["url"]]
    assert cli.main(argv) == 1
    assert "HTTP 404" in capsys.readouterr().err

"""Serving registered models with Ray Serve: real Serve, real HTTP on 127.0.0.1.

One Ray for the file (conftest's in-process `ray_session`) with Serve on a free port, one
tiny registered model in a temporary SQLite store; the `skeptic serve` CLI test starts
its own `ray start --head` (isolated by RAY_TMPDIR) and always stops it, by pid.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from netutil import http_json, served_app
from PIL import Image

from serving.api import token_digest, token_ok
from serving.control import free_port
from serving.model_ref import ModelRefError, parse_model_ref, version_metric
from skeptic.schema import Tag

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a"
NAME = "large_batch"
CONFIG = {
    "input_shape": [3, 8, 8], "num_classes": 4, "class_names": ["circle", "square", "triangle", "cross"],
    "width": 16, "depth": 2, "ghost_batch": None,
}  # fmt: skip
SHAPE = tuple(CONFIG["input_shape"])


# --- helpers -----------------------------------------------------------------------------------



_http = functools.partial(http_json, token=TOKEN)  # every app here has the token on


def _png(color: tuple[int, int, int], size: int = 20) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), color)
    img.paste((255 - color[0], 40, 90), (3, 4, size // 2, size - 2))
    img.save(buf, "PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _register(uri: str, artifacts: Path, seed: int, verdict: str) -> tuple[str, object]:
    """Register a tiny large_batch MLP (no sweep) as the new champion: (version, model)."""
    import torch
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from jobs.large_batch.study import LargeBatch
    from skeptic.champion import register_champion

    torch.manual_seed(seed)
    study = LargeBatch()
    model = study.build_model(CONFIG)
    for module in model.modules():  # non-trivial BN statistics, so versions differ clearly
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.5)
    state = {"model": model.state_dict(), "model_config": CONFIG}
    client = MlflowClient(uri)
    run_id = client.create_run(_experiment(client, NAME, artifacts), run_name=f"seed{seed}")
    run_id = run_id.info.run_id
    tags = {Tag.VERDICT: verdict, Tag.SWEEP_ID: f"sweep-{seed}", Tag.score("val_acc"): "0.5"}
    with _use_tracking_uri(uri):
        version = register_champion(study, state, {"seed": seed}, run_id, tags).version
    client.set_terminated(run_id)
    return version, model.eval()


def _experiment(client: object, name: str, artifacts: Path) -> str:
    """The id of experiment `name`, made with its artifacts under `artifacts` if new."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifacts.as_uri())


def _register_flaky(uri: str, artifacts: Path, score: float) -> str:
    """Register a model of the test study `flaky`, whose metric is `score`, not val_acc,
    the way a sweep does (register_champion with the trial's score); returns its version."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from skeptic_test_studies.flaky import Flaky

    from skeptic.champion import register_champion

    study, config = Flaky(), {"width": 4}
    state = {"model": study.build_model(config).state_dict(), "model_config": config}
    client = MlflowClient(uri)
    run_id = client.create_run(_experiment(client, study.name, artifacts)).info.run_id
    tags = {Tag.VERDICT: "undecided", Tag.SWEEP_ID: "sweep-flaky"}
    with _use_tracking_uri(uri):
        registered = register_champion(study, state, config, run_id, tags, score=score)
    client.set_terminated(run_id)
    return registered.version


def _local_probs(model: object, batch: np.ndarray) -> np.ndarray:
    from jobs.large_batch.study import LargeBatch

    return LargeBatch().predict(model, batch)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite registry holding version 1 of `large_batch` (alias champion)."""
    root = tmp_path_factory.mktemp("serving-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version, model = _register(uri, root / "artifacts", seed=1, verdict="held")
    return {"uri": uri, "root": root, "models": {version: model}, "first": version}


@pytest.fixture(scope="module")
def served(ray_session, store):
    """Serve on a free loopback port with the champion deployed at /large_batch (token on)."""
    args = {
        "model": f"{NAME}@champion", "tracking_uri": store["uri"], "token": TOKEN,
        "ray_actor_options": {"num_cpus": 0.5}, "max_payload_bytes": 256 * 1024, "num_replicas": 1,
        "max_batch_items": 8, "max_batch_size": 16, "batch_wait_timeout_s": 0.005,
    }  # fmt: skip
    with served_app(args, NAME, TOKEN) as base:
        yield {"base": base, "port": urllib.parse.urlsplit(base).port, "args": args}


@pytest.fixture
def restore_env():
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- no Serve needed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("large_batch@champion", ("large_batch", "champion", None)),
        ("large_batch/3", ("large_batch", None, "3")),
        ("models:/large_batch@challenger", ("large_batch", "challenger", None)),
        ("large_batch", ("large_batch", "champion", None)),
    ],
)
def test_parse_model_ref(text: str, expected: tuple) -> None:
    ref = parse_model_ref(text)
    assert (ref.name, ref.alias, ref.version) == expected


@pytest.mark.parametrize("text", ["", "a@b@c", "large_batch/v3", "a/1/2", "x@"])
def test_parse_model_ref_rejects(text: str) -> None:
    with pytest.raises(ModelRefError, match="bad model reference"):
        parse_model_ref(text)


def test_version_metric_names_the_studys_metric_and_falls_back_for_old_versions() -> None:
    new = {Tag.METRIC: "test_acc", Tag.score("test_acc"): "0.73", Tag.score("val_acc"): "0.5"}
    assert version_metric(new, "val_acc") == {"name": "test_acc", "value": 0.73}
    # registered before Tag.METRIC: the study's own metric, else val_acc
    old = {Tag.score("test_acc"): "0.7", Tag.score("val_acc"): "0.5"}
    assert version_metric(old, "test_acc") == {"name": "test_acc", "value": 0.7}
    assert version_metric(old) == {"name": "val_acc", "value": 0.5}
    assert version_metric({}) == {"name": "val_acc", "value": None}


def test_token_check_is_digest_based() -> None:
    digest = token_digest("s3cret")
    assert token_ok("Bearer s3cret", digest)
    assert not token_ok("Bearer s3cre", digest)
    assert not token_ok("s3cret", digest)
    assert not token_ok(None, digest)


def test_serving_preprocessing_is_the_training_pipeline(tmp_path: Path) -> None:
    from skeptic.data.imagefolder import decode_image, read_images

    png = _png((10, 200, 30), size=23)
    (tmp_path / "a.png").write_bytes(png)
    assert np.array_equal(decode_image(png, 8), read_images([tmp_path / "a.png"], 8)[0])
    with pytest.raises(ValueError, match="not a known image format"):
        decode_image(b"definitely not an image", 8)
    with pytest.raises(ValueError, match="over the limit"):
        decode_image(png, 8, max_pixels=100)


def test_rayservice_args_are_valid_build_app_args() -> None:
    from serving.app import ServeArgs

    service = yaml.safe_load((ROOT / "k8s/base/rayservice.yaml").read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    example = yaml.safe_load((ROOT / "serving/large_batch.yaml").read_text())
    for app in [*config["applications"], *example["applications"]]:
        assert app["import_path"] == "serving.app:build_app"
        ServeArgs.model_validate(app["args"])
    assert example["http_options"]["host"] == "127.0.0.1"


def test_unknown_model_or_alias_fails_before_anything_starts(
    store, tmp_path, monkeypatch, restore_env, capsys
) -> None:
    from serving import cli, control

    def no_start(*args, **kwargs):
        raise AssertionError("a Ray head was started for an unknown model")

    monkeypatch.setattr(control, "start_head", no_start)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cases = {
        "nosuch@champion": "unknown model 'nosuch'.*registered models: large_batch",
        f"{NAME}@nope": f"model '{NAME}' has no alias 'nope'.*champion -> ",
        f"{NAME}/99": f"model '{NAME}' has no version 99",
    }
    for ref, message in cases.items():
        assert cli.main(["serve", ref, "--tracking-uri", store["uri"]]) == 2
        assert __import__("re").search(message, capsys.readouterr().err), ref
    assert not (tmp_path / "ray").exists()  # no head, no address file


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "give MODEL_REF, --config FILE, --list or --shutdown"),
        (["serve", "a@b", "--autoscale", "3:1"], "--autoscale '3:1'"),
        (["serve", "a@b", "--replicas", "0"], "--replicas 0"),
        (["serve", "a@b", "--max-batch-size", "0"], "max_batch_size"),
        (["serve", "a@b", "--name", "no/slash"], "bad serving name"),
        (["serve", "a@b@c"], "bad model reference"),
        (["serve", "--list", "a@b"], "--list/--shutdown take no model"),
        (["serve", "--config", "/nonexistent.yaml"], "config file not found"),
        (["query", "m"], "give one or more IMAGE files, or --json"),
        (["query", "m", "--json", "{nope"], "--json is not valid JSON"),
        (["query", "m", "/nonexistent.png"], "image not found"),
    ],
)
def test_cli_bad_input_exits_2(argv, message, tmp_path, monkeypatch, restore_env, capsys) -> None:
    from serving import cli, control

    monkeypatch.setattr(control, "start_head", lambda *a, **k: pytest.fail("started a head"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def _serve_flags(*flags: str) -> dict:
    """The build_app args `skeptic serve m@a FLAGS` stands for."""
    import argparse

    from serving import cli

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command"))
    return cli._serve_args(parser.parse_args(["serve", "m@a", *flags]))


def test_access_log_is_off_unless_asked_for(store) -> None:
    from serving.app import build_app

    args = {"model": f"{NAME}@champion", "tracking_uri": store["uri"], "num_replicas": 1}
    assert build_app(args)._bound_deployment.logging_config["enable_access_log"] is False
    assert _serve_flags() == {} and _serve_flags("--access-log") == {"access_log": True}
    logged = build_app({**args, **_serve_flags("--access-log")})._bound_deployment
    assert logged.logging_config["enable_access_log"] is True


@pytest.mark.parametrize(
    ("replica_cpus", "node_cpus", "replicas"),
    [(0.5, 2, 2), (1, 2, 1), (0.5, 1, 1), (1, 16, 8), (0.5, 64, 8), (2, 8, 3), (0, 4, 4)],
)
def test_auto_replicas_one_per_core_with_room_for_a_rollover(
    replica_cpus, node_cpus, replicas
) -> None:
    from serving.app import auto_replicas

    assert auto_replicas(replica_cpus, node_cpus) == replicas


def test_default_replicas_follow_the_cores(ray_session, store) -> None:
    """The test cluster's node has 2 CPUs: two replicas of half a core each, a roll-over
    surge of one; a GPU replica, a fixed count or autoscaling are left as asked."""
    from serving.app import build_app

    args = {"model": f"{NAME}@champion", "tracking_uri": store["uri"]}
    auto = build_app(args)._bound_deployment
    assert (auto.num_replicas, auto.ray_actor_options["num_cpus"]) == (2, 0.5)
    assert auto._deployment_config.max_surge_percent == 50
    assert build_app({**args, "num_replicas": 3})._bound_deployment.num_replicas == 3
    gpu = build_app({**args, "ray_actor_options": {"num_gpus": 1}})._bound_deployment
    assert gpu.num_replicas == 1
    scaled = {**args, "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}
    assert build_app(scaled)._bound_deployment._deployment_config.autoscaling_config


def test_gpu_request_without_gpus_is_refused_before_deploying(ray_session, store) -> None:
    from serving.control import ServeControlError, deploy

    args = {"model": f"{NAME}@champion", "tracking_uri": store["uri"]}
    with pytest.raises(ServeControlError, match="asks for 1 GPU"):
        deploy({**args, "ray_actor_options": {"num_gpus": 1}}, "gpu_app")


# --- a served model ------------------------------------------------------------------------------


def test_predict_inputs_and_images(served, store) -> None:
    model = store["models"][store["first"]]
    rng = np.random.default_rng(0)
    batch = rng.random((3, *SHAPE), dtype=np.float32)
    status, answer = _http("POST", f"{served['base']}/predict", {"inputs": batch.tolist()})
    assert status == 200, answer
    assert answer["model"] == NAME and answer["version"] == store["first"]
    expected = _local_probs(model, batch)
    for row, probs in zip(answer["predictions"], expected, strict=True):
        assert len(row) == 3  # default k
        assert row[0]["index"] == int(probs.argmax())
        assert row[0]["label"] == CONFIG["class_names"][row[0]["index"]]
        assert row[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert [r["probability"] for r in row] == sorted(
            (r["probability"] for r in row), reverse=True
        )

    from skeptic.data.imagefolder import decode_image

    pngs = [_png((200, 20, 20)), _png((20, 20, 200), size=31)]
    status, answer = _http(
        "POST", f"{served['base']}/predict", {"images": [_b64(p) for p in pngs], "k": 2}
    )
    assert status == 200, answer
    local = _local_probs(model, np.stack([decode_image(p, SHAPE[1]) for p in pngs]))
    for row, probs in zip(answer["predictions"], local, strict=True):
        assert len(row) == 2
        assert row[0]["index"] == int(probs.argmax())
        assert row[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    # k above the number of classes is clamped to it
    status, answer = _http(
        "POST", f"{served['base']}/predict", {"inputs": batch[:1].tolist(), "k": 50}
    )
    assert status == 200 and len(answer["predictions"][0]) == CONFIG["num_classes"]


def test_metadata_healthz_and_docs(served, store) -> None:
    status, meta = _http("GET", f"{served['base']}/metadata")
    assert status == 200
    assert meta["name"] == NAME and meta["version"] == store["first"]
    assert meta["model_ref"] == f"{NAME}@champion" and meta["alias"] == "champion"
    assert meta["input_shape"] == list(SHAPE) and meta["input_dtype"] == "float32"
    assert meta["class_names"] == CONFIG["class_names"]
    assert meta["study"] == NAME and meta["verdict"] == "held" and meta["run_id"]
    assert meta["limits"]["max_batch_items"] == 8 and meta["batching"]["enabled"] is True
    assert meta["metric"] == {"name": "val_acc", "value": 0.5} and meta["val_acc"] == 0.5
    assert _http("GET", f"{served['base']}/healthz")[0] == 200
    status, spec = _http("GET", f"{served['base']}/openapi.json")
    assert status == 200 and "/predict" in spec["paths"]
    request = urllib.request.Request(
        f"{served['base']}/docs", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        html = response.read().decode()
    assert response.status == 200 and f"/{NAME}/openapi.json" in html


def test_metadata_reports_a_champion_metric_that_is_not_val_acc(served, tmp_path) -> None:
    """A champion of a study whose metric is `score` (the test study `flaky`), registered
    as a sweep registers it, in a store of its own: /metadata names that metric."""
    from ray import serve

    from serving.control import deploy, wait_healthy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register_flaky(uri, tmp_path / "artifacts", score=4.3)
    args = {
        "model": "flaky@champion", "tracking_uri": uri, "token": TOKEN, "num_replicas": 1,
    }  # fmt: skip
    try:
        deploy(args, "flaky")
        base = f"http://127.0.0.1:{served['port']}/flaky"
        wait_healthy(base, TOKEN, timeout_s=120)
        status, meta = _http("GET", f"{base}/metadata")
    finally:
        serve.delete("flaky", _blocking=False)  # its replica takes ~30 s to drain: not waited for
    assert status == 200, meta
    assert meta["study"] == "flaky" and meta["version"] == version
    assert meta["metric"] == {"name": "score", "value": 4.3}
    assert meta["val_acc"] is None  # the old field speaks of val_acc only
    assert meta["verdict"] == "undecided" and meta["sweep_id"] == "sweep-flaky"


def _with(inputs: list, token: str) -> bytes:
    """A JSON body whose first number is replaced by `token` (NaN, 1e999, ...)."""
    return json.dumps({"inputs": inputs}).replace("0.0", token, 1).encode()


def _bad_requests() -> list:
    good = np.zeros((1, *SHAPE)).tolist()
    return [
        pytest.param({"raw": b'{"inputs": [1, 2'}, 400, "malformed_json", id="malformed-json"),
        pytest.param({"raw": b"\xff\xfe"}, 400, "malformed_json", id="not-utf8"),
        pytest.param({"body": [1, 2]}, 422, "invalid_request", id="not-an-object"),
        pytest.param({"body": {"k": 2}}, 422, "missing_field", id="missing-field"),
        pytest.param({"body": {"inputz": good}}, 422, "invalid_request", id="unknown-field"),
        pytest.param({"body": {"inputs": good, "images": []}}, 422, "invalid_request", id="both"),
        pytest.param({"body": {"inputs": []}}, 422, "invalid_request", id="empty"),
        pytest.param(
            {"body": {"inputs": np.zeros((1, 3, 4, 4)).tolist()}}, 422, "wrong_shape", id="shape"
        ),
        pytest.param(
            {"body": {"inputs": np.zeros(SHAPE).tolist()}}, 422, "wrong_shape", id="no-batch"
        ),
        pytest.param(
            {"body": {"inputs": [[[0.0] * 8] * 8, [[0.0] * 7]]}}, 422, "wrong_shape", id="ragged"
        ),
        pytest.param(
            {"body": {"inputs": np.full((1, *SHAPE), "x").tolist()}},
            422,
            "wrong_dtype",
            id="strings",
        ),
        pytest.param({"raw": _with(good, "NaN")}, 422, "wrong_dtype", id="nan"),
        pytest.param({"raw": _with(good, "1e999")}, 422, "wrong_dtype", id="infinite"),
        pytest.param({"body": {"inputs": good, "k": 0}}, 422, "invalid_request", id="k-zero"),
        pytest.param({"body": {"images": ["not base64!"]}}, 422, "bad_image", id="bad-base64"),
        pytest.param(
            {"body": {"images": [_b64(b"GIF89a garbage")]}}, 422, "bad_image", id="undecodable"
        ),
        pytest.param(
            {"body": {"images": [_b64(_png((1, 2, 3))[:40])]}}, 422, "bad_image", id="truncated"
        ),
        pytest.param({"body": {"images": [1]}}, 422, "invalid_request", id="image-not-string"),
        pytest.param(
            {"raw": b"[" + b"0," * 200_000 + b"0]"}, 413, "payload_too_large", id="payload"
        ),
        pytest.param(
            {"body": {"inputs": np.zeros((9, *SHAPE)).tolist()}}, 413, "batch_too_large", id="batch"
        ),
    ]


@pytest.mark.parametrize(("request_", "status", "code"), _bad_requests())
def test_bad_input_gets_4xx_and_the_server_keeps_serving(served, request_, status, code) -> None:
    url = f"{served['base']}/predict"
    got, body = _http("POST", url, request_.get("body"), raw=request_.get("raw"))
    assert got == status, body
    assert body["error"] == code and body["detail"], body
    ok, answer = _http("POST", url, {"inputs": np.zeros((1, *SHAPE)).tolist()})
    assert ok == 200 and answer["predictions"], answer


def test_other_methods_and_paths_get_the_documented_errors(served) -> None:
    """POST /predict is answered before FastAPI's routing; the rest still goes through it."""
    status, answer = _http("GET", f"{served['base']}/predict")
    assert status == 405 and answer["error"] == "method_not_allowed", answer
    status, answer = _http("POST", f"{served['base']}/nosuch", {"inputs": []})
    assert status == 404 and answer["error"] == "not_found", answer


def test_token_is_enforced_everywhere(served) -> None:
    body = {"inputs": np.zeros((1, *SHAPE)).tolist()}
    for path, method in (("/predict", "POST"), ("/metadata", "GET"), ("/docs", "GET")):
        status, answer = _http(
            method, f"{served['base']}{path}", body if method == "POST" else None, token=None
        )
        assert status == 401 and answer["error"] == "unauthorized" and "missing" in answer["detail"]
        status, answer = _http(
            method, f"{served['base']}{path}", body if method == "POST" else None, token="nope"
        )
        assert status == 401 and "wrong" in answer["detail"]
    assert _http("POST", f"{served['base']}/predict", body)[0] == 200


def test_a_lone_request_does_not_wait_for_a_batch_and_concurrent_ones_share_one(
    served, store
) -> None:
    """With a batch wait of half a second: a request with no other waiting for the model
    is answered at once; six at once still share forward passes."""
    from ray import serve

    from serving.control import deploy, wait_healthy

    args = {**served["args"], "batch_wait_timeout_s": 0.5}
    body = {"inputs": np.zeros((1, *SHAPE)).tolist()}
    try:
        deploy(args, "patient")
        base = f"http://127.0.0.1:{served['port']}/patient"
        wait_healthy(base, TOKEN, timeout_s=120)
        _http("POST", f"{base}/predict", body)
        started = time.perf_counter()
        status, _ = _http("POST", f"{base}/predict", body)
        lone = time.perf_counter() - started
        before = _http("GET", f"{base}/metadata")[1]["batching"]["batches_run"]
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: _http("POST", f"{base}/predict", body)[0], range(6)))
        batches = _http("GET", f"{base}/metadata")[1]["batching"]["batches_run"] - before
    finally:
        serve.delete("patient", _blocking=False)
    assert status == 200 and lone < 0.25, f"a lone request took {lone:.2f}s"
    assert statuses == [200] * 6 and batches < 6, (statuses, batches)


@pytest.mark.slow
def test_300_requests_at_concurrency_8_without_errors(served) -> None:
    rng = np.random.default_rng(1)
    bodies = [
        {"inputs": rng.random((1 + i % 3, *SHAPE), dtype=np.float32).tolist()} for i in range(300)
    ]

    def call(body: dict) -> tuple[int, int]:
        status, answer = _http("POST", f"{served['base']}/predict", body)
        return status, len(answer.get("predictions", []))

    before = _http("GET", f"{served['base']}/metadata")[1]["batching"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, bodies))
    assert Counter(status for status, _ in results) == {200: 300}
    assert [n for _, n in results] == [len(b["inputs"]) for b in bodies]
    # Concurrent requests share forward passes (dynamic batching).
    after = _http("GET", f"{served['base']}/metadata")[1]["batching"]
    batches = after["batches_run"] - before["batches_run"]
    assert after["requests_batched"] - before["requests_batched"] == 300
    assert batches < 300 * 0.8, f"{batches} forward passes for 300 concurrent requests"


@pytest.mark.slow
def test_alias_rollover_serves_the_new_version_without_dropping_requests(served, store) -> None:
    from serving.control import deploy

    url = f"{served['base']}/predict"
    body = {"inputs": np.full((1, *SHAPE), 0.3, dtype=np.float32).tolist()}
    before = _http("POST", url, body)[1]["version"]
    new_version, model = _register(
        store["uri"], store["root"] / "artifacts", seed=2, verdict="overturned"
    )
    store["models"][new_version] = model
    assert new_version != before

    seen: list[tuple[int, str | None]] = []
    latencies: list[float] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            status, answer = _http("POST", url, body, timeout=120)
            latencies.append(time.perf_counter() - started)
            seen.append((status, answer.get("version")))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deploy(served["args"], NAME)  # same app name: Serve's rolling update
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(v == new_version for _, v in seen[-3:]):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(150)
    statuses = Counter(status for status, _ in seen)
    print(f"roll-over: {len(seen)} requests, slowest {max(latencies):.2f}s")
    assert statuses == {200: len(seen)}, statuses  # nothing dropped during the roll-over
    versions = [v for _, v in seen]
    assert versions[-1] == new_version and before in versions
    meta = _http("GET", f"{served['base']}/metadata")[1]
    assert meta["version"] == new_version and meta["verdict"] == "overturned"
    expected = _local_probs(model, np.asarray(body["inputs"], dtype=np.float32))[0]
    top = _http("POST", url, body)[1]["predictions"][0][0]
    assert top["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_serve_shutdown_leaves_no_serve_actors(served) -> None:
    import ray
    from ray import serve

    node = ray.get_runtime_context().get_node_id()
    assert _haproxy_pids(node), "HTTP should come in through HAProxy (serving.control)"
    serve.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        named = ray.util.list_named_actors(all_namespaces=True)
        left = [a for a in named if a["name"].startswith("SERVE_")] + _haproxy_pids(node)
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served["port"]), timeout=2).close()


# --- the CLI, with its own Ray head --------------------------------------------------------------


def _pids(match: Callable[[int], bool]) -> list[int]:
    """Other processes for which `match(pid)` holds (gone or unreadable ones are skipped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if match(int(entry)):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _procs_mentioning(text: str) -> list[int]:
    def mentions(pid: int) -> bool:
        files = (Path(f"/proc/{pid}/cmdline"), Path(f"/proc/{pid}/environ"))
        return any(text.encode() in f.read_bytes() for f in files)

    return _pids(mentions)


def _haproxy_pids(text: str = "") -> list[int]:
    """HAProxy processes (Serve's HTTP ingress) whose command line contains `text`."""

    def is_haproxy(pid: int) -> bool:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return argv[0].endswith(b"/haproxy") and text.encode() in b" ".join(argv)

    return _pids(is_haproxy)


@pytest.mark.slow
def test_cli_serve_config_query_list_and_shutdown(store, tmp_path) -> None:
    """`skeptic serve --config` and `skeptic serve MODEL` on a head the CLI starts, `query`,
    `--list`, `--shutdown NAME`, `--shutdown all`; then no process of that head is left."""
    import tempfile

    from serving import control

    ray_tmp = tempfile.mkdtemp(prefix="sk-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_TMPDIR=ray_tmp, SKEPTIC_API_TOKEN=TOKEN, MLFLOW_TRACKING_URI=store["uri"])
    config = yaml.safe_load((ROOT / "serving/large_batch.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["ray_actor_options"] = {"num_cpus": 0.5}
    config_file = tmp_path / "app.yaml"
    config_file.write_text(yaml.safe_dump(config))
    image = tmp_path / "x.png"
    image.write_bytes(_png((0, 128, 255)))

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "skeptic", *args],  # serve/query found by entry point
            check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
        )  # fmt: skip

    haproxies_before = set(_haproxy_pids())
    try:
        done = cli("serve", "--config", str(config_file))
        assert done.returncode == 0, done.stderr
        assert "starting a local Ray head on 127.0.0.1" in done.stdout
        assert f"at http://127.0.0.1:{port}/{NAME}" in done.stdout
        assert set(_haproxy_pids()) - haproxies_before, "the head's Serve should use HAProxy"
        done = cli("serve", f"{NAME}/{store['first']}", "--name", "pinned", "--replica-cpus", "0.5")
        assert done.returncode == 0, done.stderr
        assert "starting a local" not in done.stdout and f":{port}/pinned" in done.stdout

        done = cli("query", NAME, str(image), "--k", "2", "--url", f"http://127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["model"] == NAME and len(answer["predictions"][0]) == 2
        done = cli("query", "pinned", "--json", json.dumps({"inputs": np.zeros((1, *SHAPE)).tolist()}),
                   "--url", f"http://127.0.0.1:{port}")  # fmt: skip
        assert done.returncode == 0 and json.loads(done.stdout)["version"] == store["first"]
        env.pop("SKEPTIC_API_TOKEN")
        done = cli("query", NAME, str(image), "--url", f"http://127.0.0.1:{port}")
        assert done.returncode == 1 and "401" in done.stderr
        env["SKEPTIC_API_TOKEN"] = TOKEN

        done = cli("serve", "--list")
        assert done.returncode == 0, done.stderr
        assert NAME in done.stdout and "pinned" in done.stdout and "RUNNING" in done.stdout
        done = cli("serve", "--shutdown", "nosuch")
        assert done.returncode == 2 and "no served app named 'nosuch'" in done.stderr
        done = cli("serve", "--shutdown", "pinned")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30  # the proxy's route table follows shortly
        while _http("GET", f"http://127.0.0.1:{port}/pinned/healthz")[0] != 404:
            assert time.monotonic() < deadline, "the deleted app still answers"
            time.sleep(0.5)
        assert _http("GET", f"http://127.0.0.1:{port}/{NAME}/healthz")[0] == 200

        state = json.loads((Path(ray_tmp) / "ray" / control.STATE_FILE).read_text())
        done = cli("serve", "--shutdown", "all")
        assert done.returncode == 0, done.stderr
        assert f"Stopped the Ray head skeptic serve started (pid {state['pid']})" in done.stdout
        deadline = time.monotonic() + 20
        while _procs_mentioning(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _procs_mentioning(ray_tmp)
        assert not set(_haproxy_pids()) - haproxies_before, "the head's HAProxy is still running"
        assert not (Path(ray_tmp) / "ray" / control.STATE_FILE).exists()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert "No Ray cluster is running" in cli("serve", "--list").stdout
    finally:
        leftovers = _procs_mentioning(ray_tmp)
        if leftovers:  # the test failed half-way: stop that head by pid, whatever happened
            state_file = Path(ray_tmp) / "ray" / control.STATE_FILE
            if state_file.exists():
                head = control.HeadState(**json.loads(state_file.read_text()))
                control._terminate(head.pid, control._descendants(head.pid), grace_s=20)
            for pid in _procs_mentioning(ray_tmp):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        shutil.rmtree(ray_tmp, ignore_errors=True)

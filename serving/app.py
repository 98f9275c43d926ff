"""Ray Serve application that serves one registered Skeptic model over HTTP.

Entry for Serve config files and KubeRay's RayService (`import_path: serving.app:build_app`):

    applications:
      - name: large_batch
        route_prefix: /large_batch
        import_path: serving.app:build_app
        args: {model: large_batch@champion, max_batch_size: 32}

`build_app` resolves the reference (`name@alias` or `name/version`) to one registered
version and pins it, so re-deploying after the alias moved is a new deployment version and
Serve rolls the replicas over to it. Each replica loads the model with MLflow's pyfunc
loader from code + safetensors (the only format it accepts: nothing is unpickled), checks
every request against the model's signature, and batches requests with `@serve.batch`.

Routes (under the app's route prefix): POST /predict, GET /healthz, GET /metadata,
GET /docs, GET /openapi.json. A study that declares its own endpoints (`Study.endpoints`:
a text model, say) gets POST /<path> for each of them instead of /predict, with the same
guards, its own request/response schemas, and its handler run on one worker thread.
See "Serving models" in README.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api import (
    DEFAULT_K,
    K_MAX,
    MAX_JSON_DEPTH,
    ErrorResponse,
    Images,
    PredictRequest,
    PredictResponse,
    RequestError,
    check_content_type,
    open_images,
    parse_body,
    parse_json_object,
    query_k,
    split_outputs,
    to_batch,
    token_digest,
    token_ok,
    top_k,
    validate_request,
    validation_detail,
)
from serving.model_ref import (
    LEGACY_METRIC,
    ModelRefError,
    ResolvedModel,
    check_safe_format,
    parse_model_ref,
    resolve,
    version_metric,
)
from skeptic.api import InvalidRequest
from skeptic.schema import Tag
from skeptic.store import resolve_tracking_uri

logger = logging.getLogger("ray.serve")

TOKEN_ENV = "SKEPTIC_API_TOKEN"
DEPLOYMENT = "ModelServer"
# A declared endpoint is one URL segment that does not hide a route every app has.
_ENDPOINT_PATH = re.compile(r"^[A-Za-z0-9_-]+$")
RESERVED_PATHS = frozenset({"healthz", "metadata", "docs", "openapi.json"})
# Requests at most this large are parsed, and images of at most this many pixels decoded,
# on the event loop (well under a millisecond each); larger work goes to the decode threads.
INLINE_BYTES = 64 * 1024
INLINE_PIXELS = 256 * 256
T = TypeVar("T")
Batch = np.ndarray | Images
PREDICT_SUMMARY = "top-k labels for a batch of inputs or images"


@dataclass(frozen=True)
class Route:
    """A study-declared endpoint as a replica serves it: `answer` is the documented
    response, the study's response plus the `model` and `version` that answered."""

    path: str
    summary: str
    request: type[BaseModel]
    response: type[BaseModel]
    answer: type[BaseModel]
    handler: str


def study_routes(study: Any) -> tuple[Route, ...]:
    """The routes `study.endpoints` declares, checked (a ValueError or TypeError naming the
    problem: the replica then fails to start, and the deploy says why); () for a labeller."""
    endpoints = tuple(getattr(study, "endpoints", ()) or ())
    name = getattr(study, "name", type(study).__name__)
    routes: list[Route] = []
    for endpoint in endpoints:
        where = f"study {name!r}, endpoint {getattr(endpoint, 'path', endpoint)!r}"
        if not _ENDPOINT_PATH.match(str(endpoint.path)) or endpoint.path in RESERVED_PATHS:
            raise ValueError(
                f"{where}: the path must be one URL segment of letters, digits, '_' or '-', "
                f"and none of {', '.join(sorted(RESERVED_PATHS))}"
            )
        if any(r.path == endpoint.path for r in routes):
            raise ValueError(f"{where}: declared twice")
        for role in ("request", "response"):
            schema = getattr(endpoint, role)
            if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
                raise TypeError(f"{where}: {role} must be a pydantic model class")
        if not callable(getattr(study, endpoint.handler, None)):
            raise TypeError(f"{where}: the study has no method {endpoint.handler!r}")
        answer = create_model(
            endpoint.response.__name__,
            __base__=endpoint.response,
            __doc__=endpoint.response.__doc__,
            model=(str, Field(description="registered model name")),
            version=(str, Field(description="the registered model version that answered")),
        )
        routes.append(
            Route(
                path=endpoint.path,
                summary=endpoint.summary,
                request=endpoint.request,
                response=endpoint.response,
                answer=answer,
                handler=endpoint.handler,
            )
        )
    return tuple(routes)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (what a model hands back) as JSON-able Python values, so a
    handler may return {"vectors": array}; anything else as it is."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class FastJSON(JSONResponse):
    """A JSON response rendered by orjson (several times faster than the json module)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ServeArgs(BaseModel):
    """The `args` of `serving.app:build_app` (config file, RayService, `skeptic serve`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="registered model: NAME@ALIAS or NAME/VERSION")
    name: str | None = Field(None, description="served name (informational; route is per app)")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI")
    batching: bool = Field(True, description="false: one forward pass per request")
    max_batch_size: int = Field(32, ge=1, le=4096, description="requests per forward pass")
    # Short: under load, requests that arrive during a forward pass join the next batch
    # anyway (see ModelServer.infer); the timer only makes a lone request wait for company.
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=10)
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="413 above this")
    max_batch_items: int = Field(64, ge=1, le=100_000, description="items per request; 413")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width x height per image")
    # Decoding costs ~20-40 ns and 3-4 bytes per pixel here: the default caps one request
    # at about a second of CPU, and is 2x a batch of 64 images of 512 x 512.
    max_decoded_pixels: int = Field(
        2 * 4096 * 4096, ge=1, description="width x height summed over a request's images; 413"
    )
    max_json_depth: int = Field(
        MAX_JSON_DEPTH, ge=2, le=200, description="nesting of the request JSON; 422 above"
    )
    default_k: int = Field(DEFAULT_K, ge=1)
    num_replicas: int | None = Field(
        None, ge=1, description="default: one per core, at most 8 (auto_replicas); 1 on GPUs"
    )
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int | None = Field(None, ge=1)
    # Off by default: a line per request costs the replica's event loop, the bottleneck
    # (benchmarks/serve_load.py measures it).
    access_log: bool = Field(False, description="log every request in the replica log")
    max_surge_percent: int | None = Field(
        None, ge=0, le=100, description="roll-over: extra replicas (default: one replica's worth)"
    )
    ray_actor_options: dict[str, Any] | None = None
    # An API token: prefer $SKEPTIC_API_TOKEN (or token_sha256) to a plain value here,
    # which would be stored in the Serve config. Replicas only ever see the digest.
    token: str | None = Field(None, repr=False)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _exclusive(self) -> ServeArgs:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        if self.token and self.token_sha256:
            raise ValueError("give token or token_sha256, not both")
        return self


class ModelServer:
    """One replica: the model, its signature, the batcher and the FastAPI routes."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import mlflow

        self.cfg = cfg
        self.name, self.version = cfg["name"], cfg["version"]
        uri = cfg["tracking_uri"]
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model_uri = f"models:/{self.name}/{self.version}"
        # Checked again here: the version was resolved elsewhere (CLI or build task).
        resolved = ResolvedModel(self.name, self.version, cfg["ref"], cfg.get("alias"), None)
        check_safe_format(resolved, uri)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            self.pyfunc = mlflow.pyfunc.load_model(model_uri)
        unwrapped = self.pyfunc.unwrap_python_model()
        self.study, self.model = unwrapped.study, unwrapped.model
        self.routes = study_routes(self.study)
        spec = self.pyfunc.metadata.get_input_schema().inputs[0]
        # A labeller's signature is (-1, C, H, W) float32; a text model's (-1,) object.
        self.input_shape = tuple(int(d) for d in spec.shape[1:])
        self.input_dtype = str(spec.type)
        meta = dict(self.pyfunc.metadata.metadata or {})
        self.meta = meta
        self.metric = version_metric(cfg.get("tags") or {}, self._study_metric())
        self.device = self._place(cfg.get("num_gpus", 0))
        if self.routes:
            self.num_classes, self.class_names, self.score_key = 0, [], "score"
            self._warm_up()
        else:
            warm = np.zeros((1, *self.input_shape), dtype=self.input_dtype)
            scores, _, self.score_key = split_outputs(self.pyfunc.predict(warm))
            self.num_classes = int(scores.shape[1])
            names = [str(c) for c in meta.get("class_names") or []]
            self.class_names = (
                names
                if len(names) == self.num_classes
                else [str(i) for i in range(self.num_classes)]
            )
        self.stats = {"batches": 0, "requests": 0}
        self.replica = serve.get_replica_context().replica_id.unique_id
        # Own threads for parsing and decoding, so forward passes (asyncio.to_thread, the
        # default pool) never queue behind them. A few, since Pillow decodes without the
        # GIL; not one per ongoing request, which would hold that many decoded images.
        self._decode_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="decode")
        # Study handlers run here, one at a time: a forward pass already uses every core,
        # so two at once would only make both slower (and need a thread-safe model).
        self._handler_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handler")
        self.endpoint_schemas = self._endpoint_schemas()
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting = 0  # requests in `infer`
        self._batched.set_max_batch_size(cfg["max_batch_size"])
        self._batched.set_batch_wait_timeout_s(cfg["batch_wait_timeout_s"])
        logger.info(
            "loaded %s in %.1fs on %s (input %s)",
            model_uri, time.perf_counter() - started, self.device, self.input_shape,
        )  # fmt: skip

    def _place(self, num_gpus: float) -> str:
        """CPU unless the deployment was given a GPU (ray_actor_options.num_gpus)."""
        if not num_gpus:
            return "cpu"
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("ray_actor_options asks for a GPU but torch sees no CUDA device")
        self.pyfunc.unwrap_python_model().model.to("cuda")
        return "cuda"

    def _warm_up(self) -> None:
        """One forward pass before the first request (lazy initialisation, allocation), for
        a study with its own endpoints: an example of the signature's dtype (strings for a
        text model). Its handlers need not call `predict`, so a failure is logged, not fatal."""
        try:
            kind = np.dtype(self.input_dtype).kind
            shape = (1, *(max(d, 1) for d in self.input_shape))  # -1: a variable dimension
            if kind in "OUS":  # text: object arrays of str, or numpy's own str dtype
                example = np.full(shape, "warm-up", dtype=object)
                example = example if kind == "O" else example.astype(str)
            else:
                example = np.zeros(shape, dtype=self.input_dtype)
            self.pyfunc.predict(example)
        except Exception as err:  # noqa: BLE001  (any failure: the model still serves)
            logger.warning("warm-up of %s failed (%s): serving without it", self.name, err)

    def _endpoint_schemas(self) -> dict[str, dict[str, Any]]:
        """/metadata's "endpoints": each POST route with its request and response schemas."""
        if not self.routes:
            return {
                "predict": {
                    "summary": PREDICT_SUMMARY,
                    "request": PredictRequest.model_json_schema(),
                    "response": PredictResponse.model_json_schema(),
                }
            }
        return {
            r.path: {
                "summary": r.summary,
                "request": r.request.model_json_schema(),
                "response": r.answer.model_json_schema(),
            }
            for r in self.routes
        }

    def _parse(self, route: Route, body: bytes) -> BaseModel:
        obj = parse_json_object(body, max_depth=self.cfg["max_json_depth"])
        return validate_request(route.request, obj)

    async def parse(self, route: Route, body: bytes) -> BaseModel:
        """The body as the route's request, or RequestError; a large body off the event loop."""
        if len(body) > INLINE_BYTES:
            return await self._off_loop(self._parse, route, body)
        return self._parse(route, body)

    def _handle(self, route: Route, request: BaseModel) -> dict[str, Any]:
        try:
            result = getattr(self.study, route.handler)(self.model, request)
        except InvalidRequest as err:  # valid by the schema, not for this model
            raise RequestError(422, "invalid_request", str(err)) from None
        try:
            answer = route.response.model_validate(_plain(result))
        except ValidationError as err:  # the study's bug, not the client's: a 500, logged
            raise RuntimeError(
                f"{type(self.study).__name__}.{route.handler} returned no valid "
                f"{route.response.__name__}: {validation_detail(err)}"
            ) from None
        self.stats["requests"] += 1
        return {**answer.model_dump(mode="json"), "model": self.name, "version": self.version}

    async def handle(self, route: Route, request: BaseModel) -> dict[str, Any]:
        """The study's answer to `request` as a JSON-able dict, computed on the handler thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._handler_pool, self._handle, route, request)

    def _study_metric(self) -> str | None:
        """The served study's own metric (the loaded model rebuilt it with the study):
        names the metric of versions registered before Tag.METRIC was written."""
        study = getattr(self.pyfunc.unwrap_python_model(), "study", None)
        return getattr(study, "metric", None)

    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs by name, "scores" first (split_outputs)."""
        scores, extras, _ = split_outputs(self.pyfunc.predict(batch))
        return {"scores": scores, **extras}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)  # set per replica in __init__
    async def _batched(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return await self._run(batches)

    async def _run(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One forward pass over the requests' batches; each request's outputs."""
        self._idle.clear()
        try:
            self.stats["batches"] += 1
            self.stats["requests"] += len(batches)
            sizes = np.cumsum([len(b) for b in batches])[:-1]
            stacked = batches[0] if len(batches) == 1 else np.concatenate(batches)
            # In a thread: the event loop keeps taking requests meanwhile.
            outputs = await asyncio.to_thread(self._forward, stacked)
            parts = {name: np.split(values, sizes) for name, values in outputs.items()}
            return [{name: part[i] for name, part in parts.items()} for i in range(len(batches))]
        finally:
            self._idle.set()

    def _read(self, body: bytes, kind: str, query: Mapping[str, str]) -> tuple[int, Batch]:
        """The request's k and its items: an array, or images still to decode."""
        cfg = self.cfg
        if kind == "image":  # the body is one encoded image; k comes in the query string
            k = query_k(query)
            named = [("the image", body)]
            pixels, total = cfg["max_image_pixels"], cfg["max_decoded_pixels"]
            batch = open_images(named, self.input_shape, pixels, total)
        else:
            request = parse_body(body, max_depth=cfg["max_json_depth"])
            k = request.k if "k" in request.model_fields_set else None
            batch = to_batch(
                request,
                self.input_shape,
                max_items=cfg["max_batch_items"],
                max_image_pixels=cfg["max_image_pixels"],
                max_decoded_pixels=cfg["max_decoded_pixels"],
            )
        return (cfg["default_k"] if k is None else k), batch

    async def prepare(
        self, body: bytes, kind: str, query: Mapping[str, str]
    ) -> tuple[int, np.ndarray]:
        """The request's k and its batch, or RequestError. `kind`: "json" or "image"
        (check_content_type). A large body or image is parsed or decoded on the decode
        threads, so that it does not hold up the other requests; a small one here, where
        handing it to a thread would cost more than the work (and the GIL, in turn)."""
        if len(body) > INLINE_BYTES:
            k, batch = await self._off_loop(self._read, body, kind, query)
        else:
            k, batch = self._read(body, kind, query)
        if isinstance(batch, Images):
            small = batch.pixels <= INLINE_PIXELS
            batch = batch.decode() if small else await self._off_loop(batch.decode)
        return k, batch.astype(self.input_dtype, copy=False)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, fn, *args)

    async def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self.cfg["batching"]:
            return await asyncio.to_thread(self._forward, batch)
        # Serve closes the next batch batch_wait_timeout_s after its first request, even
        # while the model is still busy with the previous one: under load batches would stay
        # small. Requests that arrive while a batch runs wait here instead, and all join the
        # next batch when it is done (continuous batching). A request with none other
        # waiting for the model runs at once: Serve's timer would only make it wait alone.
        self._waiting += 1
        try:
            await self._idle.wait()
            if self._waiting == 1:
                return (await self._run([batch]))[0]
            return await self._batched(batch)
        finally:
            self._waiting -= 1

    def check_health(self) -> None:  # called by Serve
        if self.pyfunc is None:
            raise RuntimeError("model not loaded")

    def metadata(self) -> dict[str, Any]:
        tags = self.cfg.get("tags") or {}
        meta = {
            "name": self.name,
            "version": self.version,
            "model_ref": self.cfg["ref"],
            "alias": self.cfg.get("alias"),
            "run_id": self.pyfunc.metadata.run_id,
            "study": self.meta.get("study"),
            "verdict": tags.get(Tag.VERDICT),
            "sweep_id": tags.get(Tag.SWEEP_ID),
            "metric": dict(self.metric),
            # Kept for clients of the field that predates "metric": only a val_acc metric.
            "val_acc": self.metric["value"] if self.metric["name"] == LEGACY_METRIC else None,
            "params": self.meta.get("params"),
            "device": self.device,
            "endpoints": self.endpoint_schemas,
        }
        if self.routes:
            # The study's schemas bound each request; the labeller's batching and image
            # limits do not apply (one request per handler call).
            meta["batching"] = {"enabled": False, "requests_handled": self.stats["requests"]}
            meta["limits"] = {
                "max_payload_bytes": self.cfg["max_payload_bytes"],
                "max_json_depth": self.cfg["max_json_depth"],
            }
            return meta
        meta.update(
            {
                "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype,
                "class_names": self.class_names,
                "batching": {
                    "enabled": self.cfg["batching"],
                    "max_batch_size": self.cfg["max_batch_size"],
                    "batch_wait_timeout_s": self.cfg["batch_wait_timeout_s"],
                    "batches_run": self.stats["batches"],
                    "requests_batched": self.stats["requests"],
                    "replica": self.replica,  # whose counts these are
                },
                "limits": {
                    "max_payload_bytes": self.cfg["max_payload_bytes"],
                    "max_batch_items": self.cfg["max_batch_items"],
                    "max_image_pixels": self.cfg["max_image_pixels"],
                    "max_decoded_pixels": self.cfg["max_decoded_pixels"],
                    "max_json_depth": self.cfg["max_json_depth"],
                },
            }
        )
        return meta

    async def predict(self, request: Request) -> dict[str, Any]:
        """The answer to POST /predict (the labeller's route), or RequestError."""
        cfg = self.cfg
        kind = check_content_type(request.headers.get("content-type"), images=True)
        body = await _read_limited(request, cfg["max_payload_bytes"])
        k, batch = await self.prepare(body, kind, request.query_params)
        outputs = await self.infer(batch)
        scores = outputs.pop("scores")
        return {
            "model": self.name,
            "version": self.version,
            "predictions": top_k(scores, self.class_names, k, outputs, self.score_key),
        }

    def __serve_build_asgi_app__(self) -> Any:  # Serve calls it after __init__
        app: Any = build_fastapi(self)
        if not self.routes:
            app = PredictFirst(app, self)
        digest = self.cfg.get("token_sha256")
        return TokenAuth(app, digest) if digest else app


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed `limit` (header or stream)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestError(413, "payload_too_large", _too_large(int(declared), limit))
        except ValueError:
            raise RequestError(400, "invalid_request", "bad Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "payload_too_large", _too_large(size, limit, more=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, more: bool = False) -> str:
    return f"request body is {'over ' if more else ''}{size} bytes, over the limit of {limit}"


def _error(status: int, code: str, detail: str, headers: dict | None = None) -> FastJSON:
    return FastJSON({"error": code, "detail": detail}, status, headers=headers)


def _internal_error(server: ModelServer, exc: Exception) -> FastJSON:
    logger.exception("unhandled error in %s", server.name, exc_info=exc)
    return _error(500, "internal_error", f"{type(exc).__name__}: the server failed")


class PredictFirst:
    """A labeller replica's ASGI app: POST /predict goes straight to the model server;
    every other request to the FastAPI app (which documents /predict too). FastAPI's
    middleware, routing and dependency solving, and Ray's matching of each request
    against every route to name it in metrics, cost the event loop (the replica's
    bottleneck) more than a small request's own work. Without `routes`, Ray names this
    app's requests by its route prefix in metrics."""

    def __init__(self, app: FastAPI, server: ModelServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")[len(scope.get("root_path", "")) :]
        if scope["type"] != "http" or scope["method"] != "POST" or path != "/predict":
            await self.app(scope, receive, send)
            return
        try:
            response = FastJSON(await self.server.predict(Request(scope, receive)))
        except RequestError as err:
            response = _error(err.status, err.code, err.detail)
        except Exception as err:  # noqa: BLE001  (a 500 that names no internals, logged)
            response = _internal_error(self.server, err)
        await response(scope, receive, send)


def build_fastapi(server: ModelServer) -> FastAPI:
    """The replica's ASGI app: built per replica so routes close over its config."""
    cfg = server.cfg
    errors = {
        code: {"model": ErrorResponse}
        for code in (400, 401, 413, 415, 422) if code != 401 or cfg.get("token_sha256")
    }  # fmt: skip
    app = FastAPI(
        title=f"Skeptic model {server.name}",
        version=str(server.version),
        description=(
            f"Serves the registered model `{server.name}` version {server.version} "
            f"(asked for as `{cfg['ref']}`). "
            + _inputs_text(server)
            + (
                "\n\nEvery request needs `Authorization: Bearer <token>`."
                if errors.get(401)
                else ""
            )
        ),
        docs_url=None,  # served below, so that the token check and the route prefix apply
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> FastJSON:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> FastJSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> FastJSON:
        return _error(422, "invalid_request", str(jsonable_encoder(exc.errors()))[:2000])

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> FastJSON:
        return _internal_error(server, exc)

    if server.routes:
        extra_schemas: dict[str, Any] = {}
        for route in server.routes:
            _add_study_route(app, server, route, errors, extra_schemas)
        _document_schemas(app, extra_schemas)
    else:
        _add_predict_route(app, server, errors)

    @app.get("/healthz", summary="200 when the model is loaded", responses=errors)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": server.name, "version": server.version}

    @app.get("/metadata", summary="the served model version and its facts", responses=errors)
    async def metadata() -> dict[str, Any]:
        return server.metadata()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> FastJSON:
        return FastJSON(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=app.title)

    return app


def _inputs_text(server: ModelServer) -> str:
    """What the app takes, for /docs."""
    if server.routes:
        paths = ", ".join(f"`POST /{r.path}`" for r in server.routes)
        study = getattr(server.study, "name", "?")
        return f"Routes declared by the study `{study}`: {paths} (schemas below)."
    return (
        "Input: float32 arrays of shape "
        f"N x {' x '.join(map(str, server.input_shape))}, or base64 images."
    )


RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp")
RAW_IMAGE = {
    "type": "string",
    "format": "binary",
    "description": "one encoded image as the whole body (no base64, no JSON): decoded and "
    "resized as `images` are; `k` goes in the query string",
}
K_QUERY = {
    "name": "k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": K_MAX},
    "description": "labels to return (top-k), for a raw-image body; a JSON body gives `k`",
}


def _add_predict_route(app: FastAPI, server: ModelServer, errors: dict[int, Any]) -> None:
    """The labeller's POST /predict: tensors or images -> top-k labels, batched."""

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=errors,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": PredictRequest.model_json_schema()},
                    **{media: {"schema": RAW_IMAGE} for media in RAW_IMAGE_TYPES},
                },
            },
            "parameters": [K_QUERY],
        },
        summary=PREDICT_SUMMARY,
    )
    async def predict(request: Request) -> FastJSON:  # reached only past PredictFirst
        return FastJSON(await server.predict(request))


def _add_study_route(
    app: FastAPI,
    server: ModelServer,
    route: Route,
    errors: dict[int, Any],
    extra_schemas: dict[str, Any],
) -> None:
    """POST /<route.path>: the /predict guards (media type, size, depth, a JSON object),
    then the study's request schema, its handler on the replica's handler thread, and its
    response schema plus `model` and `version`."""
    cfg = server.cfg

    async def answer(request: Request) -> FastJSON:
        check_content_type(request.headers.get("content-type"))
        body = await _read_limited(request, cfg["max_payload_bytes"])
        parsed = await server.parse(route, body)
        return FastJSON(await server.handle(route, parsed))

    # The body is read by hand (so the guards run first); its schema is documented here,
    # with nested models' definitions moved to the OpenAPI components.
    schema = route.request.model_json_schema(ref_template="#/components/schemas/{model}")
    extra_schemas.update(schema.pop("$defs", {}))
    app.add_api_route(
        f"/{route.path}",
        answer,
        methods=["POST"],
        name=route.path,
        response_model=route.answer,
        responses=errors,
        summary=route.summary or f"POST /{route.path}",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
    )


def _document_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Add `schemas` (request models' nested definitions) to the app's OpenAPI components."""
    if not schemas:
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        spec = generate()
        if fresh:
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in schemas.items():
                components.setdefault(name, schema)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


class TokenAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer <token>` matches (constant time).
    Runs before routing and before the body is read, on every route."""

    def __init__(self, app: Any, digest: str) -> None:
        self.app, self.digest = app, digest

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            auth = None
            for key, value in scope.get("headers") or ():
                if key == b"authorization":
                    auth = value.decode("latin-1")
                    break
            if not token_ok(auth, self.digest):
                detail = "missing API token" if not auth else "wrong API token"
                response = FastJSON(
                    {
                        "error": "unauthorized",
                        "detail": f"{detail}: send Authorization: Bearer <token>",
                    },
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# The deployment: ingress without a fixed app (routes are built per replica).
ModelServerDeployment = serve.deployment(name=DEPLOYMENT)(serve.ingress()(ModelServer))


# What a replica reserves unless ray_actor_options says otherwise: half a core, since a
# replica's event loop waits on the network much of the time, and one replica per core
# with a whole core each would leave no room for the roll-over's extra replica.
DEFAULT_ACTOR = {"num_cpus": 0.5}
MAX_AUTO_REPLICAS = 8  # each replica is a process with its own torch and model


def auto_replicas(replica_cpus: float, node_cpus: float) -> int:
    """Replicas when neither num_replicas nor autoscaling_config is given: one per core of
    the largest node (a replica answers from one Python thread, so one replica cannot use
    a second core), at most MAX_AUTO_REPLICAS, and with one replica's CPUs left free for
    the extra replica a roll-over starts."""
    fits = int(node_cpus // replica_cpus) - 1 if replica_cpus > 0 else int(node_cpus)
    return max(1, min(MAX_AUTO_REPLICAS, int(node_cpus), fits))


def _node_cpus() -> float:
    """The CPUs of the cluster's largest live node."""
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)


def replica_config(args: ServeArgs) -> dict[str, Any]:
    """Resolve the model (fails here, before any replica starts) and freeze what replicas need."""
    uri = resolve_tracking_uri(args.tracking_uri)
    resolved = resolve(parse_model_ref(args.model), uri)
    check_safe_format(resolved, uri)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    actor = dict(args.ray_actor_options or DEFAULT_ACTOR)
    return {
        "name": resolved.name,
        "version": resolved.version,
        "ref": resolved.ref,
        "alias": resolved.alias,
        "tags": resolved.tags,
        "tracking_uri": uri,
        "batching": args.batching,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
        "max_payload_bytes": args.max_payload_bytes,
        "max_batch_items": args.max_batch_items,
        "max_image_pixels": args.max_image_pixels,
        "max_decoded_pixels": args.max_decoded_pixels,
        "max_json_depth": args.max_json_depth,
        "default_k": args.default_k,
        "num_gpus": actor.get("num_gpus", 0),
        "token_sha256": args.token_sha256 or (token_digest(token) if token else None),
    }


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: validate `args`, pin the model version, bind."""
    try:
        parsed = ServeArgs.model_validate(dict(args or {}))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"bad serving.app args: {problems}") from None
    try:
        cfg = replica_config(parsed)
    except ModelRefError as err:
        raise ValueError(str(err)) from None
    actor = dict(parsed.ray_actor_options or DEFAULT_ACTOR)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # A batch can only be as large as the requests a replica may hold at once.
        "max_ongoing_requests": parsed.max_ongoing_requests or max(64, 2 * parsed.max_batch_size),
        "logging_config": {"enable_access_log": parsed.access_log},
    }
    if parsed.autoscaling_config is not None:
        options["autoscaling_config"] = parsed.autoscaling_config
        base = parsed.autoscaling_config.get("min_replicas") or 1
    elif parsed.num_replicas is not None or actor.get("num_gpus"):
        base = options["num_replicas"] = parsed.num_replicas or 1
    else:
        base = options["num_replicas"] = auto_replicas(actor.get("num_cpus", 1), _node_cpus())
    # A roll-over (new version) starts one replica of the new version before it stops one
    # of the old, so capacity never drops to zero (Serve's default is stop, then start).
    surge = parsed.max_surge_percent
    options["max_surge_percent"] = surge if surge is not None else -(-100 // max(1, base))
    return ModelServerDeployment.options(**options).bind(cfg)

"""The plain-HTTP floor for benchmarks/serve_load.py: the same registered model behind a
plain FastAPI + uvicorn app with simple asyncio micro-batching, no Ray, no checks beyond
what decoding needs. It is what any Python HTTP server pays on these cores; `skeptic
serve` is measured against it. Not part of the product.

POST /predict takes Skeptic's body ({"images": [base64 PNG, ...]}, or one image as the
body with an image/* Content-Type), decodes it with the
same preprocessing (skeptic.data.imagefolder.image_to_array), and answers the top-3
labels. Requests that arrive while a batch runs join the next one (as Skeptic's replica
does); an idle server waits at most FLOOR_BATCH_WAIT_MS for company.

    FLOOR_MODEL_URI=models:/large_batch/1 MLFLOW_TRACKING_URI=sqlite:///... \\
        uvicorn benchmarks.http_floor:app --workers 2 --port 8000
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

MAX_BATCH = int(os.environ.get("FLOOR_MAX_BATCH", "32"))
BATCH_WAIT_S = float(os.environ.get("FLOOR_BATCH_WAIT_MS", "2")) / 1000


class Batcher:
    """One queue, one loop: take what is waiting (up to MAX_BATCH), run it in a thread."""

    def __init__(self, predict: Any) -> None:
        self.predict = predict
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, x: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def run(self) -> None:
        while True:
            items = [await self.queue.get()]
            if self.queue.empty():
                await asyncio.sleep(BATCH_WAIT_S)
            while not self.queue.empty() and len(items) < MAX_BATCH:
                items.append(self.queue.get_nowait())
            batch = np.concatenate([x for x, _ in items])
            try:
                scores = await asyncio.to_thread(self.predict, batch)
            except Exception as err:  # noqa: BLE001  (every waiting request gets the error)
                for _, future in items:
                    future.set_exception(err)
                continue
            start = 0
            for x, future in items:
                future.set_result(scores[start : start + len(x)])
                start += len(x)


def _load() -> tuple[Any, int, list[str]]:
    import mlflow

    model = mlflow.pyfunc.load_model(os.environ["FLOOR_MODEL_URI"])
    shape = model.metadata.get_input_schema().inputs[0].shape
    classes = list((model.metadata.metadata or {}).get("class_names") or [])
    return model, int(shape[-1]), classes


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    model, size, classes = _load()
    batcher = Batcher(model.predict)
    task = asyncio.create_task(batcher.run())
    app.state.batcher, app.state.size, app.state.classes = batcher, size, classes
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


def _decode(body: bytes, size: int, content_type: str) -> np.ndarray:
    from skeptic.data.imagefolder import image_to_array

    raw = content_type.startswith("image/")  # the body is one image
    images = (
        [body] if raw else [base64.b64decode(t) for t in json.loads(body)["images"]]
    )
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as im:
            out[i] = image_to_array(im, size)
    return out


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
async def predict(request: Request) -> JSONResponse:
    state = request.app.state
    x = _decode(
        await request.body(), state.size, request.headers.get("content-type", "")
    )
    scores = np.asarray(await state.batcher.submit(x))
    top = np.argsort(-scores, axis=1)[:, :3]
    names = state.classes or [str(i) for i in range(scores.shape[1])]
    answer = [
        [{"label": names[j], "score": float(s[j])} for j in row]
        for s, row in zip(scores, top)
    ]
    return JSONResponse({"predictions": answer})

"""What the served bottleneck answers over HTTP (Study.endpoints): a scene of digit images
and a cue in, the answer and the conscious state out.

POST /predict: {"slots": [8x8 images, pixels in [0, 1]], "cue": [slot indices, in order]}
-> the answer with its probability, the slots the model selected with their attention
weights (the conscious state), and every slot's weight. The scene must have as many slots,
and the cue as many indices, as the model was trained with (GET /metadata: params.slots,
params.cued).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.consciousness.scenes import PIXELS, WIDTH
from skeptic.api import Endpoint, InvalidRequest

SIDE = 8
MAX_SLOTS = 16
# one real digit (scikit-learn's first) per class, pixel counts 0-16 in base 17, a row each:
# the request example and the pyfunc's input example
_DIGITS = {
    0: "005d9100 00dfaf50 03f20b80 04c00880 05800980 04b01c70 02e5ac00 006da000",
    1: "000cd500 000bg900 003fg600 07fgg200 001gg300 001gg600 001gg600 000bga00",
    2: "0004fc00 003gfe00 008d8g00 0016fb00 018df100 09gg5000 03dggb50 0003bg90",
    3: "007fd100 08d6f400 021dd000 002fb100 0001cc10 00001a80 00845e90 007dd900",
    4: "0001b000 00078000 001d6220 007f0980 05ga0g60 04fgdg10 0003fa00 0002g400",
    7: "0078dgf1 00774bc0 00008d10 0488ff60 02bff400 000g5000 009f1000 00d50000",
}
EXAMPLE_ORDER = (7, 3, 1, 4, 0, 2)  # the example scene's digits: is 7 greater than 3?


def digit_image(label: int) -> list[list[float]]:
    return [[int(c, 17) / 16 for c in row] for row in _DIGITS[label].split()]


def example_images(slots: int) -> list[list[list[float]]]:
    return [digit_image(EXAMPLE_ORDER[i % len(EXAMPLE_ORDER)]) for i in range(slots)]


Row = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=SIDE, max_length=SIDE)]
Image = Annotated[list[Row], Field(min_length=SIDE, max_length=SIDE)]


class SceneRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"slots": example_images(6), "cue": [0, 1]}]},
    )

    slots: list[Image] = Field(
        min_length=2, max_length=MAX_SLOTS,
        description="the scene: one 8x8 digit image per slot, rows of pixels in [0, 1] "
        "(scikit-learn's digits / 16); as many slots as the model reads (GET /metadata: "
        "params.slots)",
    )  # fmt: skip
    cue: list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        min_length=1, max_length=MAX_SLOTS - 1,
        description="the cued slots' indices, in order (for `greater`: is the first cued "
        "digit greater than the second?)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _cue_in_scene(self) -> SceneRequest:
        if len(set(self.cue)) != len(self.cue):
            raise ValueError(f"cue: the cued slots must differ, got {self.cue}")
        if max(self.cue) >= len(self.slots):
            raise ValueError(f"cue: slot {max(self.cue)} is not in a scene of {len(self.slots)} slots")
        return self


class Selected(BaseModel):
    slot: int
    weight: float = Field(description="its attention weight (the selected weights sum to 1)")


class SceneResponse(BaseModel):
    question: str = Field(description="what the cue asks, in words")
    answer: bool
    p_yes: float = Field(description="the model's probability that the answer is yes")
    selected: list[Selected] = Field(
        description="the conscious state: the slots the bottleneck read, heaviest first"
    )
    weights: list[float] = Field(description="every slot's attention weight, in slot order")


def scene_array(images: list[Any], cue: list[int]) -> np.ndarray:
    """One scene (slots, 65) as the model reads it (scenes.py)."""
    x = np.zeros((len(images), WIDTH), dtype=np.float32)
    x[:, :PIXELS] = np.asarray(images, dtype=np.float32).reshape(len(images), PIXELS)
    x[cue, PIXELS] = np.arange(1, len(cue) + 1, dtype=np.float32)
    return x


def example_scene(config: dict[str, Any]) -> np.ndarray:
    slots, cued = int(config["slots"]), int(config["cued"])
    return scene_array(example_images(slots), list(range(cued)))


def question(task: str, cue: list[int]) -> str:
    if task == "greater":
        return f"is the digit in slot {cue[0]} greater than the digit in slot {cue[1]}?"
    slots = ", ".join(str(c) for c in cue)
    return f"is the sum of the digits in slots {slots} above {4.5 * len(cue):g}?"


def answer(model: nn.Module, request: SceneRequest) -> dict[str, Any]:
    if len(request.slots) != model.slots:
        raise InvalidRequest(f"slots: this model reads scenes of {model.slots} slots, "
                             f"got {len(request.slots)}")  # fmt: skip
    if len(request.cue) != model.cued:
        raise InvalidRequest(f"cue: this model's tasks cue {model.cued} slots, got {len(request.cue)}")
    x = torch.as_tensor(scene_array(request.slots, request.cue))[None]
    device = next(model.parameters()).device
    with torch.no_grad():
        logits, weights = model.attend(x.to(device))
    p_yes = float(torch.softmax(logits.float(), -1)[0, 1])
    w = weights[0].float().cpu().numpy() if weights is not None else np.zeros(model.slots)
    order = [int(i) for i in np.argsort(-w, kind="stable") if w[i] > 0]
    return {
        "question": question(model.config.get("task", "greater"), request.cue),
        "answer": p_yes > 0.5, "p_yes": p_yes,
        "selected": [{"slot": i, "weight": float(w[i])} for i in order],
        "weights": [float(v) for v in w],
    }  # fmt: skip


ENDPOINTS = (
    Endpoint("predict", SceneRequest, SceneResponse, "answer",
             "the answer to a cued question about a scene, and the slots the model selected"),
)  # fmt: skip

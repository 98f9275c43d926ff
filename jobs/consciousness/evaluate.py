"""What a trial measures on a split: accuracy, and how often its attention picks the cued
slots (the "conscious state" looked at directly)."""

from __future__ import annotations

import numpy as np
import torch

from jobs.consciousness.models import SceneNet
from jobs.consciousness.scenes import Scenes

CHUNK = 1024


def ood(shift: str) -> str:
    """The prefix of a shifted test's metrics: `ood_classes_acc`, `ood_classes_sel_recall`."""
    return f"ood_{shift}"


def drop(shift: str) -> str:
    """In-distribution test accuracy minus the shifted test's (lower is better)."""
    return f"ood_{shift}_drop"


@torch.no_grad()
def attend(model: SceneNet, scenes: Scenes, device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """(class probabilities (n, 2), slot weights (n, slots) or None) in eval mode."""
    was = model.training
    model.eval()
    probs, weights = [], []
    try:
        for xb in torch.as_tensor(scenes.x).split(CHUNK):
            logits, w = model.attend(xb.to(device))
            probs.append(torch.softmax(logits.float(), -1).cpu())
            if w is not None:
                weights.append(w.float().cpu())
    finally:
        model.train(was)
    return torch.cat(probs).numpy(), (torch.cat(weights).numpy() if weights else None)


def selected(weights: np.ndarray, model: SceneNet) -> np.ndarray:
    """Which slots a model read, per scene (n, slots) booleans: those it gave weight (top-k,
    random-k, workspace), or for soft attention the `cued` slots it weighted most (what a
    bottleneck at k_true would have kept)."""
    if model.select != "soft":
        return weights > 0
    top = np.argsort(-weights, axis=1, kind="stable")[:, : model.cued]
    mask = np.zeros(weights.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def recall(chosen: np.ndarray, cued: np.ndarray) -> float:
    """Mean fraction of each scene's cued slots among the chosen ones (a boolean mask)."""
    return float(np.mean(np.take_along_axis(chosen, cued, axis=1).mean(axis=1)))


def measure(model: SceneNet, scenes: Scenes, split: str, device: torch.device) -> dict[str, float]:
    """`{split}_acc` and, for a model that attends, `{split}_sel_recall`."""
    probs, weights = attend(model, scenes, device)
    out = {f"{split}_acc": float(np.mean(probs.argmax(1) == scenes.y))}
    if weights is not None:
        out[f"{split}_sel_recall"] = recall(selected(weights, model), scenes.cued)
    return out

"""Target test scores: accuracy, and the mean of the per-class accuracies (the reference's
`test_perclass`: confusion_matrix(...).diagonal() / row sums, averaged), which weighs every
class present alike: under label shift, plain accuracy mostly measures the frequent classes."""

from __future__ import annotations

import torch
from torch import nn

from skeptic.training import predict


def mean_class_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the classes present in `y` of the fraction of that class predicted right."""
    classes = torch.unique(y)
    recalls = [(pred[y == c] == c).float().mean() for c in classes]
    return torch.stack(recalls).mean().item()


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """test_acc and test_mca of `model` on (x, y), in eval mode (as skeptic.training.evaluate)."""
    pred = predict(model, x).float().argmax(1)
    return {"acc": (pred == y).float().mean().item(), "mca": mean_class_accuracy(pred, y)}

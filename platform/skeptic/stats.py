"""The small statistics every verdict uses: mean and spread over seeds, and the standard
error of a difference of two such means (the noise a gap must clear)."""

from __future__ import annotations

import math

import numpy as np


def summarize(values: list[float]) -> dict[str, float]:
    """mean, sample std (NaN for a single value: the spread is unknown) and n."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def diff_se(a: dict[str, float], b: dict[str, float]) -> float:
    """Standard error of mean(b) - mean(a) for two independent summaries."""
    return math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])

"""The paper's weight-distance claim, fitted instead of asserted.

Hoffer et al. (Section 3, Figure 2) argue that in the initial high-lr phase the weights move
like a random walk on a random potential, so their distance from initialization grows like
log t (t: updates), not like t or sqrt(t), and a large batch, making fewer updates per
epoch, ends the phase closer to its init. Here, per trial, over the constant-lr phase (the
rounds before the first drop), on its points from t = 1 (the study probes the distance at
t = 1, 2, 4, ... updates, as well as at the end of every round), we fit by least squares

    log model:    d(t) = a + s * ln t
    linear model: d(t) = a + c * t

and report, per arm, the slope s and both R^2 (mean and sd over seeds), and in how many
seeds the log model fits better. Both models have two parameters, so comparing their R^2
is fair. A description, not a test: a curve that bends down (concave) fits ln t better
than t, and sqrt(t) would too; the report says so.

`weight_distance` is over every parameter; `weight_distance_first` over the first layer's
weight only, the tensor bigBatch's main_gbn.py logs (step_dist_n0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skeptic.api import TrialResult

KEYS = {"weight_distance": "all weights", "weight_distance_first": "first layer"}
MIN_POINTS = 3  # a two-parameter fit with one degree of freedom left


def constant_phase(history: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(updates, distance), sorted by updates, of the rounds trained at the first round's
    lr: each round's end (`key` at `updates`) and the probes taken within it at t = 1, 2,
    4, ... updates (`key.t00004`)."""
    if not history or "lr" not in history[0]:
        return np.zeros(0), np.zeros(0)
    lr0, probe = history[0]["lr"], f"{key}.t"
    points: dict[float, float] = {}
    for h in history:
        if not np.isclose(h["lr"], lr0):
            continue
        # A sweep's history comes back as a table: a probe taken in another round is NaN here.
        if np.isfinite(h.get(key, np.nan)):
            points[float(h["updates"])] = float(h[key])
        points.update(
            {float(k[len(probe) :]): float(v) for k, v in h.items()
             if k.startswith(probe) and np.isfinite(v)}
        )  # fmt: skip
    t = np.array(sorted(points), dtype=float)
    return t, np.array([points[v] for v in t], dtype=float)


def r_squared(x: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(slope, R^2) of the least-squares line d = a + slope * x."""
    slope, icpt = np.polyfit(x, d, 1)
    resid = d - (icpt + slope * x)
    total = float(np.sum((d - d.mean()) ** 2))
    return float(slope), (1.0 - float(np.sum(resid**2)) / total) if total > 0 else float("nan")


def fit(t: np.ndarray, d: np.ndarray) -> dict[str, float] | None:
    """The log and the linear fit of one trial's curve; None with too few points."""
    if len(t) < MIN_POINTS or np.any(t <= 0):
        return None
    slope, r2_log = r_squared(np.log(t), d)
    _, r2_lin = r_squared(t, d)
    return {"slope": slope, "r2_log": r2_log, "r2_lin": r2_lin, "points": float(len(t))}


def _row(arm: str, batch: int, what: str, fits: list[dict[str, float]]) -> dict[str, Any]:
    def ms(key: str) -> str:
        v = np.array([f[key] for f in fits])
        sd = f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""
        return f"{np.mean(v):.3f}{sd}"

    better = sum(f["r2_log"] > f["r2_lin"] for f in fits)
    return {
        "arm": arm, "batch": batch, "weights": what, "points": int(fits[0]["points"]),
        "slope per ln t": ms("slope"), "R^2 log t": ms("r2_log"), "R^2 linear t": ms("r2_lin"),
        "log fits better (seeds)": f"{better}/{len(fits)}",
    }  # fmt: skip


def table(groups: dict[tuple[str, int], list[TrialResult]]) -> list[dict[str, Any]]:
    """One row per (arm, batch, weights): the fits over that arm's seeds."""
    rows = []
    for (arm, batch), trials in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for key, what in KEYS.items():
            fits = [f for t in trials if (f := fit(*constant_phase(t.history, key))) is not None]
            if fits:
                rows.append(_row(arm, batch, what, fits))
    return rows


def agreement(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """("yes" / "no" / "undecided", what the fits show): yes when ln t fits better than t in
    every seed of every arm, no when t fits better in most, else undecided."""
    counts = [tuple(map(int, r["log fits better (seeds)"].split("/"))) for r in rows]
    better, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if not total:
        return "undecided", "no constant-lr phase with enough points to fit"
    text = f"ln t fits better than t in {better} of {total} (trial, weights) curves"
    if better == total:
        return "yes", text
    return ("no" if better < total / 2 else "undecided"), text

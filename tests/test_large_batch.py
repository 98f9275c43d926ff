"""Study `large_batch`, unit by unit on tiny models: the budget in updates (+RA makes exactly
SB's updates), the batches that spend it, the weight-distance fits, the reported
comparisons and the paper's numbers beside ours."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
import torch

from jobs.large_batch import distance
from jobs.large_batch.evidence import paper_rows, sb_lr_check
from jobs.large_batch.schedule import batches, total_updates, updates_per_round
from jobs.large_batch.study import ARMS, LargeBatch, Params
from jobs.large_batch.verdict import (
    CLOSES,
    GAP,
    GBN_UNDER_RA,
    RA_ALONE,
    RA_ALONE_CLOSES,
    RA_NO_GBN,
    REPORTED,
)
from skeptic.contexts import OneProcess
from skeptic.spec import load_spec
from skeptic.stats import judge
from skeptic.study import TrialResult


class RecordingContext(OneProcess):
    """A TrialContext that keeps what the study reports (no Ray, no MLflow)."""

    def __init__(self, params: Params, data: dict[str, Any], seed: int = 0) -> None:
        self.params, self.data, self.seed = params, data, seed
        self.device = torch.device("cpu")
        self.start_epoch, self.state, self.upstream = 0, None, {}
        self.history: list[dict[str, float]] = []

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: float | None = None):
        self.history.append(metrics)


def _data(n_train: int = 300, side: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.random((n, 3, side, side), dtype=np.float32), rng.integers(0, 10, n)

    (x, y), (xv, yv), (xt, yt) = split(n_train), split(50), split(50)
    return {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv, "x_test": xt, "y_test": yt,
            "classes": [str(i) for i in range(10)]}  # fmt: skip


def _params(arm: str, batch: int, **kw: Any) -> Params:
    tiny = {"base_batch": 16, "epochs": 3, "width": 8, "depth": 2}
    fields = {k: v for k, v in ARMS[arm].items()}
    if fields.get("ghost_batch"):
        fields["ghost_batch"] = 16
    return Params(**{**tiny, **fields, "batch_size": batch, **kw})


def _train(params: Params, data: dict[str, Any]) -> list[dict[str, float]]:
    torch.manual_seed(0)
    ctx = RecordingContext(params, data)
    LargeBatch().train(ctx)
    return ctx.history


# ---- the budget in updates ------------------------------------------------------------------


@pytest.mark.parametrize("n", [300, 256, 9600, 1000])
@pytest.mark.parametrize("big", [64, 100, 256])
def test_ra_update_budget_equals_sbs_whatever_the_sizes(n: int, big: int) -> None:
    sb = _params("SB", 16)
    for arm in ("+RA", RA_NO_GBN):
        assert total_updates(_params(arm, big), n) == total_updates(sb, n) == 3 * (n // 16)
    assert total_updates(_params("LB", big), n) == 3 * (n // big)  # LB: SB's epochs only


def test_ra_trains_exactly_sbs_number_of_updates() -> None:
    """The issue's case: before, +RA rounded epochs from B / B_small and kept the last partial
    batch (2240 updates against SB's 2000 at batch 2048). Trained for real here, with a batch
    that divides neither the data nor the small batch's epoch."""
    data = _data(n_train=300)
    sb = _train(_params("SB", 16), data)
    for arm in ("+RA", RA_NO_GBN):
        ra = _train(_params(arm, 100), data)
        assert len(ra) == len(sb) == 3  # one report per round for every arm
        assert ra[-1]["updates"] == sb[-1]["updates"] == 3 * (300 // 16)
        assert [r["lr"] for r in ra] == [r["lr"] for r in sb]  # drops after the same updates
    lb = _train(_params("LB", 100), data)
    assert lb[-1]["updates"] == 3 * 3 and lb[-1]["data_epochs"] == pytest.approx(3 * 300 / 300)


def test_counted_updates_are_the_batches_actually_taken() -> None:
    p, n = _params("+RA", 100), 300
    per = updates_per_round(p.batch_size, p.base_batch, p.regime, n)
    taken = [idx for r in range(p.epochs) for idx in batches(n, 100, 0, r * per, per)]
    assert len(taken) == total_updates(p, n) == 54
    assert all(len(idx) == 100 for idx in taken)  # no partial batch, ever


def test_batches_are_full_disjoint_per_data_epoch_and_resumable() -> None:
    n, b = 350, 100
    stream = list(batches(n, b, seed=3, start=0, count=9))
    for epoch in range(3):  # 3 full batches per data epoch; the 50 left over are dropped
        seen = torch.cat(stream[3 * epoch : 3 * epoch + 3])
        assert len(seen.unique()) == 300
    assert not torch.equal(stream[0], stream[3])  # every data epoch has its own order
    resumed = list(batches(n, b, seed=3, start=4, count=5))
    assert all(torch.equal(a, c) for a, c in zip(resumed, stream[4:], strict=True))


def test_a_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        updates_per_round(512, 16, "fixed", 300)


# ---- the weight-distance fits ---------------------------------------------------------------


def _history(ts: np.ndarray, d: np.ndarray, lr_change_at: int) -> list[dict[str, float]]:
    return [{"updates": float(t), "weight_distance": float(v), "weight_distance_first": float(v),
             "lr": 0.1 if i < lr_change_at else 0.01} for i, (t, v) in enumerate(zip(ts, d))]  # fmt: skip


def test_constant_phase_keeps_only_the_rounds_at_the_first_lr() -> None:
    ts = np.arange(1, 11) * 50.0
    t, d = distance.constant_phase(_history(ts, np.log(ts), lr_change_at=6), "weight_distance")
    assert t.tolist() == ts[:6].tolist() and d.tolist() == pytest.approx(np.log(ts[:6]).tolist())


def test_fit_tells_log_growth_from_linear_growth() -> None:
    t = np.arange(1, 11) * 75.0
    log_fit = distance.fit(t, 2.0 + 3.0 * np.log(t))
    assert log_fit["slope"] == pytest.approx(3.0) and log_fit["r2_log"] == pytest.approx(1.0)
    assert log_fit["r2_lin"] < 0.95
    lin_fit = distance.fit(t, 0.01 * t)
    assert lin_fit["r2_lin"] == pytest.approx(1.0) and lin_fit["r2_log"] < lin_fit["r2_lin"]
    assert distance.fit(t[:2], t[:2]) is None  # too few points to fit two parameters


def test_fit_table_and_agreement_over_seeds() -> None:
    t = np.arange(1, 11) * 75.0
    rng = np.random.default_rng(0)
    trials = [TrialResult(f"s{s}", {"arm": "SB", "batch_size": 16, "seed": s},
                          _history(t, 1 + 2 * np.log(t) + 0.01 * rng.normal(size=10), 8),
                          "completed") for s in range(3)]  # fmt: skip
    rows = distance.table({("SB", 16): trials})
    assert [r["weights"] for r in rows] == ["all weights", "first layer"]
    assert rows[0]["log fits better (seeds)"] == "3/3" and rows[0]["points"] == 8
    assert distance.agreement(rows)[0] == "yes"
    linear = [TrialResult("l", {"arm": "LB", "batch_size": 64, "seed": 0},
                          _history(t, 0.01 * t, 8), "completed")]  # fmt: skip
    assert distance.agreement(distance.table({("LB", 64): linear}))[0] == "no"


def test_the_study_reports_both_distances_and_they_grow() -> None:
    h = _train(_params("SB", 16), _data())  # 18 updates per round, 54 in all
    assert all(r["weight_distance"] > r["weight_distance_first"] > 0 for r in h)
    assert h[-1]["weight_distance"] > h[0]["weight_distance"]
    probes = [sorted(k for k in r if k.startswith("weight_distance.t")) for r in h]
    assert probes == [
        [f"weight_distance.t{t:05d}" for t in ts] for ts in ([1, 2, 4, 8, 16], [32], [])
    ]
    assert h[1]["weight_distance_first.t00032"] > h[0]["weight_distance_first.t00001"] > 0
    t, d = distance.constant_phase(h, "weight_distance")  # drops at 0.5: round 0 only
    assert t.tolist() == [1, 2, 4, 8, 16, 18] and np.all(np.diff(d) > 0)


def test_constant_phase_merges_probes_and_round_ends() -> None:
    h = [{"updates": 75.0, "lr": 0.1, "weight_distance": 5.0, "weight_distance.t00001": 1.0,
          "weight_distance.t00064": 4.0, "weight_distance_first.t00001": 9.0},
         {"updates": 150.0, "lr": 0.1, "weight_distance": 6.0, "weight_distance.t00128": 5.5},
         {"updates": 225.0, "lr": 0.01, "weight_distance": 6.1, "weight_distance.t00512": 6.1}]  # fmt: skip
    t, d = distance.constant_phase(h, "weight_distance")
    assert t.tolist() == [1, 64, 75, 128, 150] and d.tolist() == [1.0, 4.0, 5.0, 5.5, 6.0]
    # As a sweep reads its history back (a table: every key in every row, NaN where a round
    # did not report it), the same points, none overwritten by a NaN.
    keys = {k for row in h for k in row}
    table = [{k: row.get(k, float("nan")) for k in sorted(keys)} for row in h]
    t2, d2 = distance.constant_phase(table, "weight_distance")
    assert t2.tolist() == t.tolist() and d2.tolist() == d.tolist()


# ---- comparisons, SB's lr check, the paper beside us -----------------------------------------


def _default_spec():
    return load_spec("large_batch", LargeBatch.defaults, Params)


def test_default_sweep_separates_the_regime_from_ghost_bn() -> None:
    compares = {c.name: c for c in LargeBatch().comparisons(_default_spec())}
    assert {GAP, CLOSES} <= set(compares) and compares[GAP].deciding
    reported = {name for name, *_ in REPORTED} | {RA_ALONE_CLOSES}
    assert reported <= set(compares)
    assert not any(compares[n].deciding for n in reported)  # reported, in their own family
    assert compares[RA_ALONE].b == {"arm": RA_NO_GBN, "batch_size": 2048}
    assert compares[GBN_UNDER_RA].a["arm"] == RA_NO_GBN and compares[GBN_UNDER_RA].b["arm"] == "+RA"
    assert ARMS[RA_NO_GBN]["regime"] == "adapted" and ARMS[RA_NO_GBN]["ghost_batch"] is None


def _result(arm: str, batch: int, seed: int, acc: float, val: float = 0.5) -> TrialResult:
    final = {"test_acc": acc, "val_acc": val, "updates": 10.0}
    return TrialResult(f"{arm}{seed}", {"arm": arm, "batch_size": batch, "seed": seed,
                                        "lr": 0.05}, [final], "completed")  # fmt: skip


def test_paper_rows_read_the_judged_comparisons() -> None:
    accs = {"SB": 0.84, "LB": 0.77, "+LR": 0.81, "+GBN": 0.82, "+RA": 0.845, RA_NO_GBN: 0.843}
    noise = np.random.default_rng(1).normal(0, 0.001, (len(accs), 4))
    results = [_result(arm, 128 if arm == "SB" else 2048, s, acc + noise[i, s])
               for i, (arm, acc) in enumerate(accs.items()) for s in range(4)]  # fmt: skip
    judged = judge(LargeBatch().comparisons(_default_spec()), results, "test_acc")
    rows = {r["quantity"]: r for r in paper_rows({j.compare.name: j for j in judged}, [])}
    assert rows["SB - LB, largest batch (pp)"]["direction agrees"] == "yes"
    gap = float(rows["SB - LB, largest batch (pp)"]["ours"].split()[0])
    assert gap == pytest.approx(7.0, abs=0.3)  # SB ahead reads positive, as the paper's row
    assert rows["+RA - SB (pp)"]["direction agrees"] == "yes"
    assert float(rows["+LR - LB (pp)"]["ours"].split()[0]) == pytest.approx(4.0, abs=0.3)
    assert rows["‖w_t - w_0‖ in the constant-lr phase"]["direction agrees"] == "undecided"
    assert {r["direction agrees"] for r in rows.values()} <= {"yes", "no", "undecided"}


def test_sb_lr_check_warns_when_validation_prefers_another_lr() -> None:
    def sb(arm: str, lr: float, val: float) -> list[TrialResult]:
        r = _result(arm, 128, 0, 0.8, val)
        r.params["lr"] = lr
        return [r]

    groups = {("SB", 128): sb("SB", 0.05, 0.84), ("SB-lr0.1", 128): sb("SB-lr0.1", 0.1, 0.83)}
    assert "validation's pick" in sb_lr_check(groups)
    groups[("SB-lr0.1", 128)][0].final["val_acc"] = 0.85
    assert sb_lr_check(groups).startswith("WARNING: validation picks lr 0.1")

"""The progress line of `skeptic run`: what it counts, and that a running trial's partial
progress (and only a running trial's) moves the estimate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from skeptic.progress import Progress


@dataclass
class Trial:  # the fields of a Tune trial the callback reads
    trial_id: str
    status: str = "PENDING"
    config: dict = field(default_factory=dict)


def test_the_line_counts_trials_and_forgets_the_progress_of_ended_ones():
    progress = Progress(total=4, metric="val_acc", mode="max")
    trials = [Trial("a", "RUNNING"), Trial("b", "RUNNING"), Trial("c"), Trial("d")]
    progress.on_step_begin(0, trials)
    progress.on_trial_result(0, trials, trials[0], {"val_acc": 0.5, "progress": 0.5})
    progress.on_trial_result(0, trials, trials[1], {"val_acc": 0.7, "progress": 0.25})
    line = progress._line(trials)
    assert "trials 0/4 done, 2 running, 2 pending" in line and "best val_acc 0.7000" in line
    trials[0].status = "TERMINATED"
    progress.on_trial_complete(0, trials, trials[0])
    assert progress.progress == {"b": 0.25}  # a's half is now one whole trial done
    assert "trials 1/4 done, 1 running, 2 pending" in progress._line(trials)


def test_many_trials_make_a_line_in_linear_time():
    trials = [Trial(str(i), "TERMINATED") for i in range(20_000)] + [Trial("r", "RUNNING")]
    progress = Progress(total=len(trials), metric="m", mode="min")
    progress.on_step_begin(0, trials)
    progress.progress = {t.trial_id: 1.0 for t in trials}  # a sweep that never forgot them
    started = time.perf_counter()
    line = progress._line(trials)
    # every progress entry once scanned every trial: 400 million comparisons here, minutes
    assert time.perf_counter() - started < 5
    assert "20000/20001 done, 1 running" in line

"""Compact live progress for `skeptic run` (Tune's own table is kept for --verbose)."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _label(config: dict) -> str:
    """A short name for a trial from its grid point and seed."""
    point = config.get("point", {})
    parts = [str(point["arm"])] if "arm" in point else []
    parts += [f"{k}={v}" for k, v in point.items() if k != "arm"][:2]
    return " ".join([*parts, f"seed={config.get('seed', 0)}"])


class Progress(Callback):
    """One line: trials done / running / pending, best metric so far, elapsed, estimate left."""

    def __init__(self, total: int, metric: str, mode: str, label: str = "") -> None:
        # No stream attribute: Tune pickles its callbacks with the experiment state.
        self.total, self.metric, self.mode, self.label = total, metric, mode, label
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.best: float | None = None
        self.best_trial = ""
        self.progress: dict[str, float] = {}  # trial id -> fraction of its epochs done
        # Trials that really ended. Not Tune's TERMINATED status: a stopped sweep marks its
        # running trials TERMINATED too, and they are not done.
        self.ended: set[str] | None = None
        self.last_print = 0.0

    def setup(self, **info) -> None:
        # Also called when a sweep is resumed: the clock restarts then.
        self.start = time.monotonic()
        self.ended = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.ended is None:  # a resumed sweep: trials that ended before it was stopped
            self.ended = {t.trial_id for t in trials if t.status == "TERMINATED"}

    def _line(self, trials: list) -> str:
        ended = self.ended or set()
        done = sum(t.trial_id in ended for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = self.total - done - failed - running
        elapsed = time.monotonic() - self.start
        # one pass over the trials: a line per ended trial must not cost trials x trials
        running_ids = {t.trial_id for t in trials if t.status == "RUNNING"}
        partial = sum(v for k, v in self.progress.items() if k in running_ids)
        fraction = (done + failed + partial) / max(self.total, 1)
        # a look's last trials can count past its total: never a negative time left
        eta = _clock(max(elapsed / fraction - elapsed, 0.0)) if fraction > 0.02 else "?"
        best = f"{self.best:.4f} ({self.best_trial})" if self.best is not None else "-"
        failed_text = f", {failed} failed" if failed else ""
        label = f"{self.label} " if self.label else ""
        return (
            f"[{_clock(elapsed)}] {label}trials {done}/{self.total} done{failed_text}, {running} running, "
            f"{max(pending, 0)} pending | best {self.metric} {best} | left ~{eta}"
        )

    def _print(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (2 if self.tty else 15):
            return
        self.last_print = now
        end = "\r" if self.tty and not force else "\n"
        print(
            self._line(trials).ljust(100 if self.tty else 0), end=end, file=sys.stderr, flush=True
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if value is not None and self._better(value):
            self.best, self.best_trial = value, _label(trial.config)
        if "progress" in result:
            self.progress[trial.trial_id] = float(result["progress"])
        self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.ended is None:
            self.ended = set()
        self.ended.add(trial.trial_id)
        self.progress.pop(trial.trial_id, None)  # an ended trial counts as done, not partial
        self._print(trials, force=not self.tty)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"\ntrial {trial.trial_id} failed: see {trial.error_file}", file=sys.stderr)

    def on_experiment_end(self, trials, **info) -> None:
        self._print(trials, force=True)

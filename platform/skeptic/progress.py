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

    def __init__(self, total: int, metric: str, mode: str) -> None:
        # No stream attribute: Tune pickles its callbacks with the experiment state.
        self.total, self.metric, self.mode = total, metric, mode
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.best: float | None = None
        self.best_trial = ""
        self.done = self.failed = 0
        self.progress: dict[str, float] = {}  # trial id -> fraction of its epochs done
        self.last_print = 0.0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _line(self, trials: list) -> str:
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = self.total - self.done - self.failed - running
        elapsed = time.monotonic() - self.start
        fraction = (self.done + self.failed + sum(self.progress.values())) / max(self.total, 1)
        eta = _clock(elapsed / fraction - elapsed) if fraction > 0.02 else "?"
        best = f"{self.best:.4f} ({self.best_trial})" if self.best is not None else "-"
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"[{_clock(elapsed)}] trials {self.done}/{self.total} done{failed}, {running} running, "
            f"{max(pending, 0)} pending | best {self.metric} {best} | left ~{eta}"
        )

    def _print(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (2 if self.tty else 15):
            return
        self.last_print = now
        end = "\r" if self.tty and not force else "\n"
        print(self._line(trials).ljust(100 if self.tty else 0), end=end, file=sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if value is not None and self._better(value):
            self.best, self.best_trial = value, _label(trial.config)
        if "progress" in result:
            self.progress[trial.trial_id] = float(result["progress"])
        self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.progress.pop(trial.trial_id, None)
        self._print(trials, force=not self.tty)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.failed += 1
        self.progress.pop(trial.trial_id, None)
        print(f"\ntrial {trial.trial_id} failed: see {trial.error_file}", file=sys.stderr)

    def on_experiment_end(self, trials, **info) -> None:
        self._print(trials, force=True)

"""Ctrl-C and SIGTERM stop a sweep cleanly; they never end it as if it had finished.

The first SIGINT (Ctrl-C, to the process or its group) or SIGTERM (`ray job stop`,
Kubernetes) is remembered and handed to Tune's own graceful stop: Tune writes its
experiment state one last time, with the running trials still marked as running (so
`skeptic resume` continues them from their checkpoints), then stops them. The runner
then closes the MLflow runs as KILLED and raises `Interrupted` instead of judging.

SIGTERM closes the MLflow runs at once, before Tune's stop: `ray job stop` sends SIGKILL
three seconds later. A second signal during the clean-up closes the runs and exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Self

from skeptic.schema import Outcome

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells do
# Tune's graceful stop listens on SIGUSR1 as well as SIGINT; with its SIGINT handler
# switched off, SIGINT stays ours and we pass the request on through SIGUSR1's handler.
TUNE_SIGINT_SWITCH = "TUNE_DISABLE_SIGINT_HANDLER"
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The sweep was stopped by a signal; its runs are closed and it can be resumed."""

    def __init__(self, signum: int, finished: int, total: int, resume: str) -> None:
        self.signum, self.finished, self.total, self.resume = signum, finished, total, resume
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: {finished} of {total} trials finished; "
            f"continue with: {resume}"
        )

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signum, 130)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1 while Tune is not running: its default action would kill the process."""


class StopOnSignal:
    """While active (a `with` block on the main thread), turn SIGINT/SIGTERM into a clean stop.

    `close_runs(outcome)` ends the sweep's MLflow runs as KILLED, the running trials' with
    `outcome`; it must be quick and idempotent.
    """

    def __init__(self, close_runs: Callable[[Outcome], None]) -> None:
        self.close_runs = close_runs
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only
        os.environ[TUNE_SIGINT_SWITCH] = "1"
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, _ignore)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def tune_running(self) -> Iterator[None]:
        """Around `tuner.fit()`: afterwards Tune's SIGUSR1 handler is stale (nothing watches
        the event it sets), so a signal must unwind to the runner again."""
        try:
            yield
        finally:
            if self._previous:
                signal.signal(signal.SIGUSR1, _ignore)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.close_runs(Outcome.KILLED)
            print("\nskeptic: stopped at once; runs closed as KILLED", file=sys.stderr, flush=True)
            os._exit(EXIT_STATUS.get(self.signum, 130))
        self.signum = signum
        if signum == signal.SIGTERM:
            self.close_runs(Outcome.INTERRUPTED)
        print(
            "\nskeptic: stopping the sweep (running trials are stopped and checkpointed); "
            "Ctrl-C again to quit at once",
            file=sys.stderr,
            flush=True,
        )
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop) and tune_stop is not _ignore:
            tune_stop(signum, frame)  # Tune is running: its own graceful stop
        else:
            raise KeyboardInterrupt  # before or after Tune: unwind to the runner

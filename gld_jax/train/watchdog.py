"""A process that is alive but stuck: no training step finished for too long.

A process stuck in Python, in I/O or in a collective whose peer is stuck keeps
its heartbeats going, so neither the runtime nor the peer monitor notices it,
and its peers wait in a collective forever. The trainer reports every finished
step; when none finishes for `watchdog_bound` seconds, the watchdog writes
every thread's Python stack to stderr (faulthandler) and stops the run with
exit 75 (peers.stop_run: every process, one line). Compilation is excluded:
the watchdog is armed after a stage's first step and paused outside the loop.
"""

from __future__ import annotations

import collections
import faulthandler
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

from gld_jax.train import peers, progress

MIN_BOUND_S = 600.0  # the default's floor: 10 minutes
MEDIAN_STEPS = 20  # ... or 20 median steps, if longer


def watchdog_bound(watchdog_s: float, step_seconds: Sequence[float]) -> float:
    """Seconds without a finished step before the watchdog fires: `watchdog_s`
    when set (> 0), else the larger of 10 minutes and 20 median steps."""
    if watchdog_s > 0:
        return float(watchdog_s)
    if not step_seconds:
        return MIN_BOUND_S
    return max(MIN_BOUND_S, MEDIAN_STEPS * statistics.median(step_seconds))


class StepWatchdog:
    """`step_done()` after each finished step, `pause()` before work that is not
    a step (compiling the next stage, validation); `close()` at the end."""

    def __init__(
        self,
        watchdog_s: float,
        on_stall: Callable[[str], None],
        *,
        describe: Callable[[], str] = lambda: "",
        check_every_s: float | None = None,
    ):
        self._watchdog_s = float(watchdog_s)
        self._on_stall = on_stall
        self._describe = describe
        self._durations: collections.deque[float] = collections.deque(maxlen=200)
        self._lock = threading.Lock()
        self._last: float | None = None  # None: paused
        self._closed = threading.Event()
        self._check_every = check_every_s or min(5.0, max(0.2, self.bound() / 20))
        threading.Thread(target=self._run, name="gld-jax-watchdog", daemon=True).start()

    def bound(self) -> float:
        with self._lock:
            return watchdog_bound(self._watchdog_s, list(self._durations))

    def step_done(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None:
                self._durations.append(now - self._last)
            self._last = now

    def pause(self) -> None:
        with self._lock:
            self._last = None

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(self._check_every):
            bound = self.bound()
            with self._lock:
                idle = None if self._last is None else time.monotonic() - self._last
            if idle is not None and idle > bound:
                try:
                    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                except (AttributeError, ValueError, OSError):  # a stderr without a file
                    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
                self._on_stall(
                    f"stalled: no training step finished for {bound:g} s (train.watchdog_s) "
                    f"{self._describe()}; every thread's stack is above; rerun the same "
                    "command to resume"
                )
                return


def _where_this_process() -> str:
    import jax

    where = progress.where()
    if jax.process_count() == 1:
        return where
    return f"on process {jax.process_index()} of {jax.process_count()}, {where}"


def run_watchdog(watchdog_s: float) -> StepWatchdog:
    """The training loop's watchdog: a stall stops the run with exit 75 and its
    line, on every process (peers.stop_run)."""
    return StepWatchdog(
        watchdog_s,
        on_stall=lambda line: peers.stop_run(75, line),
        describe=_where_this_process,
    )

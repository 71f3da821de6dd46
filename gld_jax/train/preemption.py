"""SIGTERM -> a checkpoint at the current step and a clean exit.

A preempted TPU VM (spot / queued resource) gets SIGTERM shortly before it is
taken away. The handler only sets a flag; the loop polls it, saves, and raises
`TrainingPreempted`, which `main` turns into exit code 75 (EX_TEMPFAIL: "try
again"); rerunning the same command resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class TrainingPreempted(RuntimeError):
    """Stopped on SIGTERM after saving a checkpoint."""


class PreemptionWatcher:
    """Turns SIGTERM into a flag the training loop polls with `requested()`."""

    # Multi-host: all processes must stop at the same step (a process that stops
    # alone leaves the others waiting in a collective), so they agree by an
    # all-gather every `sync_every` steps.
    sync_every = 10

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._flag = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self._flag = True

    def requested(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._flag))
        return bool(np.any(flags))

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

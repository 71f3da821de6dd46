"""Fault injection for the tests of lost hosts, stalls and interrupted saves
(tests/test_host_faults.py): deterministic, where a kill from outside would
depend on timing.

Set GLD_JAX_TEST_FAULT=KIND@STEP in one process's environment; that process
then misbehaves at global training step STEP. Unset (any normal run), nothing
here does anything. KIND is one of:

  sigkill         after step STEP, once its checkpoint saves are committed, the
                  process SIGKILLs itself (a crashed or OOM-killed host)
  sigstop         after step STEP the process SIGSTOPs itself (a frozen host: no
                  heartbeats; the test ends it)
  sleep           inside step STEP the process sleeps for an hour (stuck in
                  Python, its heartbeats still going)
  save_error      the checkpoint save at step STEP fails with ENOSPC (a full disk)
  kill_in_commit  the process SIGKILLs itself inside the commit of the
                  checkpoint at step STEP: after every process wrote its data,
                  before the checkpoint is marked complete (only process 0
                  commits, so set it there)
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import time
from collections.abc import Callable

ENV = "GLD_JAX_TEST_FAULT"
KINDS = ("sigkill", "sigstop", "sleep", "save_error", "kill_in_commit")


def parse(spec: str) -> tuple[str, int] | None:
    """'sigkill@3' -> ('sigkill', 3); '' -> None.

    Raises:
      ValueError: an unknown kind or a step that is not a whole number.
    """
    if not spec:
        return None
    kind, _, step = spec.partition("@")
    if kind not in KINDS or not step.isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected KIND@STEP with KIND one of {', '.join(KINDS)}")
    return kind, int(step)


@functools.cache
def fault() -> tuple[str, int] | None:
    return parse(os.environ.get(ENV, ""))


def after_step(step: int, wait_for_saves: Callable[[], None]) -> None:
    """The trainer calls this after each step (`step`: global step)."""
    f = fault()
    if f is None or f[1] != step:
        return
    if f[0] == "sigkill":
        wait_for_saves()
        os.kill(os.getpid(), signal.SIGKILL)
    elif f[0] == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif f[0] == "sleep":
        time.sleep(3600)


def check_save(step: int, directory: str) -> None:
    """Raises the injected full disk for the save at `step`."""
    if fault() == ("save_error", step):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)


def kill_in_commit_step() -> int | None:
    f = fault()
    return f[1] if f is not None and f[0] == "kill_in_commit" else None


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

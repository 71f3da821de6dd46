"""Lost hosts: every process of a multi-process run beats in the coordination
service's key-value store, and a run that stops, stops on every process with
the same line and exit code.

Why our own heartbeat: in jax 0.10.2 the distributed runtime reports a lost
peer by aborting the survivors (`LOG(FATAL)`: exit 134 after a C++ stack dump),
and the client's `missed_heartbeat_callback`, meant to replace that, aborts
with std::bad_cast when called from Python. So each process writes a counter
under `beat/<id>` every `interval` seconds and reads everybody's; a counter
unchanged for `timeout_s` is a lost host (SIGKILL, OOM kill, a frozen or
unreachable machine), and so is the coordination service not answering for
that long. The runtime's own heartbeat is set longer (distributed.py), and the
service runs in a process of its own (coordinator.py), so neither fires first.

The stop: the process that ends the run (a lost host, a stalled step, an
error) posts its exit code and line under `stop`; every other process's
monitor sees it within an interval and exits with the same code and line.
Exits go through `os._exit` after flushing: the runtime's shutdown (a barrier
over every process) and pending collectives are skipped, so nothing waits on a
dead peer, and no checkpoint is attempted.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import NoReturn

from gld_jax.utils.progress import end_bars

log = logging.getLogger(__name__)

PREFIX = "gld_jax/peers/"
DONE = "done"

_monitor: PeerMonitor | None = None
_exit_hooks: list[Callable[[], None]] = []


def on_exit(hook: Callable[[], None]) -> None:
    """Runs `hook` when this process ends in order (`exit_now`, `finish_run`)."""
    _exit_hooks.append(hook)


def _run_exit_hooks() -> None:
    for hook in _exit_hooks:
        try:
            hook()
        except Exception:  # an exit must not fail on a hook
            pass


def exit_now(code: int, line: str) -> NoReturn:
    """Prints `line` on stderr and ends the process with `code` at once: no
    atexit handlers, no runtime shutdown, no waiting for other threads."""
    end_bars()
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    _run_exit_hooks()
    os._exit(code)


def beat_interval(timeout_s: float) -> float:
    """Seconds between beats: a tenth of the timeout, within [0.2, 2]."""
    return min(2.0, max(0.2, timeout_s / 10))


def stale_peers(
    last_change: Mapping[int, float], now: float, timeout_s: float, done: Collection[int]
) -> list[int]:
    """The processes whose beat has not changed for more than `timeout_s`
    seconds before `now` (the observer's monotonic clock), finished ones excluded.

    last_change: process id -> when the observer last saw its beat change."""
    return sorted(q for q, t in last_change.items() if q not in done and now - t > timeout_s)


def lost_host_line(
    lost: list[int], num_processes: int, hosts: Mapping[int, str], timeout_s: float, where: str
) -> str:
    """The one line for lost hosts, e.g. 'lost host: process 1 of 2 (w-1) sent no
    heartbeat for 30 s; the run stopped at step 12, last complete checkpoint: step
    10; rerun the same command to resume'."""
    names = (
        ", ".join(f"process {q}" + (f" ({hosts[q]})" if q in hosts else "") for q in lost)
        + f" of {num_processes}"
    )
    verb = "sent" if len(lost) == 1 else "each sent"
    return (
        f"lost host: {names} {verb} no heartbeat for {timeout_s:g} s; the run stopped "
        f"{where}; rerun the same command to resume"
    )


def lost_service_line(address: str, timeout_s: float, where: str) -> str:
    return (
        f"lost host: the coordination service at {address} (process 0's host) did not "
        f"answer for {timeout_s:g} s; the run stopped {where}; rerun the same command to resume"
    )


class PeerMonitor:
    """Two daemon threads: one beats and reads the others' beats and the stop
    key; one judges (so a key-value call that hangs, e.g. on a frozen service,
    still ends in a verdict)."""

    def __init__(
        self,
        client,
        process_id: int,
        num_processes: int,
        timeout_s: float,
        *,
        where: Callable[[], str],
        service_address: str = "",
    ):
        self._client = client
        self.process_id = process_id
        self.num_processes = num_processes
        self.timeout_s = float(timeout_s)
        self.interval = beat_interval(self.timeout_s)
        self._where = where
        self._address = service_address
        now = time.monotonic()
        self._lock = threading.Lock()
        self._seen: dict[int, str] = {}
        self._last_change = {q: now for q in range(num_processes) if q != process_id}
        self._hosts: dict[int, str] = {}
        self._done: set[int] = set()
        self._last_ok = now
        self._finished = threading.Event()  # the threads end
        self._done_self = threading.Event()  # this process beats DONE
        self._count = 0

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self._client.key_value_set(f"{PREFIX}host/{self.process_id}", socket.gethostname())
        for target, name in ((self._beat_loop, "beat"), (self._judge_loop, "judge")):
            threading.Thread(target=target, name=f"gld-jax-peers-{name}", daemon=True).start()

    def finish(self, wait_s: float) -> None:
        """This process's part is done: it stops beating (the others stop watching
        it). Process 0 then waits, at most `wait_s`, for the others to be done as
        well, since the coordination service ends soon after it does."""
        self._done_self.set()
        self._client.key_value_set(f"{PREFIX}beat/{self.process_id}", DONE, allow_overwrite=True)
        if self.process_id == 0:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                with self._lock:
                    if len(self._done) >= self.num_processes - 1:
                        break
                time.sleep(self.interval)
        self._finished.set()

    # -- the stop -------------------------------------------------------------------

    def stop(self, code: int, line: str) -> NoReturn:
        """Ends the run on every process: posts (code, line) for the others, then
        exits. When another process posted first, its code and line win."""
        message = json.dumps({"code": code, "line": line, "by": self.process_id})
        try:
            self._client.key_value_set(f"{PREFIX}stop", message)
        except Exception:  # posted already (ALREADY_EXISTS), or the service is gone
            try:
                posted = json.loads(self._client.key_value_try_get(f"{PREFIX}stop"))
                code, line = int(posted["code"]), str(posted["line"])
            except Exception:
                pass
        exit_now(code, line)

    def wait_for_verdict(self, wait_s: float) -> None:
        """Blocks up to `wait_s` seconds; a lost host or a stop found meanwhile
        ends the process from the monitor's threads. Returns when none was."""
        time.sleep(wait_s)

    # -- threads --------------------------------------------------------------------

    def _beat_loop(self) -> None:
        while not self._finished.is_set():
            self._count += 1
            beat = DONE if self._done_self.is_set() else str(self._count)
            try:
                self._client.key_value_set(
                    f"{PREFIX}beat/{self.process_id}", beat, allow_overwrite=True
                )
                entries = self._client.key_value_dir_get(PREFIX)
            except Exception:  # the judge decides when this has lasted too long
                time.sleep(self.interval)
                continue
            self._absorb(entries, time.monotonic())
            time.sleep(self.interval)

    def _absorb(self, entries, now: float) -> None:
        stop = None
        with self._lock:
            self._last_ok = now
            for key, value in entries:
                name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
                kind, _, who = name.partition("/")
                if kind == "stop":
                    stop = value
                elif kind == "host" and who.isdigit():
                    self._hosts[int(who)] = value
                elif kind == "beat" and who.isdigit() and int(who) != self.process_id:
                    q = int(who)
                    if value == DONE:
                        self._done.add(q)
                    elif self._seen.get(q) != value:
                        self._seen[q] = value
                        self._last_change[q] = now
        if stop is not None:
            posted = json.loads(stop)
            exit_now(int(posted["code"]), str(posted["line"]))

    def _judge_loop(self) -> None:
        while not self._finished.wait(self.interval):
            now = time.monotonic()
            with self._lock:
                silent = now - self._last_ok
                # Judged at this process's last read, so that a read that is late
                # (this process busy) does not make the others look silent.
                lost = stale_peers(self._last_change, self._last_ok, self.timeout_s, self._done)
                hosts = dict(self._hosts)
            if silent > self.timeout_s:
                exit_now(75, lost_service_line(self._address, self.timeout_s, self._where()))
            if lost:
                self.stop(
                    75,
                    lost_host_line(lost, self.num_processes, hosts, self.timeout_s, self._where()),
                )


def start_monitor(*args, **kwargs) -> PeerMonitor:
    """Starts `PeerMonitor(*args, **kwargs)` as this process's monitor (one per process)."""
    global _monitor
    _monitor = PeerMonitor(*args, **kwargs)
    _monitor.start()
    return _monitor


def monitor() -> PeerMonitor | None:
    """The running monitor, or None in a single-process run."""
    return _monitor


def finish_run(wait_s: float) -> None:
    """This process's part of the run ended well (see PeerMonitor.finish)."""
    if _monitor is not None:
        _monitor.finish(wait_s)
    _run_exit_hooks()


def stop_run(code: int, line: str) -> NoReturn:
    """Ends the run with `code` and `line`: on every process when several run
    (through the monitor), else this one."""
    if _monitor is not None:
        _monitor.stop(code, line)
    exit_now(code, line)


# Collective and runtime failures arrive as these exceptions (a gloo all-gather
# whose peer died raised ValueError('UNKNOWN: Gloo AllGather failed ... Connection
# reset by peer') in jax 0.10.2), or with an absl status code first.
_STATUS_CODES = (
    "UNKNOWN:",
    "UNAVAILABLE:",
    "DEADLINE_EXCEEDED:",
    "INTERNAL:",
    "ABORTED:",
    "CANCELLED:",
    "DATA_LOSS:",
    "FAILED_PRECONDITION:",
)


def verdict_first(exc: BaseException) -> None:
    """Call with an exception about to be reported: in a multi-process run, when
    it may come from a lost peer (a collective that failed), this waits for the
    monitor's verdict, which ends the process with exit 75 and its line within
    the heartbeat timeout. Returns when there is no verdict: `exc` is real."""
    if _monitor is not None and may_be_lost_peer(exc):
        _monitor.wait_for_verdict(_monitor.timeout_s + 3 * _monitor.interval)


def may_be_lost_peer(exc: BaseException) -> bool:
    """Whether `exc` may come from a collective or the runtime failing because a
    peer is gone (then the monitor's verdict is awaited before reporting it)."""
    import jax

    if isinstance(exc, jax.errors.JaxRuntimeError):
        return True
    text = str(exc)
    return "Gloo" in text or text.startswith(_STATUS_CODES)

"""The coordination service of a multi-process run, in a process of its own.

    python -m gld_jax.train.coordinator PORT NUM_PROCESSES HEARTBEAT_S GRACE_S

Process 0 starts it (`start`) before `jax.distributed.initialize`. Why not in
process 0, where jax puts it: when process 0 dies (SIGKILL, an OOM kill), every
other process's distributed client sees the service's socket close and aborts
at once (measured, jax 0.10.2: "Polled an error from coordination service",
LOG(FATAL), exit 134 after a C++ stack dump), before any Python can run. Here
the service outlives process 0 by `grace_s` seconds, so the others learn of
the loss from their peer monitors (peers.py) and stop with exit 75 and one line.

It runs with the service's `recoverable` option: without it, the service turns
one task's missed heartbeats into an error pushed to every task, which is the
same fatal abort. With it, a dead task does not end the others (measured: the
survivor's key-value calls keep working), and the peer monitors decide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def port_in_use(port: int) -> bool:
    """Whether something listens on `port` of this machine."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(port: int, num_processes: int, *, heartbeat_s: int, grace_s: float) -> subprocess.Popen:
    """Starts the service on `port` (all interfaces) for `num_processes` tasks.

    A previous run's service stays `grace_s` seconds after its process 0 ended;
    a second service on the same port would share it (gRPC binds with
    SO_REUSEPORT) and split the clients, so this waits for the port to be free.

    Raises:
      RuntimeError: the port is still taken after that wait (one line).
    """
    deadline = time.monotonic() + grace_s + 10
    while port_in_use(port):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"port {port} of distributed.coordinator_address is in use by another "
                "program; choose another port"
            )
        time.sleep(1)
    cmd = [sys.executable, "-m", __name__, str(port), str(num_processes), str(heartbeat_s)]
    # gld_jax importable in the child as it is here (a script may have put it on sys.path)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH", "")]))
    # Its only output is the service's notice of the `recoverable` mode.
    quiet = subprocess.DEVNULL
    service = subprocess.Popen(
        [*cmd, str(grace_s)],
        stdin=quiet,
        stdout=quiet,
        stderr=quiet,
        env=dict(os.environ, PYTHONPATH=path),
    )
    deadline = time.monotonic() + 60
    while not port_in_use(port):  # else the hosts would wait their whole start-up timeout
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise RuntimeError(
                f"the coordination service did not start on port {port} "
                f"(python -m {__name__}, exit {service.poll()})"
            )
        time.sleep(0.1)
    return service


# After an orderly end of process 0 (it signals SIGUSR1), the others only need
# to read its stop line or finish their exit: a few seconds.
ORDERLY_GRACE_S = 5.0


def release(service: subprocess.Popen) -> None:
    """Tells the service that process 0 ends in order: it stops ORDERLY_GRACE_S
    seconds later instead of the full grace."""
    if service.poll() is None:
        service.send_signal(signal.SIGUSR1)


def main(argv: list[str]) -> int:
    port, num_processes, heartbeat_s, grace_s = argv[1:5]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the service needs no devices
    parent = os.getppid()
    released = []
    signal.signal(signal.SIGUSR1, lambda *_: released.append(True))
    from jax._src.lib import _jax  # what jax.distributed.initialize calls for it

    service = _jax.get_distributed_runtime_service(
        f"[::]:{int(port)}",
        int(num_processes),
        heartbeat_timeout=int(heartbeat_s),
        recoverable=True,
    )
    # Until process 0 ends (in order: it says so; killed: this process is handed
    # to init), then long enough for the other processes to notice and stop.
    while os.getppid() == parent and not released:
        time.sleep(0.2)
    time.sleep(ORDERLY_GRACE_S if released else float(grace_s))
    service.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

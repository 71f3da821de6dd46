"""A multi-process run that loses a host, hangs, or is killed in a save: bounded
detection, one line and exit 75 on every survivor, and an exact resume.

Two processes on 127.0.0.1 (gloo collectives, one CPU device each), as a user
runs them: `python -m gld_jax.main` twice, with test-sized bounds. Faults come
from GLD_JAX_TEST_FAULT (gld_jax/train/faults.py), so each one happens at a
known step rather than by timing luck. One schedule of runs serves every check
(module fixture `chain`), each run started as soon as what it needs is there,
so that one run's waits are another's compute time:

  U: an uninterrupted run from an empty workdir (process 0 generates and
     converts the data while process 1 waits) to the end, embeddings and GAPs.
  A: the same start; process 0 (the coordinator) SIGKILLs itself inside the
     commit of step 4's checkpoint, after step 2's was committed. Then A again:
     it resumes from step 2 and ends with U's losses, GAPs and submission.
  B: A's committed step 2 copied; process 1's save of step 4 fails (ENOSPC).
  G: GLDv2 data that is not converted.

Beside them, from the start, the light worker (tests/host_fault_worker.py: the
same start-up, peer monitor and step watchdog around gloo all-gathers, no
model) covers the loss of a process that is not the coordinator (SIGKILL), a
frozen process (SIGSTOP) and a process stuck in Python.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from file_tree import file_tree

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(HERE, "fault_run_config.py")
HEARTBEAT_S = 10  # the test-sized bound of the two-process runs
# Detection must come within the bound; the margin absorbs a loaded machine
# (the monitor's beat interval, process start, other tests on the same cores).
MARGIN_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """Two processes of one run, output in files (a full pipe would block one
    process in a collective), with each one's exit time."""

    def __init__(self, name, argv_of, log_dir, faults=("", "")):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=os.environ.get("GLD_JAX_TEST_XLA_FLAGS", ""),  # one device each
            PYTHONPATH=ROOT,
        )
        self.name, self.logs = name, [os.path.join(log_dir, f"{name}-{i}.log") for i in (0, 1)]
        self.procs, self.ended = [], [None, None]
        self.started = time.monotonic()
        for i, log in enumerate(self.logs):
            with open(log, "w") as f:
                e = dict(env, GLD_JAX_TEST_FAULT=faults[i])
                self.procs.append(subprocess.Popen(argv_of(i), env=e, stdout=f, stderr=f, cwd=ROOT))

    def poll(self) -> bool:
        """Records exit times; True when both have ended."""
        for i, p in enumerate(self.procs):
            if self.ended[i] is None and p.poll() is not None:
                self.ended[i] = time.monotonic()
        return all(t is not None for t in self.ended)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    @property
    def rcs(self):
        return [p.returncode for p in self.procs]

    def text(self, i) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def last_line(self, i) -> str:
        lines = [x for x in self.text(i).replace("\r", "\n").splitlines() if x.strip()]
        return lines[-1] if lines else ""


def main_pair(name, workdir, log_dir, faults=("", ""), extra=()):
    port = _free_port()

    def argv(i):
        return [
            sys.executable,
            "-m",
            "gld_jax.main",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            "--config.distributed.enabled=True",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
            f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}",
            *extra,
        ]

    return Pair(name, argv, log_dir, faults)


def light_pair(name, log_dir, fault, heartbeat_s, watchdog_s):
    port = _free_port()

    def argv(i):
        return [
            sys.executable,
            os.path.join(HERE, "host_fault_worker.py"),
            f"--process_id={i}",
            f"--port={port}",
            f"--heartbeat_s={heartbeat_s}",
            f"--watchdog_s={watchdog_s}",
            "--steps=2000",
        ]

    return Pair(name, argv, log_dir, faults=("", fault))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Runs the schedule, each run as soon as what it needs is there."""
    root = tmp_path_factory.mktemp("faults")
    logs = root / "logs"
    logs.mkdir()
    a, b, u = root / "A", root / "B", root / "U"
    empty_gldv2 = root / "gldv2"
    empty_gldv2.mkdir()
    out = {"root": root}
    out["U"] = main_pair("U", u, logs)
    out["A1"] = main_pair("A1", a, logs, faults=("kill_in_commit@4", ""))
    out["G"] = main_pair(
        "G",
        root / "G",
        logs,
        extra=("--config.synthetic.enabled=False", f"--config.data_dir={empty_gldv2}"),
    )
    light = dict(heartbeat_s=5, watchdog_s=600)
    out["killed"] = light_pair("killed", logs, "sigkill@20", **light)
    out["frozen"] = light_pair("frozen", logs, "sigstop@20", **light)
    out["stuck"] = light_pair("stuck", logs, "sleep@20", heartbeat_s=5, watchdog_s=6)
    pairs = [out[k] for k in ("U", "A1", "G", "killed", "frozen", "stuck")]
    deadline = time.monotonic() + 900
    try:
        while not all([p.poll() for p in pairs]):  # every pair polled: their exit times
            assert time.monotonic() < deadline, [p.name for p in pairs if not p.poll()]
            if "B" not in out and (a / "checkpoints" / "2").is_dir():
                # step 2 is committed, so it no longer changes: B starts from it
                out["step2_files"] = file_tree(a / "checkpoints" / "2")
                shutil.copytree(a / "tfrecords", b / "tfrecords")
                shutil.copytree(a / "checkpoints" / "2", b / "checkpoints" / "2")
                out["B"] = main_pair("B", b, logs, faults=("", "save_error@4"))
                pairs.append(out["B"])
            if "A2" not in out and out["A1"].poll():
                out["A1_checkpoints"] = sorted(os.listdir(a / "checkpoints"))
                out["A2"] = main_pair("A2", a, logs)
                pairs.append(out["A2"])
            if out["frozen"].ended[0] is not None:
                out["frozen"].kill()  # the stopped process, once the other has ended
            time.sleep(0.1)
    finally:
        for p in pairs:
            p.kill()
    return out


def _summary(pair) -> dict:
    """Process 0's summary: the last JSON line it printed."""
    lines = pair.text(0).replace("\r", "\n").splitlines()
    return json.loads(next(x for x in reversed(lines) if x.startswith("{")))


def _losses(workdir) -> dict[int, float]:
    """Every logged training loss in a workdir's TensorBoard files, by global step
    (the runs stopped by a fault end without flushing theirs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    folder = os.path.join(workdir, "tensorboard")
    for name in sorted(os.listdir(folder)):
        acc = EventAccumulator(os.path.join(folder, name))
        acc.Reload()
        if "train/stage0/loss" in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars("train/stage0/loss")})
    return out


def _no_crash_output(text):
    needles = ("Traceback", "Check failure stack trace", "Terminating process", "failed: [")
    for needle in needles:
        assert needle not in text, needle


def test_process_0_prepares_the_data_while_process_1_waits(chain):
    """An empty workdir: process 0 generates and converts the synthetic set, the
    other waits (a line saying so), and both then train to the end."""
    u = chain["U"]
    assert u.rcs == [0, 0], u.text(0)[-3000:] + u.text(1)[-3000:]
    assert "waiting for process 0 to generate and convert the synthetic data" in u.text(1)
    assert "distributed.data_wait_s" in u.text(1)
    assert "converting" in u.text(0) and "converting" not in u.text(1)
    assert _summary(u)["total_steps"] == 8


def test_a_killed_coordinator_and_a_kill_inside_the_commit(chain):
    """Process 0 (hosting the coordination service in jax's own design) is
    SIGKILLed between its checkpoint's write and its commit: process 1 stops by
    itself within the bound, with exit 75 and the line, and no abort from the
    runtime; the save is left uncommitted and step 2 stays the latest."""
    a1 = chain["A1"]
    assert a1.rcs == [-9, 75], a1.text(1)[-3000:]
    line = a1.last_line(1)
    assert re.fullmatch(
        rf"lost host: process 0 \(.+\) of 2 sent no heartbeat for {HEARTBEAT_S} s; the run "
        r"stopped at step \d+, last complete checkpoint: step 2; rerun the same command to "
        "resume",
        line,
    ), line
    _no_crash_output(a1.text(1))
    detected = a1.ended[1] - a1.ended[0]
    print(f"process 0 killed: process 1 out {detected:.1f} s later")  # shown with -s
    assert HEARTBEAT_S - 1 <= detected <= HEARTBEAT_S + MARGIN_S, detected
    # step 4's data was written by both processes; its commit never happened
    assert "2" in chain["A1_checkpoints"] and "4" not in chain["A1_checkpoints"]
    assert any(n.startswith("4.orbax-checkpoint-tmp") for n in chain["A1_checkpoints"])


def test_a_failed_save_stops_every_process_and_keeps_the_earlier_checkpoint(chain):
    b, root = chain["B"], chain["root"]
    assert b.rcs == [2, 2], b.text(0)[-2000:] + b.text(1)[-2000:]
    expected = (
        f"error: the checkpoint of step 4 could not be written to {root / 'B' / 'checkpoints'}: "
        "No space left on device; the earlier checkpoints are kept (latest complete: step 2)"
    )
    assert b.last_line(0) == b.last_line(1) == expected
    _no_crash_output(b.text(0) + b.text(1))
    # step 2 is still listed, and byte for byte the checkpoint the rerun of A
    # restored from (test_the_rerun_resumes...)
    from gld_jax.train.progress import last_complete_checkpoint

    assert last_complete_checkpoint(str(root / "B" / "checkpoints")) == 2
    assert file_tree(root / "B" / "checkpoints" / "2") == chain["step2_files"]


def test_unconverted_gldv2_stops_every_process_at_once_with_the_command(chain):
    g, root = chain["G"], chain["root"]
    assert g.rcs == [2, 2]
    expected = (
        f"error: no converted data in {root / 'G' / 'tfrecords'}: a multi-host run reads "
        "converted TFRecords; convert them first: python -m tfrecords_tools.build_gldv2 "
        f"--data_dir {root / 'gldv2'} --output_dir {root / 'G' / 'tfrecords'}"
    )
    assert g.last_line(0) == g.last_line(1) == expected
    _no_crash_output(g.text(0) + g.text(1))
    assert abs(g.ended[0] - g.ended[1]) < 5  # together, before any collective


def test_the_rerun_resumes_and_ends_with_the_uninterrupted_losses_and_gaps(chain):
    a2, u, root = chain["A2"], chain["U"], chain["root"]
    assert a2.rcs == [0, 0], a2.text(0)[-3000:]
    assert "resuming from step 2" in a2.text(0)  # not from the uncommitted step 4
    ref, got = _losses(root / "U"), _losses(root / "A")
    assert sorted(ref) == list(range(1, 9))
    assert set(range(3, 9)) <= set(got)
    assert {s: got[s] for s in got} == {s: ref[s] for s in got}  # exact, float32
    ref_sum, got_sum = _summary(u), _summary(a2)
    assert got_sum["ladder"] == ref_sum["ladder"]  # every prediction mode's GAPs
    with (
        open(root / "U" / "submission.csv", "rb") as f,
        open(root / "A" / "submission.csv", "rb") as g,
    ):
        assert f.read() == g.read()
    assert got_sum["total_steps"] == 8 and got_sum["steps_run"] == 6


# --- the light worker: a frozen process, a process stuck in Python -----------------------


def _fault_time(pair, i, step):
    """When process i printed 'step STEP at T' (time.monotonic of this machine)."""
    m = re.search(rf"^step {step} at ([0-9.]+)$", pair.text(i), re.M)
    assert m, pair.text(i)[-2000:]
    return float(m.group(1))


def test_a_killed_frozen_or_stuck_process_is_ended_within_the_bounds(chain):
    """SIGKILL and SIGSTOP (no more heartbeats): the other process stops on the
    heartbeat bound, exit 75 and the line. Stuck in Python (sleeping; its
    heartbeats go on): the step watchdog ends both, with its stacks in the log."""
    killed, frozen, stuck = chain["killed"], chain["frozen"], chain["stuck"]
    for pair in (killed, frozen):
        assert pair.rcs[0] == 75
        line = pair.last_line(0)
        assert re.fullmatch(
            r"lost host: process 1 \(.+\) of 2 sent no heartbeat for 5 s; the run stopped at "
            r"step 2[01], last complete checkpoint: none; rerun the same command to resume",
            line,
        ), line
        _no_crash_output(pair.text(0))
        detected = pair.ended[0] - _fault_time(pair, 1, 20)
        print(f"{pair.name}: process 0 out {detected:.1f} s after process 1's last step")
        assert 4 <= detected <= 5 + MARGIN_S, (pair.name, detected)
    assert killed.rcs[1] == -9

    assert stuck.rcs == [75, 75]
    assert stuck.last_line(0) == stuck.last_line(1)
    assert re.fullmatch(
        r"stalled: no training step finished for 6 s \(train\.watchdog_s\) on process [01] of "
        r"2, at step 2[01], last complete checkpoint: none; every thread's stack is above; "
        "rerun the same command to resume",
        stuck.last_line(0),
    ), stuck.last_line(0)
    # the stacks of the process whose watchdog fired first, from faulthandler
    assert any("(most recent call first)" in stuck.text(i) for i in (0, 1))
    detected = max(stuck.ended) - _fault_time(stuck, 1, 20)
    print(f"stuck: both out {detected:.1f} s after process 1's last step")
    assert 5 <= detected <= 6 + MARGIN_S, detected


# --- the rules and lines, without processes -----------------------------------------------


def test_the_default_bounds():
    """A lost host is noticed within 60 s by default; the runtime's own (fatal)
    heartbeat and the coordination service's grace are longer than that."""
    from gld_jax.config import base_config
    from gld_jax.train.distributed import runtime_heartbeat_s, service_grace_s
    from gld_jax.train.peers import beat_interval

    hb = base_config().distributed.heartbeat_timeout_s
    bound = hb + 2 * beat_interval(hb)  # silent for hb, seen within a beat, judged within one
    assert bound <= 60
    assert runtime_heartbeat_s(hb) > bound and service_grace_s(hb) > bound
    assert runtime_heartbeat_s(HEARTBEAT_S) > HEARTBEAT_S + 2 * beat_interval(HEARTBEAT_S)


def test_stale_peers_and_the_lost_host_line():
    from gld_jax.train.peers import lost_host_line, stale_peers

    last = {1: 100.0, 2: 101.0, 3: 80.0}
    assert stale_peers(last, now=110.0, timeout_s=10, done=()) == [3]
    assert stale_peers(last, now=110.0, timeout_s=10, done={3}) == []
    assert stale_peers(last, now=120.0, timeout_s=10, done=()) == [1, 2, 3]
    where = "at step 12, last complete checkpoint: step 10"
    assert lost_host_line([3], 4, {3: "w-3"}, 30, where) == (
        "lost host: process 3 (w-3) of 4 sent no heartbeat for 30 s; the run stopped at step "
        "12, last complete checkpoint: step 10; rerun the same command to resume"
    )
    assert lost_host_line([1, 2], 4, {}, 30, where).startswith(
        "lost host: process 1, process 2 of 4 each sent no heartbeat for 30 s;"
    )


def test_watchdog_bound_and_firing():
    from gld_jax.train.watchdog import StepWatchdog, watchdog_bound

    assert watchdog_bound(8, [1.0] * 5) == 8
    assert watchdog_bound(0, []) == 600  # 10 minutes ...
    assert watchdog_bound(0, [1.0, 2.0, 50.0]) == 600
    assert watchdog_bound(0, [40.0, 41.0, 39.0]) == 800  # ... or 20 median steps
    stalls = []
    dog = StepWatchdog(0.4, stalls.append, describe=lambda: "at step 3", check_every_s=0.05)
    time.sleep(0.6)
    assert stalls == []  # not armed before the first step (compilation)
    dog.step_done()
    dog.pause()
    time.sleep(0.6)
    assert stalls == []  # paused (validation, the next stage's compile)
    dog.step_done()
    time.sleep(0.8)
    dog.close()
    assert len(stalls) == 1 and stalls[0].startswith(
        "stalled: no training step finished for 0.4 s (train.watchdog_s) at step 3;"
    )


def test_shared_data_problem():
    from gld_jax.data.prepare import shared_data_problem

    kw = dict(tfrecord_dir="/w/tfrecords", data_dir="/d")
    assert shared_data_problem([True, True], synthetic=False, **kw) is None
    assert shared_data_problem([False, False], synthetic=True, **kw) is None  # 0 makes it
    assert shared_data_problem([False, False], synthetic=False, **kw) == (
        "no converted data in /w/tfrecords: a multi-host run reads converted TFRecords; "
        "convert them first: python -m tfrecords_tools.build_gldv2 --data_dir /d "
        "--output_dir /w/tfrecords"
    )
    assert shared_data_problem([True, False, False], synthetic=True, **kw).startswith(
        "processes 1, 2 of 3 see no manifest.json in /w/tfrecords, others do:"
    )
    assert shared_data_problem([True, False], synthetic=True, prepared=True, **kw).startswith(
        "process 1 of 2 sees no manifest.json in /w/tfrecords after process 0 wrote it:"
    )


def test_fault_specs():
    from gld_jax.train.faults import parse

    assert parse("") is None
    assert parse("kill_in_commit@4") == ("kill_in_commit", 4)
    for bad in ("boom@3", "sigkill", "sigkill@x"):
        with pytest.raises(ValueError):
            parse(bad)


def test_a_save_error_is_one_line_and_the_earlier_checkpoint_stays(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from gld_jax.train import faults
    from gld_jax.train.checkpoint import Checkpointer, CheckpointWriteError, write_error_reason

    monkeypatch.setenv(faults.ENV, "save_error@2")
    faults.fault.cache_clear()
    try:
        ckpt = Checkpointer(str(tmp_path / "ck"))
        ckpt.save(1, {"w": jnp.arange(4.0)}, {"global_step": 1})
        with pytest.raises(CheckpointWriteError) as e:
            ckpt.save(2, {"w": jnp.arange(4.0) + 1}, {"global_step": 2})
        assert str(e.value) == (
            f"the checkpoint of step 2 could not be written to {tmp_path / 'ck'}: No space "
            "left on device; the earlier checkpoints are kept (latest complete: step 1)"
        )
        assert ckpt.latest_step() == 1
        np.testing.assert_array_equal(ckpt.restore_arrays(1)["w"], np.arange(4.0))
        ckpt.close()
    finally:
        faults.fault.cache_clear()
    # TensorStore's own words for a full disk (measured on a 2 MB tmpfs)
    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "/x/": '
        "Failed to write 1559543 bytes to file 7: No space left on device [os_error_code='28']"
    )
    assert write_error_reason(ts) == "No space left on device"


def test_the_next_start_deletes_an_uncommitted_save(tmp_path):
    """What a kill inside a commit leaves (the temporary folder of a save that
    was written but not committed) is not listed, and the next start deletes it."""
    import jax.numpy as jnp

    from gld_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(2, {"w": jnp.arange(4.0)}, {"global_step": 2})
    ckpt.close()
    leftover = tmp_path / "ck" / "4.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "ck" / "2", leftover)
    (leftover / "commit_success.txt").unlink(missing_ok=True)
    again = Checkpointer(str(tmp_path / "ck"))
    assert again.latest_step() == 2
    deadline = time.monotonic() + 30  # the clean-up runs in a thread beside the start
    while leftover.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(os.listdir(tmp_path / "ck")) == ["2"]
    again.close()

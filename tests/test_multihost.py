"""Two processes on 127.0.0.1 (gloo collectives, 4 fake CPU devices each): the
class-sharded head's loss and gradients from each host's own rows equal the
single-process ones (make test); and (make slow) two processes train the same
global batches as one 8-device process, with one shared Orbax checkpoint."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc, devices, data_root, workdir, steps, out_prefix):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "--process_id",
                str(i),
                "--num_processes",
                str(nproc),
                "--port",
                str(port),
                "--devices",
                str(devices),
                "--data_root",
                str(data_root),
                "--workdir",
                str(workdir),
                "--steps",
                str(steps),
                "--out",
                f"{out_prefix}-{i}.json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(nproc)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return [json.load(open(f"{out_prefix}-{i}.json")) for i in range(nproc)]


def _losses(result):
    return [(h["step"], h["loss"]) for h in result["history"]]


def _grad_norms(result):
    return [h["grad_norm"] for h in result["history"]]


def test_two_hosts_class_sharded_head_equals_one_process(tmp_path):
    """jax.distributed over 2 processes, mesh (data=2, model=4): each process
    feeds only its 8 of the 16 rows; loss and gradients equal one device's."""
    sys.path.insert(0, HERE)
    import jax
    from head_problem import loss_and_grads, problem

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "multihost_head_worker.py"),
                "--process_id",
                str(i),
                "--num_processes",
                "2",
                "--port",
                str(port),
                "--out",
                str(tmp_path / f"out-{i}.npz"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    single = jax.device_get(jax.jit(loss_and_grads, device=jax.devices()[0])(*problem()))
    ref_loss, (ref_ge, ref_gc) = single
    for i in range(2):
        got = np.load(tmp_path / f"out-{i}.npz")
        assert int(got["process_count"]) == 2 and int(got["head_shard"]) == 16
        np.testing.assert_allclose(got["loss"], ref_loss, rtol=1e-5)
        np.testing.assert_allclose(got["grad_emb"], ref_ge, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["grad_centers"], ref_gc, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    sys.path.insert(0, HERE)
    from tiny import tiny_config

    from gld_jax.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("mh")
    prepare_data(tiny_config(root / "data"), str(root))
    return root


# Five processes each compile the EfficientNet step: ~4 minutes on 2 cores, which
# does not fit the 15-minute `make test` budget; `make slow` runs it.
@pytest.mark.slow
def test_two_processes_match_one_and_share_a_checkpoint(data_root, tmp_path):
    (single,) = _run(1, 8, data_root, tmp_path / "single", 4, tmp_path / "single")
    first = _run(2, 4, data_root, tmp_path / "multi", 3, tmp_path / "multi-a")
    assert [r["process_count"] for r in first] == [2, 2]
    # both processes see the same (global) loss
    assert _losses(first[0]) == _losses(first[1])
    # the second call restores the shared checkpoint at step 3 and runs step 4
    second = _run(2, 4, data_root, tmp_path / "multi", 1, tmp_path / "multi-b")
    ckpts = sorted(os.listdir(tmp_path / "multi" / "checkpoints"))
    assert "3" in ckpts and "4" in ckpts
    multi = _losses(first[0]) + _losses(second[0])
    ref = _losses(single)
    assert [s for s, _ in multi] == [s for s, _ in ref] == [1, 2, 3, 4]
    # float32 with BatchNorm over 8 images at 1x1 spatial size: another reduction
    # order (gloo across processes) moves the loss by up to 1.3e-5 relative
    # (measured; step 1 and the step after the restore agree to 7e-7), so 3e-5.
    np.testing.assert_allclose([v for _, v in multi], [v for _, v in ref], rtol=3e-5)
    # the gradients agree too, step by step (their global norm)
    grads = _grad_norms(first[0]) + _grad_norms(second[0])
    np.testing.assert_allclose(grads, _grad_norms(single), rtol=1e-4)

"""The GPU set-up and measurements, on this CPU machine: requirements-gpu.txt
pins JAX's CUDA plugin at the project's jax version and `make ... GPU=1`
installs it; scripts/bench/gpu_suite.sh runs every kind of row end to end at
tiny sizes (--smoke), the PyTorch rows failing with one line where torch is
not installed."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pin(path: str, name: str) -> str:
    text = open(os.path.join(ROOT, path)).read()
    m = re.search(rf"^{re.escape(name)}(\[[^\]]*\])?==([\w.]+)$", text, re.M)
    assert m, f"{path} pins {name}"
    return m.group(2)


def test_gpu_requirements_pin_the_cuda_plugin_of_the_pinned_jax():
    gpu = open(os.path.join(ROOT, "requirements-gpu.txt")).read()
    assert "-r requirements.txt" in gpu.splitlines()
    assert re.search(r"^jax\[cuda12\]==", gpu, re.M)
    assert _pin("requirements-gpu.txt", "jax") == _pin("requirements.txt", "jax")
    make = subprocess.run(
        ["make", "-n", "demo", "GPU=1"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "scripts/venv.sh requirements-gpu.txt" in make.stdout
    plain = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True)
    assert "scripts/venv.sh requirements.txt" in plain.stdout


def test_gpu_suite_smoke_runs_every_row(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the jobs are single-device programs
    env["XLA_FLAGS"] = os.environ.get("GLD_JAX_TEST_XLA_FLAGS", "")
    proc = subprocess.run(
        [os.path.join(ROOT, "scripts", "bench", "gpu_suite.sh"), str(out), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert rows == [json.loads(line) for line in open(out / "gpu_suite.jsonl")]
    by_name = {r["row"]: r for r in rows}
    ours = by_name["train_step efficientnet_b0_shallow 32px ours"]
    assert ours["loss_finite"] and ours["images_per_s"] > 0 and ours["xla_gb_per_step"] > 0
    assert ours["roofline_ms"] > 0 and ours["measured_over_roofline"] > 0
    search = by_name["search 64d"]
    for method in ("onepass", "binned", "pallas_interpret"):
        assert search["methods"][method]["search_s"] > 0, search["methods"][method]
    for method in ("binned", "pallas_interpret"):
        assert search["methods"][method]["same_rows_as_onepass"] == 1.0
    assert search["user_path"]["search_s"] > 0
    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
    for name in ("train_step efficientnet_b0_shallow 32px timm", "search 64d torch"):
        row = by_name[name]
        if has_torch:
            assert "error" not in row, row
        else:
            assert row["error"] == "exit 1: ModuleNotFoundError: No module named 'torch'"
    assert rows[-1]["row"] == "suite" and rows[-1]["failed"] == (0 if has_torch else 2)

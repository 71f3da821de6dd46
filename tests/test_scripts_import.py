"""Every benchmark, experiment and tool under scripts/ imports: a helper moved or a
module renamed in gld_jax breaks a script that no other test runs."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Run by train_step.py in a Python with torch and timm, which this one lacks.
NEEDS_TORCH = {"scripts.bench.helpers.timm_peer"}


def _script_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NEEDS_TORCH:
            names.append(name)
    return names


def test_every_script_imports():
    names = _script_modules()
    assert "scripts.bench.retrieval" in names and "scripts.experiments.helpers.dw_variants" in names
    # One fresh process: scripts set environment variables at import.
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]

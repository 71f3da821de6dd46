"""The package's layering (docs/architecture.md): every import points down the
order below, no two modules import each other, and the trainer runs a real
training without TensorFlow importable.

    utils < config < data | models | losses | metrics < train < retrieval < top level

`utils` is the file layer and logging any layer may use. `data`, `models`,
`losses` and `metrics` are peers and never import one another; `train` uses
only data's TensorFlow-free modules; the top level (main, pipeline, dry_run,
compiled_plan, clean_labels) wires the layers together.
"""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gld_jax"
RANK = {"utils": 0, "config": 1, "data": 2, "models": 2, "losses": 2, "metrics": 2}
RANK |= {"train": 3, "retrieval": 4}
TOP = 5
# The data modules the trainer and the train step may import: no TensorFlow.
TF_FREE_DATA = {"manifest", "augment_config", "device_augment", "batches"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return (RANK[name], name) if name in RANK else (TOP, "top level")


def _imports(path: pathlib.Path) -> set[str]:
    """Every gld_jax module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gld_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gld_jax"):
            found.add(node.module)
            # `from gld_jax.data import manifest` names a module, not an attribute
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.add(candidate)
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for module, path in _modules():
        rank, name = _layer(module)
        for target in _imports(path):
            t_rank, t_name = _layer(target)
            if t_name == name or target == "gld_jax":
                continue
            if t_rank >= rank:
                wrong.append(f"{module} -> {target}")
            elif name == "train" and t_name == "data":
                if target.split(".")[2:3] and target.split(".")[2] not in TF_FREE_DATA:
                    wrong.append(f"{module} -> {target} (TensorFlow in the trainer)")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_two_modules_import_each_other():
    graph = {m: _imports(p) for m, p in _modules()}
    pairs = sorted(
        f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, ())
    )
    assert not pairs, "\n".join(pairs)


def test_the_layer_check_catches_a_wrong_edge(tmp_path):
    """The walker sees a function-level import (how the old trainer reached TF)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gld_jax.data import input_pipeline\n")
    assert "gld_jax.data.input_pipeline" in _imports(bad)


def test_training_runs_without_tensorflow(tmp_path):
    """Two steps of a real training run in a process where `import tensorflow`
    fails: the trainer takes its batches from the caller (here numpy arrays)
    and reads only the TFRecords' manifest."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_config

    from gld_jax.data.prepare import prepare_data

    tfrecord_dir = prepare_data(tiny_config(tmp_path / "data"), str(tmp_path))
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.modules["tensorflow"] = None  # any import of it raises ImportError
        import jax
        if os.environ.get("GLD_JAX_TEST_COMPILE_CACHE"):  # the session's compiled steps
            jax.config.update("jax_compilation_cache_dir", os.environ["GLD_JAX_TEST_COMPILE_CACHE"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import numpy as np
        from tiny import tiny_config
        from gld_jax.train.mesh import make_mesh
        from gld_jax.train.trainer import train

        config = tiny_config({str(tmp_path / "data")!r})
        config.input.augment_on = "device"  # as test_trainer's runs: their compiled steps

        def batches(plan, skip):
            rng = np.random.default_rng(skip)
            while True:
                yield {{
                    "image": rng.integers(0, 256, (plan.batch_size, plan.image_size,
                                                   plan.image_size, 3), dtype=np.uint8),
                    "label": rng.integers(0, 8, (plan.batch_size,), dtype=np.int32),
                }}

        r = train(config, workdir={str(tmp_path / "run")!r}, tfrecord_dir={tfrecord_dir!r},
                  mesh=make_mesh(-1, 1), batches=batches, stop_after_steps=2)
        assert r.steps_run == 2 and sys.modules["tensorflow"] is None
        print("trained", r.global_step)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained 2" in res.stdout

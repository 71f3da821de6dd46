"""Config validation: every bad value stops with one line naming the key."""

import os
import subprocess
import sys

import pytest

from gld_jax.config import ConfigError, base_config, stage, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo():
    sys.path.insert(0, ROOT)
    from configs import demo as demo_config

    return demo_config.get_config()


def test_demo_config_is_valid_on_1_and_8_devices():
    validate_config(demo(), num_devices=1)
    validate_config(demo(), num_devices=8)


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: setattr(c.model, "backbone", "efficientnet_b9"), "model.backbone"),
        (lambda c: setattr(c.stages[0], "image_size", 16), "stages[0].image_size"),
        (lambda c: setattr(c.stages[1], "batch_size", 36), "stages[1].batch_size"),
        (lambda c: setattr(c, "stages", []), "stages"),
        (lambda c: setattr(c.stages[1], "new_head", False), "stages[1].new_head"),
        (lambda c: setattr(c.stages[0], "label_set", "dirty"), "stages[0].label_set"),
        (lambda c: setattr(c.mesh, "model", 3), "mesh"),
        (lambda c: setattr(c, "fold", 5), "fold"),
        (lambda c: setattr(c.model, "dtype", "float16"), "model.dtype"),
        (lambda c: setattr(c, "data_dir", "file:///tmp/d"), "data_dir"),
        (lambda c: setattr(c, "tfrecord_dir", "s3://b/t"), "tfrecord_dir"),
        (lambda c: setattr(c.stages[0], "accumulate_steps", -1), "stages[0].accumulate_steps"),
    ],
)
def test_bad_value_names_its_key(change, key):
    c = demo()
    change(c)
    with pytest.raises(ConfigError) as e:
        validate_config(c, num_devices=8)
    assert e.value.key == key
    assert str(e.value).startswith(key + ": ")


def test_missing_data_dir_is_an_error(tmp_path):
    c = base_config()
    c.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="^data_dir: "):
        validate_config(c, num_devices=1)
    c.data_dir = ""
    with pytest.raises(ConfigError, match="^data_dir: "):
        validate_config(c, num_devices=1)


def test_stage_defaults():
    s = stage(image_size=64, epochs=1, batch_size=8, learning_rate=0.1)
    assert s.label_set == "full" and s.new_head


def _run_main(*args, config="configs/demo.py"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "gld_jax.main", "--config", config, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_reports_bad_config_in_one_line(tmp_path):
    out = _run_main("--workdir", str(tmp_path), "--config.model.backbone=resnet9000")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("config error: model.backbone: unknown model 'resnet9000'")
    assert "Traceback" not in out.stderr
    assert not os.listdir(tmp_path)  # stopped before any work


def test_cli_reports_unknown_key_in_one_line(tmp_path):
    out = _run_main("--workdir", str(tmp_path), "--config.model.backbon=1")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    # One line, no escaped quotes or newlines from absl's repr of the cause.
    assert out.stderr.strip() == 'error: \'backbon\' Did you mean "backbone" instead of "backbon"?'


def test_cli_reports_a_missing_config_file_in_one_line():
    out = _run_main(config="configs/nope.py")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --config configs/nope.py: no such file"


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--workdir=file://{tmp}/run", "--workdir: file:// is not supported, use a local path"),
        ("--config.data_dir=file://{tmp}/data", "data_dir: file:// is not supported"),
    ],
)
def test_cli_refuses_unsupported_url_schemes_before_writing(tmp_path, flag, words):
    """A file:// path is refused in one line, before anything is created (it used
    to become a folder literally named 'file:' in the current directory)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["--workdir", str(tmp_path / "run"), flag.format(tmp=tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "gld_jax.main", "--config", os.path.join(ROOT, "configs/demo.py")]
        + args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == f"error: {words}" or lines[-1].startswith(f"error: {words}"), lines
    assert "Traceback" not in out.stderr
    assert not os.listdir(cwd) and not (tmp_path / "run").exists()


def test_config_backbones_are_the_registry():
    from gld_jax.config.defaults import BACKBONES
    from gld_jax.models.registry import backbone_names

    assert list(BACKBONES) == backbone_names()


def test_config_prediction_modes_are_the_evaluators():
    from gld_jax.config.validate import PREDICTIONS
    from gld_jax.retrieval.evaluate import MODES

    assert set(PREDICTIONS) == set(MODES)


def test_no_persistent_compile_cache_on_several_cpu_devices(tmp_path):
    """On XLA:CPU with several devices a step loaded from JAX's persistent cache
    computed other gradients than one compiled afresh, so main leaves the cache
    off there; one CPU device (the demo) and accelerators keep it."""
    import jax

    from gld_jax.utils import compile_cache

    assert jax.default_backend() == "cpu" and jax.device_count() == 8
    before = jax.config.jax_compilation_cache_dir
    compile_cache.enable_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "xla_cache").exists()
    safe = compile_cache.persistent_cache_is_safe
    assert safe("cpu", 1) and safe("tpu", 8) and safe("gpu", 8)
    assert not safe("cpu", 8)

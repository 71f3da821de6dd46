"""The whole pipeline with every path on storage that is not the local disk
(tests/object_storage.py: ram:// through TF, gs:// checkpoints on a GCS
emulator): synthetic data, conversion, two stages with a stop and resume,
embedding, evaluation, the ScaNN CLI with a saved and reloaded index and a
report, and the label clean-up; the same GAP as the same run on local disk."""

from __future__ import annotations

import os
import runpy
import sys

import pytest
import tensorflow as tf
from object_storage import EMULATOR_BUCKET, object_storage
from tiny import tiny_config

from gld_jax.pipeline import SOLUTION_CSV, run_pipeline
from gld_jax.utils import fs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _config(data: str, tfrecords: str, checkpoints: str = ""):
    c = tiny_config(data)
    c.tfrecord_dir = tfrecords
    c.checkpoint_dir = checkpoints
    c.checkpoint_every_steps = 2  # several saves, so Orbax's GCS deleter runs too
    c.keep_checkpoints = 1
    return c


def _gaps(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k.startswith("gap")}


def _run_cli(argv: list[str], script: str) -> int:
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = saved
    return 0


@pytest.fixture(scope="module")
def remote_root():
    with object_storage() as root:
        yield root


def test_pipeline_on_object_storage_matches_the_local_run(remote_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL written as a local path would show up here
    local_dir = tmp_path / "local"
    local = run_pipeline(
        _config(str(local_dir / "data"), str(local_dir / "tfr")), str(local_dir / "run")
    )

    r = remote_root
    ckpt = f"gs://{EMULATOR_BUCKET}/run/checkpoints"
    config = _config(f"{r}/data", f"{r}/tfr", ckpt)
    stage0 = run_pipeline(config, f"{r}/run", mode="train", stop_after_steps=3)
    assert stage0["stopped_at_step"] == 3
    from etils import epath

    assert [p.name for p in epath.Path(ckpt).iterdir()] == ["3"]  # on the emulator
    remote = run_pipeline(config, f"{r}/run")  # resumes at step 3, then embeds, evaluates
    assert remote["steps_run"] == local["steps_run"] - 3
    assert [p.name for p in epath.Path(ckpt).iterdir()] == [str(local["total_steps"])]
    assert _gaps(remote) == _gaps(local) and "gap_public" in remote
    assert remote["submission"] == f"{r}/run/submission.csv"
    assert fs.read_text(remote["submission"]) == (local_dir / "run" / "submission.csv").read_text()
    assert tf.io.gfile.exists(f"{r}/tfr/manifest.json")
    assert tf.io.gfile.glob(f"{r}/run/tensorboard/events.out.tfevents.*")

    # The ScaNN CLI on it: build a tree (not brute force) index, save it, search the
    # reloaded one, write a report; the same GAP both ways.
    emb = f"{r}/run/embeddings"
    common = ["--queries", f"{emb}/test", "--solution", f"{r}/data/{SOLUTION_CSV}"]
    build = ["--index", f"{emb}/train", "--brute_force_threshold", "0", "--num_leaves", "4"]
    assert (
        _run_cli(
            [*build, *common, "--output", f"{r}/eval/a.csv", "--save_index", f"{r}/eval/index"],
            "scripts/evaluate_scann.py",
        )
        == 0
    )
    assert tf.io.gfile.exists(f"{r}/eval/index/scann/scann_assets.pbtxt")
    report = ["--report", f"{r}/eval/report", "--tfrecord_dir", f"{r}/tfr"]
    loaded = ["--load_index", f"{r}/eval/index", *common, "--output", f"{r}/eval/b.csv"]
    assert _run_cli([*loaded, *report], "scripts/evaluate_scann.py") == 0
    assert fs.read_text(f"{r}/eval/a.csv") == fs.read_text(f"{r}/eval/b.csv")
    assert tf.io.gfile.exists(f"{r}/eval/report/index.html")
    assert tf.io.gfile.glob(f"{r}/eval/report/images/*.jpg")

    # The label clean-up reads the finished run's checkpoint and the train.csv.
    cfg_file = tmp_path / "remote_config.py"
    cfg_file.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\n"
        "from test_object_storage import _config\n\n"
        f"def get_config():\n    return _config({r + '/data'!r}, {r + '/tfr'!r}, {ckpt!r})\n"
    )
    from gld_jax import clean_labels

    code = clean_labels.main(
        [
            "clean_labels",
            f"--config={cfg_file}",
            f"--workdir={r}/run",
            f"--output={r}/noisy.csv",
            f"--drop_to={r}/train_cleaned.csv",
        ]
    )
    assert code == 0
    assert fs.read_text(f"{r}/noisy.csv").startswith("id,landmark_id,angle_degrees\n")
    assert fs.read_text(f"{r}/train_cleaned.csv").startswith("id,")
    assert not tf.io.gfile.glob(f"{r}/*.tmp")

    assert sorted(os.listdir(tmp_path)) == ["local", "remote_config.py"]  # no 'ram:' or 'gs:'


def test_unusable_paths_are_one_line_naming_the_key(remote_root, tmp_path):
    from gld_jax.data.prepare import path_problem

    r = f"{remote_root}/bad"
    fs.write_text(f"{r}/a_file", "x")
    config = _config(f"{r}/missing", f"{r}/tfr")
    config.synthetic.enabled = False
    assert path_problem(config, f"{r}/run") == f"data_dir: {r}/missing does not exist"
    config.data_dir = f"{r}/a_file"
    assert path_problem(config, f"{r}/run") == f"data_dir: {r}/a_file is not a directory"
    assert path_problem(config, f"{r}/a_file") == f"--workdir: {r}/a_file is not a directory"
    fs.makedirs(f"{r}/data")
    config.data_dir = f"{r}/data"
    config.checkpoint_dir = f"{r}/a_file"
    assert path_problem(config, f"{r}/run") == f"checkpoint_dir: {r}/a_file is not a directory"
    (tmp_path / "data").mkdir()
    local = _config(str(tmp_path / "data"), str(tmp_path / "tfr"))
    local.synthetic.enabled = False
    assert path_problem(local, str(tmp_path / "run")) is None
    assert not [p for p in tmp_path.rglob(".write-probe-*")]  # probes are removed


def test_a_missing_remote_object_is_one_line(remote_root, capsys):
    from gld_jax.metrics.gap import main as gap_main

    missing = f"{remote_root}/nowhere/solution.csv"
    fs.write_text(f"{remote_root}/sub.csv", "id,landmarks\nq1,7 0.5\n")
    assert gap_main(["--submission", f"{remote_root}/sub.csv", "--solution", missing]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and missing in err and "\n" not in err

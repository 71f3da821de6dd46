"""Workdirs and data on gs:// go through tf.io.gfile: exercised here with file://
URLs, which take the same code path (gld_jax.utils.fs) without a network."""

import json

import numpy as np

from gld_jax.data.input_pipeline import read_manifest
from gld_jax.retrieval.embeddings import (
    EmbeddingSet,
    declare_shard_set,
    load_embeddings,
    save_embeddings,
    shard_path,
)
from gld_jax.retrieval.submission import write_submission
from gld_jax.utils import fs
from gld_jax.utils.tensorboard import SummaryWriter


def test_file_urls_take_the_remote_path(tmp_path):
    url = f"file://{tmp_path}/run"
    assert fs.is_remote(url) and not fs.is_remote(str(tmp_path))
    fs.makedirs(url + "/a/b")
    assert fs.isdir(url + "/a/b") and (tmp_path / "run" / "a" / "b").is_dir()


def test_embeddings_shards_submission_and_manifest_over_a_url(tmp_path):
    root = f"file://{tmp_path}"
    emb = EmbeddingSet(np.array(["x1", "x2"]), np.eye(2, 4, dtype=np.float32), np.array([7, -1]))
    directory = f"{root}/embeddings/train"
    declare_shard_set(directory, 2)
    save_embeddings(shard_path(directory, 0), emb.select(np.array([0])), dtype=np.float16)
    save_embeddings(shard_path(directory, 1), emb.select(np.array([1])))
    back = load_embeddings(directory)
    assert back.ids.tolist() == ["x1", "x2"] and back.labels.tolist() == [7, -1]
    np.testing.assert_array_equal(back.embeddings, emb.embeddings)
    assert not list(tmp_path.glob("embeddings/train/*.tmp*"))  # temp files renamed away

    write_submission(f"{root}/out/submission.csv", ["q1", "q2"], [7, -1], [0.5, 0.1])
    assert (tmp_path / "out" / "submission.csv").read_text() == (
        "id,landmarks\nq1,7 0.500000\nq2,\n"
    )

    (tmp_path / "tfr").mkdir()
    (tmp_path / "tfr" / "manifest.json").write_text(json.dumps({"version": 1, "x": 1}))
    assert read_manifest(f"{root}/tfr").data["x"] == 1


def test_tensorboard_scalars_to_a_url(tmp_path):
    writer = SummaryWriter(f"file://{tmp_path}/tb")
    writer.scalars(3, {"loss": 1.5}, prefix="train")
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

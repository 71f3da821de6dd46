"""Tests of the GLDv2 -> TFRecord converter: records read back with plain tf.data and
protobuf parsing are compared with the CSVs the generator wrote (the oracle)."""

import collections
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tiny import TINY_DATA

from gld_jax.data import synthetic
from tfrecords_tools import build_gldv2, features

FOLDS = 3
DATA = dict(TINY_DATA, label_noise=0.15, nonlandmark_noise=0.1, seed=5)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _path(root, split, image_id):
    return os.path.join(root, split, image_id[0], image_id[1], image_id[2], image_id + ".jpg")


def _read_records(out_dir, files):
    """Examples of the given shard files as dicts, via protobuf (not the pipeline's parser)."""
    records = []
    for name in files:
        for raw in tf.data.TFRecordDataset(os.path.join(out_dir, name)).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            records.append(
                {
                    "id": f[features.ID].bytes_list.value[0].decode(),
                    "encoded": f[features.ENCODED].bytes_list.value[0],
                    **{
                        k.split("/")[1]: f[k].int64_list.value[0]
                        for k in (
                            features.CLASS,
                            features.LANDMARK_ID,
                            features.HEIGHT,
                            features.WIDTH,
                            features.FOLD,
                            features.CLEAN,
                        )
                    },
                }
            )
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gld"))
    synthetic.generate_gldv2_like(root, **DATA)
    return root


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfr"))
    manifest = build_gldv2.build_gldv2(
        data_dir, out, num_shards=4, folds=FOLDS, show_progress=False
    )
    records = {s: _read_records(out, manifest["splits"][s]["files"]) for s in build_gldv2.SPLITS}
    return out, manifest, records


def test_every_id_once_with_csv_labels(data_dir, built):
    out, manifest, records = built
    train = {r["id"]: int(r["landmark_id"]) for r in _csv(os.path.join(data_dir, "train.csv"))}
    clean = {
        i for r in _csv(os.path.join(data_dir, "train_clean.csv")) for i in r["images"].split()
    }
    solution = {
        r["id"]: int(r["landmarks"]) if r["landmarks"] else -1
        for r in _csv(os.path.join(data_dir, "recognition_solution_v2.1.csv"))
    }
    index = [r["id"] for r in _csv(os.path.join(data_dir, "index.csv"))]

    ids = [r["id"] for r in records["train"]]
    assert sorted(ids) == sorted(train)  # every id exactly once
    full_table = sorted(set(train.values()))  # independent class table: sorted landmark ids
    for r in records["train"]:
        assert r["landmark_id"] == train[r["id"]]
        assert r["class"] == full_table.index(train[r["id"]])
        assert r["clean"] == (r["id"] in clean)
        assert 0 <= r["fold"] < FOLDS
    assert sorted(r["id"] for r in records["test"]) == sorted(solution)
    for r in records["test"]:
        assert (r["landmark_id"], r["class"], r["fold"]) == (solution[r["id"]], -1, -1)
    assert sorted(r["id"] for r in records["index"]) == sorted(index)
    assert all(
        (r["landmark_id"], r["class"], r["fold"], r["clean"]) == (-1, -1, -1, 0)
        for r in records["index"]
    )

    # Counts in the manifest equal those read back and those of the CSVs.
    for split, n in [("train", len(train)), ("test", len(solution)), ("index", len(index))]:
        info = manifest["splits"][split]
        assert info["num_examples"] == len(records[split]) == n
        assert sum(info["shard_counts"]) == n
        assert all(os.path.exists(os.path.join(out, f)) for f in info["files"])
    assert len(manifest["splits"]["train"]["files"]) == 4
    assert manifest["splits"]["test"]["files"] == ["test-00000-of-00001.tfrecord"]
    full = manifest["label_sets"]["full"]
    assert full["landmark_ids"] == full_table
    csv_counts = collections.Counter(train.values())
    assert full["class_counts"] == [csv_counts[lm] for lm in full_table]
    clean_rows = _csv(os.path.join(data_dir, "train_clean.csv"))
    assert manifest["label_sets"]["clean"]["landmark_ids"] == sorted(
        int(r["landmark_id"]) for r in clean_rows
    )
    assert manifest["label_sets"]["clean"]["class_counts"] == [
        len(r["images"].split()) for r in sorted(clean_rows, key=lambda r: int(r["landmark_id"]))
    ]
    assert manifest["skipped"] == []
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_original_bytes_kept_and_sizes_true(data_dir, built):
    _, _, records = built
    for split in build_gldv2.SPLITS:
        for r in records[split][:10]:
            with open(_path(data_dir, split, r["id"]), "rb") as f:
                assert r["encoded"] == f.read()
            with Image.open(io.BytesIO(r["encoded"])) as im:
                assert (r["height"], r["width"]) == (im.height, im.width)


def test_folds_stratified(built):
    _, manifest, records = built
    per_class = collections.defaultdict(list)
    for r in records["train"]:
        per_class[r["landmark_id"]].append(r["fold"])
    for lm, folds in per_class.items():
        counts = np.bincount(folds, minlength=FOLDS)
        # Round-robin dealing: fold sizes within a class differ by at most one, so a class
        # with >= FOLDS images is in every fold and a small one never repeats a fold.
        assert counts.max() - counts.min() <= 1, (lm, counts)
        if len(folds) >= FOLDS:
            assert counts.min() >= 1
    all_folds = np.bincount([r["fold"] for r in records["train"]], minlength=FOLDS)
    assert manifest["fold_counts"] == all_folds.tolist()
    assert manifest["label_sets"]["full"]["fold_counts"] == all_folds.tolist()
    shard_fold = np.array(manifest["splits"]["train"]["shard_fold_counts"]["clean"])
    clean_folds = np.bincount([r["fold"] for r in records["train"] if r["clean"]], minlength=FOLDS)
    assert shard_fold.sum(0).tolist() == clean_folds.tolist()


def test_assign_folds_deterministic_and_offsets_vary():
    labels = {f"{i:016x}": i % 50 for i in range(100)}  # 50 classes of 2 images
    a = build_gldv2.assign_folds(labels, 5, seed=0)
    assert a == build_gldv2.assign_folds(dict(reversed(list(labels.items()))), 5, seed=0)
    assert a != build_gldv2.assign_folds(labels, 5, seed=1)
    # Random start offsets spread 2-image classes over all folds (not all into 0 and 1).
    assert set(a.values()) == set(range(5))
    assert min(np.bincount(list(a.values()), minlength=5)) >= 10


def test_clean_label_set_classes(data_dir, tmp_path):
    out = str(tmp_path / "clean")
    assert (
        build_gldv2.main(
            [
                "--data_dir",
                data_dir,
                "--output_dir",
                out,
                "--clean",
                "--num_shards",
                "2",
                "--max_side",
                "40",
                "--no_progress",
            ]
        )
        == 0
    )
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["label_set"] == "clean"
    table = manifest["label_sets"]["clean"]["landmark_ids"]
    records = _read_records(out, manifest["splits"]["train"]["files"])
    for r in records:
        expected = table.index(r["landmark_id"]) if r["clean"] else -1
        assert r["class"] == expected
        # --max_side re-encodes: the stored JPEG fits and its recorded size is true.
        with Image.open(io.BytesIO(r["encoded"])) as im:
            assert max(im.size) <= 40 and (r["height"], r["width"]) == (im.height, im.width)


def test_missing_and_corrupt_files_are_skipped(data_dir, tmp_path, capsys):
    import shutil

    root = str(tmp_path / "broken")
    shutil.copytree(data_dir, root)
    train = [r["id"] for r in _csv(os.path.join(root, "train.csv"))]
    test = [r["id"] for r in _csv(os.path.join(root, "test.csv"))]
    os.remove(_path(root, "train", train[0]))
    with open(_path(root, "train", train[1]), "wb") as f:
        f.write(b"this is not a jpeg")
    with open(_path(root, "test", test[0]), "r+b") as f:
        f.truncate(200)  # truncated JPEG: header fine, data cut
    out = str(tmp_path / "out")
    assert (
        build_gldv2.main(
            ["--data_dir", root, "--output_dir", out, "--num_shards", "2", "--no_progress"]
        )
        == 0
    )
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    skipped = {(s["split"], s["id"]): s["reason"] for s in manifest["skipped"]}
    assert skipped.keys() == {("train", train[0]), ("train", train[1]), ("test", test[0])}
    assert skipped["train", train[0]] == "missing file"
    assert skipped["train", train[1]].startswith("not an image: the file holds text")
    assert skipped["test", test[0]].startswith("truncated")
    got = [r["id"] for r in _read_records(out, manifest["splits"]["train"]["files"])]
    assert sorted(got) == sorted(train[2:])
    assert manifest["splits"]["train"]["num_examples"] == len(train) - 2
    assert manifest["splits"]["test"]["num_examples"] == len(test) - 1
    assert sum(manifest["label_sets"]["full"]["class_counts"]) == len(train) - 2


def test_user_mistakes_exit_nonzero_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_gldv2.main(["--data_dir", str(empty), "--output_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "train.csv" in err[0]
    (empty / "train.csv").write_text("id,url,landmark_id\n0123456789abcdef,u,5\n")
    assert build_gldv2.main(["--data_dir", str(empty), "--output_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no train images" in err[0]
    # The real command line: exit status and a single stderr line, no traceback.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfrecords_tools.build_gldv2",
            "--data_dir",
            str(tmp_path / "nope"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_output_dir_that_is_a_file_is_a_clear_error(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert (
        build_gldv2.main(
            ["--data_dir", data_dir, "--output_dir", str(blocker / "sub"), "--no_progress"]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output dir" in err[0]


def test_workers_write_the_same_shards(data_dir, built, tmp_path):
    out, manifest, _ = built
    out2 = str(tmp_path / "w2")
    m2 = build_gldv2.build_gldv2(
        data_dir, out2, num_shards=4, folds=FOLDS, num_workers=2, show_progress=False
    )
    assert m2 == manifest
    for name in manifest["splits"]["train"]["files"]:
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read()

"""Tests of the tf.data pipelines and augmentations.

Oracles: the generator's CSVs (ids, labels, clean set), shard files read with plain
tf.data + protobuf parsing (every-th selection), numpy (rot90, roll, flips).
"""

import csv
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from tiny import TINY_DATA

from gld_jax.data import augment, input_pipeline, synthetic
from tfrecords_tools import build_gldv2, features

S = 24  # image side in the tests: small keeps decoding and resizing cheap
FOLDS = 3
DATA = dict(TINY_DATA, label_noise=0.15, nonlandmark_noise=0.1, seed=11)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("gld"))
    synthetic.generate_gldv2_like(data, **DATA)
    out = str(tmp_path_factory.mktemp("tfr"))
    build_gldv2.build_gldv2(data, out, num_shards=4, folds=FOLDS, show_progress=False)
    train = {r["id"]: int(r["landmark_id"]) for r in _csv(os.path.join(data, "train.csv"))}
    clean = {i for r in _csv(os.path.join(data, "train_clean.csv")) for i in r["images"].split()}
    return data, out, train, clean


def _eval_rows(out, **kw):
    """(rows of unpadded examples, number of padded ones, batch count) of eval_dataset."""
    ds = input_pipeline.eval_dataset(out, image_size=S, **kw)
    rows, pads, batches = [], 0, 0
    for b in ds.as_numpy_iterator():
        batches += 1
        assert b["image"].shape == (kw["batch_size"], S, S, 3) and b["image"].dtype == np.uint8
        for k in range(kw["batch_size"]):
            if b["mask"][k]:
                rows.append(
                    {
                        "id": b["id"][k].decode(),
                        "label": int(b["label"][k]),
                        "landmark_id": int(b["landmark_id"][k]),
                        "fold": int(b["fold"][k]),
                        "image": b["image"][k],
                    }
                )
            else:
                pads += 1
                assert b["id"][k] == b"" and b["label"][k] == -1 and not b["image"][k].any()
    assert batches == len(ds)
    return rows, pads, batches


def _digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


# --------------------------------------------------------------------------- train


def test_train_batches_shapes_dtypes_labels(dirs):
    _, out, _, _ = dirs
    num_classes = len(input_pipeline.landmark_ids(out, "full"))
    ds = input_pipeline.train_dataset(out, image_size=S, batch_size=16, seed=1)
    batches = list(ds.take(4).as_numpy_iterator())
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (16, S, S, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (16,) and b["label"].dtype == np.int32
        assert ((b["label"] >= 0) & (b["label"] < num_classes)).all()
    # Deterministic in the seed, different for another seed.
    again = list(
        input_pipeline.train_dataset(out, image_size=S, batch_size=16, seed=1)
        .take(4)
        .as_numpy_iterator()
    )
    assert all(
        (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()
        for a, b in zip(batches, again, strict=True)
    )
    other = next(
        input_pipeline.train_dataset(out, image_size=S, batch_size=16, seed=2).as_numpy_iterator()
    )
    assert not (other["image"] == batches[0]["image"]).all()
    # Resuming with skip_batches gives the batches that follow, decoded or not.
    resumed = next(
        input_pipeline.train_dataset(
            out, image_size=S, batch_size=16, seed=1, skip_batches=3
        ).as_numpy_iterator()
    )
    assert (resumed["image"] == batches[3]["image"]).all()
    assert (resumed["label"] == batches[3]["label"]).all()


def _train_pairs(out, epochs=5, label_set="full", folds=None, **kw):
    """Distinct (image digest, label) pairs seen in `epochs` epochs without augmentation."""
    n = input_pipeline.num_examples(out, "train", label_set=label_set, folds=folds)
    options = input_pipeline.TrainOptions(folds=folds, augment=False, shuffle_buffer=16)
    ds = input_pipeline.train_dataset(
        out, image_size=S, batch_size=1, label_set=label_set, options=options, **kw
    )
    return {
        (_digest(b["image"][0]), int(b["label"][0]))
        for b in ds.take(epochs * n).as_numpy_iterator()
    }


def test_train_label_set_clean_and_folds_select_exactly(dirs):
    # The same records with the same labels as the one-pass eval view (checked against
    # the CSVs below): clean drops non-clean images, folds drop the held-out fold.
    _, out, _, _ = dirs
    got = _train_pairs(out, label_set="clean", folds=[0, 2])
    want = set()
    for fold in (0, 2):
        rows, _, _ = _eval_rows(out, split="train", batch_size=8, label_set="clean", fold=fold)
        want |= {(_digest(r["image"]), r["label"]) for r in rows}
    assert got == want


def test_train_process_shards_are_disjoint(dirs):
    _, out, _, _ = dirs
    everything = {d for d, _ in _train_pairs(out, epochs=4)}
    for count in (2, 5):  # 4 files: 2 processes split files, 5 split records
        parts = [
            {
                d
                for d, _ in _train_pairs(
                    out, epochs=4 * count, process_index=p, process_count=count
                )
            }
            for p in range(count)
        ]
        assert sum(len(p) for p in parts) == len(everything)
        assert set().union(*parts) == everything


def test_train_rejects_empty_selection(dirs, tmp_path):
    _, out, _, _ = dirs
    with pytest.raises(ValueError, match="label_set"):
        input_pipeline.train_dataset(out, image_size=S, batch_size=2, label_set="nope")
    with pytest.raises(ValueError, match="folds"):
        input_pipeline.train_dataset(
            out, image_size=S, batch_size=2, options=input_pipeline.TrainOptions(folds=[FOLDS])
        )
    with pytest.raises(ValueError, match="no training records"):  # would hang, not fail
        input_pipeline.train_dataset(
            out, image_size=S, batch_size=2, process_index=999, process_count=1000
        )
    with pytest.raises(FileNotFoundError, match="build_gldv2"):
        input_pipeline.train_dataset(str(tmp_path), image_size=S, batch_size=2)


# --------------------------------------------------------------------------- eval


def test_eval_covers_every_record_once_with_labels(dirs):
    data, out, train, clean = dirs
    full_table = sorted(set(train.values()))
    rows, pads, batches = _eval_rows(out, split="train", batch_size=7)
    assert sorted(r["id"] for r in rows) == sorted(train)
    assert batches == -(-len(train) // 7) and pads == batches * 7 - len(train)
    for r in rows:
        assert r["landmark_id"] == train[r["id"]]
        assert r["label"] == full_table.index(train[r["id"]])
    clean_table = input_pipeline.landmark_ids(out, "clean").tolist()
    rows, _, _ = _eval_rows(out, split="train", batch_size=7, label_set="clean")
    assert sorted(r["id"] for r in rows) == sorted(clean)
    assert all(r["label"] == clean_table.index(train[r["id"]]) for r in rows)
    solution = {
        r["id"]: int(r["landmarks"]) if r["landmarks"] else -1
        for r in _csv(os.path.join(data, "recognition_solution_v2.1.csv"))
    }
    rows, _, _ = _eval_rows(out, split="test", batch_size=5)
    assert {r["id"]: r["landmark_id"] for r in rows} == solution
    assert all(
        r["label"]
        == (full_table.index(solution[r["id"]]) if solution[r["id"]] in full_table else -1)
        for r in rows
    )
    assert all(r["fold"] == -1 for r in rows)
    rows, _, _ = _eval_rows(out, split="index", batch_size=5)
    assert sorted(r["id"] for r in rows) == sorted(
        r["id"] for r in _csv(os.path.join(data, "index.csv"))
    )


@pytest.mark.parametrize("split", ["train", "test"])  # 4 files (file shards), 1 (records)
def test_eval_process_shards_partition_the_split(dirs, split):
    _, out, _, _ = dirs
    everything = sorted(r["id"] for r in _eval_rows(out, split=split, batch_size=4)[0])
    for count in (2, 3):
        parts = [
            _eval_rows(out, split=split, batch_size=4, process_index=p, process_count=count)
            for p in range(count)
        ]
        ids = [[r["id"] for r in rows] for rows, _, _ in parts]
        assert sorted(sum(ids, [])) == everything  # disjoint, and the union is all
        assert len({b for _, _, b in parts}) == 1  # same number of batches everywhere
        assert parts[0][2] == input_pipeline.eval_num_batches(
            out, split=split, batch_size=4, process_count=count
        )


def test_validation_takes_every_nth_of_a_fold(dirs):
    _, out, _, _ = dirs
    manifest = input_pipeline.read_manifest(out)
    every, fold = 3, 1
    # Oracle: each shard file in order, records of the fold, every 3rd of them.
    expected = []
    for name in manifest.data["splits"]["train"]["files"]:
        in_fold = []
        for raw in tf.data.TFRecordDataset(os.path.join(out, name)).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            if f[features.FOLD].int64_list.value[0] == fold:
                in_fold.append(f[features.ID].bytes_list.value[0].decode())
        expected += in_fold[::every]
    rows, _, _ = _eval_rows(out, split="train", batch_size=4, fold=fold, every=every)
    assert sorted(r["id"] for r in rows) == sorted(expected)  # files are read interleaved
    again, _, _ = _eval_rows(out, split="train", batch_size=4, fold=fold, every=every)
    assert [r["id"] for r in again] == [r["id"] for r in rows]  # in a deterministic order
    assert all(r["fold"] == fold for r in rows)
    assert len(expected) == input_pipeline.num_examples(out, "train", folds=[fold], every=every)
    # Process sharding does not change the selection.
    parts = [
        _eval_rows(
            out,
            split="train",
            batch_size=4,
            fold=fold,
            every=every,
            process_index=p,
            process_count=2,
        )[0]
        for p in range(2)
    ]
    assert sorted(r["id"] for p in parts for r in p) == sorted(expected)


def test_num_examples_from_manifest(dirs):
    _, out, train, clean = dirs
    fold_of = {r["id"]: r["fold"] for r in _eval_rows(out, split="train", batch_size=16)[0]}
    assert input_pipeline.num_examples(out, "train") == len(train)
    assert input_pipeline.num_examples(out, "train", label_set="clean") == len(clean)
    assert input_pipeline.num_examples(out, "train", label_set="clean", folds=[0, 1]) == sum(
        fold_of[i] in (0, 1) for i in clean
    )
    assert input_pipeline.num_examples(out, "test") == DATA["num_test"]
    assert input_pipeline.class_counts(out, "clean").sum() == len(clean)
    with pytest.raises(ValueError, match="fold"):
        input_pipeline.eval_dataset(out, split="test", image_size=S, batch_size=2, fold=0)


# --------------------------------------------------------------------------- augment


def _image(h=8, w=8):
    return np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3) % 251 + 1


def test_affine_transform_matches_numpy_rotations_and_shifts():
    img = _image()
    rot = augment.affine_transform(tf.constant(img), 90.0, 1.0, tf.constant([0.0, 0.0]))
    np.testing.assert_allclose(rot.numpy(), np.rot90(img, 1), atol=1e-2)  # counter-clockwise
    rot = augment.affine_transform(tf.constant(img), 180.0, 1.0, tf.constant([0.0, 0.0]))
    np.testing.assert_allclose(rot.numpy(), img[::-1, ::-1], atol=1e-2)
    # Shift right by 2 of 8 columns: content moves right, zeros come in on the left.
    moved = augment.affine_transform(tf.constant(img), 0.0, 1.0, tf.constant([0.25, 0.0]))
    want = np.zeros_like(img)
    want[:, 2:] = img[:, :-2]
    np.testing.assert_allclose(moved.numpy(), want, atol=1e-3)
    # Zoom x2 about the centre of a 5x5 image: the centre pixel stays, (2,3) <- (2,2.5).
    img5 = _image(5, 5)
    zoom = augment.affine_transform(tf.constant(img5), 0.0, 2.0, tf.constant([0.0, 0.0]))
    np.testing.assert_allclose(zoom.numpy()[2, 2], img5[2, 2], atol=1e-3)
    np.testing.assert_allclose(zoom.numpy()[2, 3], (img5[2, 2] + img5[2, 3]) / 2, atol=1e-3)


def test_flip_and_cutout():
    img = tf.constant(_image(20, 20).astype(np.uint8))
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(augment.random_flip(img, seed, 1.0), img.numpy()[:, ::-1])
    np.testing.assert_array_equal(augment.random_flip(img, seed, 0.0), img.numpy())
    np.testing.assert_array_equal(augment.random_cutout(img, seed, 0.0, 0.4), img.numpy())
    for s in range(20):
        out = augment.random_cutout(img, tf.constant([s, 7], tf.int64), 1.0, 0.4).numpy()
        zero = (out == 0).all(-1)
        rows, cols = np.nonzero(zero)
        assert zero.any()
        # One solid rectangle no larger than 0.4 of each side; the rest untouched.
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and box.shape[0] <= 8 and box.shape[1] <= 8
        np.testing.assert_array_equal(out[~zero], img.numpy()[~zero])


def test_augment_train_image_shape_and_determinism():
    rgb = (np.random.default_rng(0).uniform(size=(30, 40, 3)) * 255).astype(np.uint8)
    encoded = tf.io.encode_jpeg(tf.constant(rgb))
    seed = tf.constant([3, 4], tf.int64)
    cfg = augment.AugmentConfig(crop_prob=1.0, ssr_prob=1.0, cutout_prob=1.0)
    a = augment.augment_train_image(encoded, 30, 40, seed, 16, cfg)
    b = augment.augment_train_image(encoded, 30, 40, seed, 16, cfg)
    c = augment.augment_train_image(encoded, 30, 40, tf.constant([3, 5], tf.int64), 16, cfg)
    assert a.shape == (16, 16, 3) and a.dtype == tf.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    window = augment.random_crop_window(seed, 30, 40, (0.3, 0.5), (0.75, 1.33)).numpy()
    y, x, h, w = window
    assert 0 <= y and y + h <= 30 and 0 <= x and x + w <= 40
    assert 0.3 * 1200 * 0.9 <= h * w <= 0.5 * 1200 * 1.1

"""The input pipeline at GLDv2 scale: exact per-host epochs, exact resume across epoch
boundaries, square-root / class-balanced sampling, DCT-scaled decoding.

Oracles: the manifest's counts and the one-pass eval view (which records exist), hand
computed sampling weights, numpy block means of a full decode (what a 1/r DCT decode
approximates), and the unskipped stream (for resume).
"""

import hashlib
import math

import numpy as np
import pytest
import tensorflow as tf

from gld_jax.data import augment, input_pipeline, synthetic
from tfrecords_tools import build_gldv2

S = 24  # 64x48 sources: min side 48 = 2 * S, so the DCT path decodes at 1/2 here
DATA = dict(
    num_classes=6,
    min_images=2,
    max_images=24,
    num_test=8,
    num_index=4,
    image_size=(64, 48),
    seed=21,
    show_progress=False,
)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("gld"))
    synthetic.generate_gldv2_like(data, **DATA)
    out = str(tmp_path_factory.mktemp("tfr"))
    # 5 train files: 2 and 3 processes get unequal numbers of files and of records.
    build_gldv2.build_gldv2(data, out, num_shards=5, folds=3, show_progress=False)
    return out


def _digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _stream(out, n, deterministic=True, sampling="uniform", **kw):
    """(digest, label) of the first n single-image batches, no augmentation."""
    options = input_pipeline.TrainOptions(
        augment=False, shuffle_buffer=8, deterministic=deterministic, sampling=sampling
    )
    ds = input_pipeline.train_dataset(out, image_size=S, batch_size=1, options=options, **kw)
    return [(_digest(b["image"][0]), int(b["label"][0])) for b in ds.take(n).as_numpy_iterator()]


def _all_records(out):
    ds = input_pipeline.eval_dataset(out, split="train", image_size=S, batch_size=1)
    return sorted(_digest(b["image"][0]) for b in ds.as_numpy_iterator())


@pytest.mark.parametrize("count", [1, 2, 3, 7])  # 7 > 5 files: records are dealt out
def test_every_record_once_per_epoch_across_processes(out, count):
    everything = _all_records(out)
    per_epoch = [
        input_pipeline.records_per_epoch(out, process_index=p, process_count=count)
        for p in range(count)
    ]
    assert sum(per_epoch) == len(everything) == input_pipeline.num_examples(out, "train")
    if count in (2, 3):
        assert len(set(per_epoch)) > 1  # the uneven case is the one exercised
    for epoch in range(2):
        union = []
        for p in range(count):
            seen = _stream(out, (epoch + 1) * per_epoch[p], process_index=p, process_count=count)[
                epoch * per_epoch[p] :
            ]
            union += [d for d, _ in seen]
        assert sorted(union) == everything  # each record exactly once in each epoch


def test_resume_at_any_step_matches_the_unskipped_stream(out):
    n = input_pipeline.num_examples(out, "train")
    batch = 7
    kw = dict(
        image_size=S,
        batch_size=batch,
        seed=3,
        options=input_pipeline.TrainOptions(shuffle_buffer=16),
    )
    ref = list(input_pipeline.train_dataset(out, **kw).take(2 * n // batch + 2).as_numpy_iterator())
    # Mid first epoch, the batch that straddles the epoch boundary, deep in epoch 2.
    for k in (2, n // batch, 2 * n // batch + 1):
        got = next(input_pipeline.train_dataset(out, skip_batches=k, **kw).as_numpy_iterator())
        np.testing.assert_array_equal(got["image"], ref[k]["image"])
        np.testing.assert_array_equal(got["label"], ref[k]["label"])
    # Another epoch reads the files in another order: the second epoch is not a replay.
    first = _stream(out, 2 * n, seed=3)
    assert [d for d, _ in first[:n]] != [d for d, _ in first[n:]]
    assert sorted(first[:n]) == sorted(first[n:])


def test_resume_with_sampling(out):
    kw = dict(
        image_size=S, batch_size=5, seed=4, options=input_pipeline.TrainOptions(sampling="sqrt")
    )
    ref = list(input_pipeline.train_dataset(out, **kw).take(40).as_numpy_iterator())
    got = next(input_pipeline.train_dataset(out, skip_batches=37, **kw).as_numpy_iterator())
    np.testing.assert_array_equal(got["image"], ref[37]["image"])


def test_fast_mode_reads_the_same_epoch(out):
    n = input_pipeline.num_examples(out, "train")
    fast = sorted(d for d, _ in _stream(out, n, deterministic=False))
    assert fast == _all_records(out)


def test_sampling_weights_by_hand():
    # counts 1, 4, 16 (N = 21). sqrt: sum sqrt(n) = 1 + 2 + 4 = 7, w = 21 n^-0.5 / 7
    # = 3, 1.5, 0.75; class totals n w = 3, 6, 12, proportional to sqrt(n).
    np.testing.assert_allclose(input_pipeline.sampling_weights([1, 4, 16], 0.5), [3, 1.5, 0.75])
    # balanced: w = 21 / (3 n) = 7, 1.75, 0.4375; totals 7, 7, 7. An empty class gets 0.
    np.testing.assert_allclose(
        input_pipeline.sampling_weights([1, 4, 16, 0], 0.0), [7, 1.75, 0.4375, 0]
    )
    np.testing.assert_allclose(input_pipeline.sampling_weights([1, 4, 16], 1.0), [1, 1, 1])


def test_balanced_sampling_flattens_the_class_distribution(out):
    counts = input_pipeline.class_counts(out, "full")
    n, k = int(counts.sum()), len(counts)
    draws = 30 * n
    for sampling, power in (("balanced", 0.0), ("sqrt", 0.5)):
        labels = [lab for _, lab in _stream(out, draws, sampling=sampling, seed=1)]
        freq = np.bincount(labels, minlength=k) / draws
        want = counts**power / np.sum(counts**power)
        # Each epoch's copies are floor(w) + Bernoulli(frac w): the frequency of class c
        # has a standard error below sqrt(want (1 - want) / draws) * 2 here.
        tol = 4 * np.sqrt(want * (1 - want) / draws) * 2
        assert (np.abs(freq - want) < tol).all(), (sampling, freq, want)
    uniform = np.bincount([lab for _, lab in _stream(out, n)], minlength=k)
    np.testing.assert_array_equal(uniform, counts)  # one epoch: every image once
    with pytest.raises(ValueError, match="sampling"):
        input_pipeline.train_dataset(
            out, image_size=S, batch_size=1, options=input_pipeline.TrainOptions(sampling="pareto")
        )


# --------------------------------------------------------------------------- DCT


@pytest.mark.parametrize(
    "h,w,size,ratio",
    [
        (1024, 1024, 256, 4),
        (1024, 1024, 512, 2),
        (1024, 1024, 100, 8),
        (768, 1024, 256, 2),
        (1024, 1024, 1000, 1),
        (300, 300, 256, 1),
        (512, 2048, 64, 8),
    ],
)
def test_dct_ratio(h, w, size, ratio):
    assert int(augment.dct_ratio(h, w, size)) == ratio


def _block_mean(image, r):
    h, w = image.shape[0] // r * r, image.shape[1] // r * r
    return image[:h, :w].reshape(h // r, r, w // r, r, 3).astype(np.float64).mean((1, 3))


def test_dct_decode_equals_block_means_of_the_full_decode():
    y, x = np.mgrid[0:1024, 0:1024]
    img = np.stack([x // 4 % 256, y // 4 % 256, (x + y) // 16 % 256], -1).astype(np.uint8)
    enc = tf.io.encode_jpeg(img, quality=95)
    full = tf.io.decode_jpeg(enc).numpy()
    # Whole image for a 256 px stage: 1/4 scale, each pixel about the mean of a 4x4 block.
    got = augment.decode_window(enc, tf.constant([0, 0, 1024, 1024]), 256).numpy()
    assert got.shape == (256, 256, 3)
    assert np.abs(got - _block_mean(full, 4)).mean() < 2.0
    # A crop (y, x, h, w) = (100, 200, 512, 600) for a 128 px stage: r = 512 // 128 = 4.
    got = augment.decode_window(enc, tf.constant([100, 200, 512, 600]), 128).numpy()
    assert got.shape == (128, 150, 3)
    assert np.abs(got - _block_mean(full[100:612, 200:800], 4)).mean() < 2.0
    plain = augment.decode_window(enc, tf.constant([100, 200, 512, 600]), 128, dct_scaling=False)
    np.testing.assert_array_equal(plain.numpy(), full[100:612, 200:800])


def test_pipeline_images_with_and_without_dct_agree(out):
    def images(dct):
        return next(
            input_pipeline.eval_dataset(
                out, split="train", image_size=S, batch_size=16, dct_scaling=dct
            ).as_numpy_iterator()
        )["image"]

    a, b = images(True), images(False)
    assert a.shape == b.shape == (16, S, S, 3)
    assert not np.array_equal(a, b)  # 48 px sources at 24 px: the 1/2 decode was taken
    assert np.abs(a.astype(int) - b).mean() < 6
    train = [
        next(
            input_pipeline.train_dataset(
                out,
                image_size=S,
                batch_size=8,
                seed=2,
                options=input_pipeline.TrainOptions(dct_scaling=d),
            ).as_numpy_iterator()
        )
        for d in (True, False)
    ]
    np.testing.assert_array_equal(train[0]["label"], train[1]["label"])
    assert np.abs(train[0]["image"].astype(int) - train[1]["image"]).mean() < 8
    assert math.isfinite(float(np.mean(a)))

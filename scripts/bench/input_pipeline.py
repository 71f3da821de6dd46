"""Benchmark of gld_jax.data.input_pipeline.train_dataset: images/s delivered vs the ceiling.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/input_pipeline.py \
        --num_images 400 --workdir /tmp/gldjax-bench-input

Writes --num_images photo-like 1024x1024 JPEGs (q90) in the GLDv2 layout, converts them
(originals kept) and measures on all cores, in the same run:

- ceiling: TFRecordDataset -> parse -> tf.io.decode_jpeg (full size), AUTOTUNE-parallel,
  nothing else: what any pipeline that decodes every source in full can reach;
- train_dataset (augmentations on, deterministic) at 256 and 512 px, with and without
  DCT-scaled decoding; with the augmentations in the train step instead
  (host_geometric=False: the host's share under input.augment_on=device), against
  bare decodes at full size and at the DCT scale the stage uses; the same without
  augmentation (decode + resize only, no crop); and the fast
  (non-deterministic) mode at 256 px.

Each measurement skips warmup batches, then times --epochs passes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from gld_jax.data import input_pipeline  # noqa: E402
from scripts.bench.helpers import photos  # noqa: E402
from tfrecords_tools import build_gldv2, features  # noqa: E402

BATCH = 32


def _ceiling(out: str, images: int, ratio: int = 1) -> float:
    manifest = input_pipeline.read_manifest(out)
    files = [os.path.join(out, f) for f in manifest.files("train")]

    def decode(raw: tf.Tensor) -> tf.Tensor:
        ex = tf.io.parse_single_example(raw, features.FEATURE_SPEC)
        # A reduction over the pixels: with tf.shape alone tf.data never paid for the
        # decode (it measured 3x the single-core decode rate on 2 cores).
        return tf.reduce_max(tf.io.decode_jpeg(ex[features.ENCODED], channels=3, ratio=ratio))

    ds = tf.data.Dataset.from_tensor_slices(files).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    it = iter(ds)
    for _ in range(BATCH):  # warm up
        next(it)
    t = time.perf_counter()
    for _ in range(images):
        next(it)
    return images / (time.perf_counter() - t)


def _pipeline(out: str, images: int, image_size: int, **options) -> float:
    ds = input_pipeline.train_dataset(
        out,
        image_size=image_size,
        batch_size=BATCH,
        seed=0,
        options=input_pipeline.TrainOptions(shuffle_buffer=256, **options),
    )
    it = ds.as_numpy_iterator()
    for _ in range(2):  # warm up: tracing, first prefetch
        next(it)
    batches = max(1, images // BATCH)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--workdir", default="/tmp/gldjax-bench-input")
    args = parser.parse_args()
    data = os.path.join(args.workdir, "data")
    out = os.path.join(args.workdir, "tfrecords")
    photos.write_gldv2_folder(data, args.num_images, 1024, 1024)
    if not os.path.exists(os.path.join(out, "manifest.json")):
        build_gldv2.build_gldv2(
            data, out, num_shards=8, num_workers=os.cpu_count() or 1, show_progress=False
        )
    images = int(args.epochs * args.num_images)
    result = {
        "bench": "input_pipeline",
        "source": "1024x1024 JPEG q90",
        "num_images": args.num_images,
        "images_timed": images,
        "batch": BATCH,
        "cpus": os.cpu_count(),
    }
    result["ceiling_full_decode"] = round(_ceiling(out, images), 1)
    for size in (256, 512):
        for dct in (False, True):
            rate = _pipeline(out, images, image_size=size, dct_scaling=dct)
            result[f"train_{size}px_{'dct' if dct else 'full'}"] = round(rate, 1)
    for size in (256, 512):  # decode + resize only: the pipeline's own overhead
        for dct in (False, True):
            rate = _pipeline(out, images, image_size=size, dct_scaling=dct, augment=False)
            result[f"train_{size}px_{'dct' if dct else 'full'}_noaug"] = round(rate, 1)
    # Augmentations in the train step (input.augment_on=device): the host decodes
    # (DCT-scaled), crops and resizes; against bare decodes at full size and at the
    # DCT scale the stage uses (1024 px sources: 1/4 for 256 px, 1/2 for 512 px).
    for size, ratio in ((256, 4), (512, 2)):
        rate = _pipeline(
            out, images, image_size=size, dct_scaling=True, augment=True, host_geometric=False
        )
        result[f"train_{size}px_dct_device_augment"] = round(rate, 1)
        result[f"ceiling_decode_ratio{ratio}"] = round(_ceiling(out, images, ratio), 1)
    result["train_256px_dct_fast"] = round(
        _pipeline(out, images, image_size=256, dct_scaling=True, deterministic=False), 1
    )
    result["train_256px_full_fast"] = round(
        _pipeline(out, images, image_size=256, dct_scaling=False, deterministic=False), 1
    )
    ceiling = result["ceiling_full_decode"]
    for size in (256, 512):
        result[f"full_vs_ceiling_{size}px"] = round(result[f"train_{size}px_full"] / ceiling, 3)
        result[f"dct_speedup_{size}px"] = round(
            result[f"train_{size}px_dct"] / result[f"train_{size}px_full"], 2
        )
        result[f"dct_speedup_{size}px_noaug"] = round(
            result[f"train_{size}px_dct_noaug"] / result[f"train_{size}px_full_noaug"], 2
        )
    for size, ratio in ((256, 4), (512, 2)):
        got = result[f"train_{size}px_dct_device_augment"]
        result[f"device_augment_vs_ceiling_{size}px"] = round(got / ceiling, 3)
        result[f"device_augment_vs_scaled_decode_{size}px"] = round(
            got / result[f"ceiling_decode_ratio{ratio}"], 3
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

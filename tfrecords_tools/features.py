"""The tf.train.Example schema of gld-jax TFRecords, shared by the writer and the reader.

One Example per image:

    image/encoded      bytes  JPEG
    image/id           bytes  16-hex GLDv2 id
    image/class        int64  contiguous class in the label set chosen at build time, -1 if none
    image/landmark_id  int64  original landmark id, -1 if none (non-landmark or unknown)
    image/height       int64  pixels of the stored JPEG
    image/width        int64
    image/fold         int64  0..folds-1 for train, -1 for test/index
    image/clean        int64  1 if the image is in train_clean.csv, else 0

Readers map landmark_id -> class through the manifest's label tables, so one set of
shards serves every label set; image/class is kept for tools that read records alone.
"""

from __future__ import annotations

import tensorflow as tf

ENCODED = "image/encoded"
ID = "image/id"
CLASS = "image/class"
LANDMARK_ID = "image/landmark_id"
HEIGHT = "image/height"
WIDTH = "image/width"
FOLD = "image/fold"
CLEAN = "image/clean"

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature] = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    ID: tf.io.FixedLenFeature([], tf.string),
    CLASS: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    LANDMARK_ID: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    FOLD: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    CLEAN: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def make_example(
    *,
    encoded: bytes,
    image_id: str,
    class_index: int,
    landmark_id: int,
    height: int,
    width: int,
    fold: int,
    clean: bool,
) -> tf.train.Example:
    """Builds the Example of one image in the schema above (height/width in pixels)."""
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                ENCODED: _bytes(encoded),
                ID: _bytes(image_id.encode("ascii")),
                CLASS: _int64(class_index),
                LANDMARK_ID: _int64(landmark_id),
                HEIGHT: _int64(height),
                WIDTH: _int64(width),
                FOLD: _int64(fold),
                CLEAN: _int64(1 if clean else 0),
            }
        )
    )

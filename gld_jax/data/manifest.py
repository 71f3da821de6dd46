"""The TFRecord directory's manifest.json, read without TensorFlow.

The converter (tfrecords_tools.build_gldv2) writes manifest.json last, so its
presence means a finished conversion. It holds, per split, the shard files and
their record counts; per label set ('full' = train.csv, 'clean' =
train_clean.csv, 'clean_classes_full'), the landmark id of each contiguous
class and the images per class and per shard and fold. Everything a run needs
to plan its stages comes from here; only the input pipeline opens the shards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from gld_jax.utils import fs

MANIFEST_FILE = "manifest.json"
SUPPORTED_VERSION = 1
SPLITS = ("train", "test", "index")


def manifest_path(tfrecord_dir: str) -> str:
    return os.path.join(tfrecord_dir, MANIFEST_FILE)


def exists(tfrecord_dir: str) -> bool:
    """Whether `tfrecord_dir` holds a finished conversion (local or gs://)."""
    return fs.exists(manifest_path(tfrecord_dir))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json. `data` is the JSON object as written."""

    path: str
    data: dict

    @property
    def folds(self) -> int:
        return int(self.data["folds"])

    @property
    def label_sets(self) -> list[str]:
        return sorted(self.data["label_sets"])

    def check_label_set(self, label_set: str) -> None:
        if label_set not in self.data["label_sets"]:
            raise ValueError(f"unknown label_set {label_set!r}; the manifest has {self.label_sets}")

    def check_folds(self, folds: Sequence[int] | None) -> list[int]:
        """The sorted fold list (None = all), checked against the manifest's."""
        n = self.folds
        if folds is None:
            return list(range(n))
        folds = [int(f) for f in folds]
        if not folds or any(not 0 <= f < n for f in folds):
            raise ValueError(f"folds must be a non-empty subset of 0..{n - 1}, got {folds}")
        return sorted(set(folds))

    def landmark_ids(self, label_set: str = "full") -> np.ndarray:
        """int64 [num_classes]: landmark id of each class (class i = landmark_ids[i])."""
        self.check_label_set(label_set)
        return np.asarray(self.data["label_sets"][label_set]["landmark_ids"], np.int64)

    def class_counts(self, label_set: str = "full") -> np.ndarray:
        """int64 [num_classes]: training images per class (all folds) in the shards.

        A class has 0 images only if every one of its files failed to decode
        (label_sets[name]["num_empty_classes"]).
        """
        self.check_label_set(label_set)
        return np.asarray(self.data["label_sets"][label_set]["class_counts"], np.int64)

    def files(self, split: str) -> list[str]:
        """The split's shard file names, relative to the TFRecord directory."""
        check_split(split)
        return list(self.data["splits"][split]["files"])

    def file_counts(
        self,
        split: str,
        *,
        label_set: str = "full",
        folds: Sequence[int] | None = None,
        every: int = 1,
    ) -> list[int]:
        """Records a one-pass read selects per shard file: ceil(n / every) of the
        file's records in `label_set` and `folds` (train) or of all (test/index)."""
        check_split(split)
        self.check_label_set(label_set)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        info = self.data["splits"][split]
        if split == "train":
            fold_list = self.check_folds(folds)
            raw = [sum(row[f] for f in fold_list) for row in info["shard_fold_counts"][label_set]]
        else:
            raw = list(info["shard_counts"])
        return [math.ceil(n / every) for n in raw]

    def num_examples(
        self,
        split: str,
        *,
        label_set: str = "full",
        folds: Sequence[int] | None = None,
        every: int = 1,
    ) -> int:
        """Records a one-pass read selects (file_counts summed); no shard is read."""
        return sum(self.file_counts(split, label_set=label_set, folds=folds, every=every))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def read_manifest(tfrecord_dir: str) -> Manifest:
    """The manifest of a TFRecord directory.

    Raises:
      FileNotFoundError: no manifest (the directory was not built, or not finished).
      ValueError: a manifest version this code does not read.
    """
    path = manifest_path(tfrecord_dir)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_FILE} in {tfrecord_dir}; build it with "
            "python -m tfrecords_tools.build_gldv2"
        )
    data = json.loads(fs.read_text(path))
    if data.get("version") != SUPPORTED_VERSION:
        raise ValueError(
            f"{path}: manifest version {data.get('version')} is not "
            f"{SUPPORTED_VERSION}; rebuild the TFRecords"
        )
    return Manifest(path, data)


def landmark_ids(tfrecord_dir: str, label_set: str = "full") -> np.ndarray:
    """read_manifest(tfrecord_dir).landmark_ids(label_set)."""
    return read_manifest(tfrecord_dir).landmark_ids(label_set)


def class_counts(tfrecord_dir: str, label_set: str = "full") -> np.ndarray:
    """read_manifest(tfrecord_dir).class_counts(label_set)."""
    return read_manifest(tfrecord_dir).class_counts(label_set)


def num_examples(
    tfrecord_dir: str,
    split: str,
    *,
    label_set: str = "full",
    folds: Sequence[int] | None = None,
    every: int = 1,
) -> int:
    """Records a one-pass read of `split` selects (Manifest.num_examples)."""
    return read_manifest(tfrecord_dir).num_examples(
        split, label_set=label_set, folds=folds, every=every
    )

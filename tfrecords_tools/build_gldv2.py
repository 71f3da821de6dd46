"""Converts a GLDv2 folder (images + CSVs) into sharded TFRecords and a manifest.

    python -m tfrecords_tools.build_gldv2 --data_dir /data/gldv2 --output_dir /data/gld_tfr \
        --num_shards 256 --folds 5 --max_side 1024 --num_workers 8

Reads train.csv (id,url,landmark_id), train_clean.csv (landmark_id,images), test.csv,
index.csv and, when present, recognition_solution_v2.1.csv (test landmarks). Writes
`{split}-{i:05d}-of-{n:05d}.tfrecord` for train/test/index (schema in
tfrecords_tools/features.py) and `manifest.json` last:

    version, label_set, folds, seed, max_side, jpeg_quality, min_examples_per_shard
    splits.{train,test,index}: files, num_examples, shard_counts
    splits.train.shard_fold_counts.{full,clean}: [file][fold] example counts
    label_sets.{full,clean}: landmark_ids (class i = landmark_ids[i]), class_counts,
        fold_counts, num_examples, num_empty_classes
    fold_counts (full set), skipped: [{split, id, reason}]

Folds are stratified by landmark_id. Images that are missing or undecodable are skipped
and listed; user mistakes (no CSV, no images, unwritable output) exit 1 with one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only where records are written, so user mistakes are reported
# in a fraction of a second and without TF's start-up log lines.

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
LABEL_SETS = ("full", "clean")
SPLITS = ("train", "test", "index")
SOLUTION_FILE = "recognition_solution_v2.1.csv"
# test/index get one shard per this many images (at most num_shards), so small splits
# are not spread over many near-empty files.
MIN_EXAMPLES_PER_SHARD = 256
_SPLIT_SEED = {"train": 1, "test": 2, "index": 3}
_FOLD_SEED = 7


class BuildError(Exception):
    """A user mistake (missing CSV, no images, bad output dir): reported as one line."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One image to convert. landmark_id/fold are -1 when not applicable."""

    split: str
    image_id: str
    landmark_id: int = -1
    fold: int = -1
    clean: bool = False


@dataclass(frozen=True)
class EncodeOptions:
    """How images are stored: re-encode only when the longer side exceeds max_side."""

    max_side: int | None = None
    jpeg_quality: int = 95


@dataclass
class ShardResult:
    """What one shard holds: per written example its landmark id, fold, clean flag."""

    name: str
    landmark_ids: list[int] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    clean: list[bool] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- CSVs


def image_path(data_dir: str, split: str, image_id: str) -> str:
    """GLDv2 location of an image: data_dir/split/a/b/c/<id>.jpg."""
    return os.path.join(data_dir, split, image_id[0], image_id[1], image_id[2],
                        f"{image_id}.jpg")


def _read_csv(path: str, columns: Sequence[str]) -> Iterator[dict[str, str]]:
    """Streams the rows of a CSV that must have `columns` in its header.

    Raises BuildError (on the first `next`) if the file or a column is missing.
    """
    try:
        f = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"{path} not found") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise BuildError(f"{path}: missing column(s) {', '.join(missing)}")
        yield from reader


def _valid_id(image_id: str) -> bool:
    return len(image_id) >= 3 and image_id.isalnum()


def read_train(data_dir: str) -> tuple[dict[str, int], list[dict]]:
    """train.csv as {id: landmark_id} and a skip list for unusable rows."""
    path = os.path.join(data_dir, "train.csv")
    labels: dict[str, int] = {}
    skipped = []
    for row in _read_csv(path, ["id", "landmark_id"]):
        image_id = (row["id"] or "").strip()
        try:
            landmark = int(row["landmark_id"])
        except (TypeError, ValueError):
            landmark = -1
        if not _valid_id(image_id) or landmark < 0:
            skipped.append({"split": "train", "id": image_id, "reason": "bad csv row"})
        elif image_id in labels:
            skipped.append({"split": "train", "id": image_id, "reason": "duplicate id"})
        else:
            labels[image_id] = landmark
    if not labels:
        raise BuildError(f"{path} has no usable rows")
    return labels, skipped


def read_clean(data_dir: str, train_labels: dict[str, int]) -> set[str]:
    """Ids listed in train_clean.csv under the same landmark as in train.csv (empty if absent)."""
    path = os.path.join(data_dir, "train_clean.csv")
    if not os.path.exists(path):
        return set()
    clean = set()
    for row in _read_csv(path, ["landmark_id", "images"]):
        try:
            landmark = int(row["landmark_id"])
        except (TypeError, ValueError):
            continue
        # An id listed under another landmark than train.csv's would get two labels.
        clean.update(i for i in (row["images"] or "").split() if train_labels.get(i) == landmark)
    return clean


def read_ids(data_dir: str, split: str) -> tuple[list[str], list[dict]]:
    """Ids of test.csv / index.csv (an absent CSV means an empty split) and bad rows."""
    path = os.path.join(data_dir, f"{split}.csv")
    if not os.path.exists(path):
        return [], []
    ids, skipped, seen = [], [], set()
    for row in _read_csv(path, ["id"]):
        image_id = (row["id"] or "").strip()
        if not _valid_id(image_id) or image_id in seen:
            skipped.append({"split": split, "id": image_id, "reason": "bad csv row"})
        else:
            seen.add(image_id)
            ids.append(image_id)
    return ids, skipped


def read_solution(data_dir: str) -> dict[str, int]:
    """Test id -> landmark id from the recognition solution (first landmark; none -> absent)."""
    path = os.path.join(data_dir, SOLUTION_FILE)
    if not os.path.exists(path):
        return {}
    out = {}
    for row in _read_csv(path, ["id", "landmarks"]):
        parts = (row["landmarks"] or "").split()
        if parts and parts[0].lstrip("-").isdigit():
            out[row["id"].strip()] = int(parts[0])
    return out


# --------------------------------------------------------------------------- folds


def assign_folds(labels: dict[str, int], folds: int, seed: int) -> dict[str, int]:
    """Stratified k-fold by landmark: id -> fold in [0, folds).

    Within each class (ids sorted, so CSV order does not matter) the images are shuffled
    and dealt round-robin starting at a random fold, so a class with n >= folds images
    lands in every fold and small classes spread over different folds.
    """
    rng = np.random.default_rng([seed, _FOLD_SEED])
    by_class: dict[int, list[str]] = {}
    for image_id in sorted(labels):
        by_class.setdefault(labels[image_id], []).append(image_id)
    out = {}
    for landmark in sorted(by_class):
        ids = by_class[landmark]
        order = rng.permutation(len(ids))
        start = int(rng.integers(folds))
        for j, k in enumerate(order):
            out[ids[k]] = (start + j) % folds
    return out


# --------------------------------------------------------------------------- images


def encode_image(data: bytes, options: EncodeOptions) -> tuple[bytes, int, int]:
    """JPEG bytes to store and their (height, width) in pixels.

    The original bytes are kept unless the image must be re-encoded: its longer side is
    above options.max_side, it is not a JPEG, or its mode is not RGB/grayscale (CMYK...).
    Raises whatever PIL raises for undecodable or truncated data.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: catches truncated files, not just bad headers
        width, height = im.size
        too_big = options.max_side is not None and max(width, height) > options.max_side
        if not too_big and im.format == "JPEG" and im.mode in ("RGB", "L"):
            return data, height, width
        rgb = im.convert("RGB")
    if too_big:
        scale = options.max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=options.jpeg_quality)
    return buf.getvalue(), rgb.size[1], rgb.size[0]


def entry_to_example(data_dir: str, entry: Entry, class_index: int,
                     options: EncodeOptions) -> tf.train.Example | str:
    """Turns one image file into an Example, or returns the reason it is skipped."""
    from tfrecords_tools import features

    path = image_path(data_dir, entry.split, entry.image_id)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing file"
    except OSError as e:
        return f"unreadable: {e}"
    try:
        encoded, height, width = encode_image(data, options)
    except Exception as e:  # PIL raises many types for corrupt data; all mean "skip"
        return f"undecodable: {type(e).__name__}: {e}"
    return features.make_example(
        encoded=encoded, image_id=entry.image_id, class_index=class_index,
        landmark_id=entry.landmark_id, height=height, width=width, fold=entry.fold,
        clean=entry.clean)


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardTask:
    data_dir: str
    path: str
    entries: list[Entry]
    class_of: dict[int, int]  # landmark -> class in the build-time label set
    label_set: str
    options: EncodeOptions


def write_shard(task: ShardTask, progress: Callable[[int], object] | None = None) -> ShardResult:
    """Writes one shard to a temporary name and renames it when complete."""
    import tensorflow as tf

    result = ShardResult(name=os.path.basename(task.path))
    tmp = f"{task.path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as writer:
        for entry in task.entries:
            in_set = entry.split == "train" and (task.label_set == "full" or entry.clean)
            cls = task.class_of.get(entry.landmark_id, -1) if in_set else -1
            example = entry_to_example(task.data_dir, entry, cls, task.options)
            if isinstance(example, str):
                result.skipped.append({"split": entry.split, "id": entry.image_id,
                                       "reason": example})
            else:
                writer.write(example.SerializeToString(deterministic=True))  # sorted map keys
                result.landmark_ids.append(entry.landmark_id)
                result.folds.append(entry.fold)
                result.clean.append(entry.clean)
            if progress is not None:
                progress(1)
    os.replace(tmp, task.path)
    return result


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _shard_tasks(split: str, entries: list[Entry], num_shards: int, seed: int,
                 output_dir: str, **common) -> list[ShardTask]:
    """Shuffles a split's images with the seed and cuts them into contiguous shards."""
    if split != "train":
        num_shards = min(num_shards, max(1, math.ceil(len(entries) / MIN_EXAMPLES_PER_SHARD)))
    order = np.random.default_rng([seed, _SPLIT_SEED[split]]).permutation(len(entries))
    return [ShardTask(path=os.path.join(output_dir, shard_name(split, i, num_shards)),
                      entries=[entries[k] for k in part], **common)
            for i, part in enumerate(np.array_split(order, num_shards))]


def _run_tasks(tasks: list[ShardTask], num_workers: int, show_progress: bool) -> list[ShardResult]:
    total = sum(len(t.entries) for t in tasks)
    with tqdm(total=total, desc="TFRecords", unit="img", disable=not show_progress) as bar:
        if num_workers <= 1:
            return [write_shard(t, bar.update) for t in tasks]
        # spawn, not fork: TensorFlow's threads do not survive a fork.
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            results = {}
            for res in pool.imap_unordered(write_shard, tasks):
                results[res.name] = res
                bar.update(len(res.landmark_ids) + len(res.skipped))
        return [results[os.path.basename(t.path)] for t in tasks]


# --------------------------------------------------------------------------- manifest


def _label_tables(train: dict[str, int], clean: set[str]) -> dict[str, list[int]]:
    return {"full": sorted(set(train.values())),
            "clean": sorted({train[i] for i in clean})}


def _manifest(results: dict[str, list[ShardResult]], tables: dict[str, list[int]],
              folds: int, label_set: str, seed: int, options: EncodeOptions,
              skipped: list[dict]) -> dict:
    splits = {}
    for split, shard_results in results.items():
        splits[split] = {"files": [r.name for r in shard_results],
                         "num_examples": sum(len(r.landmark_ids) for r in shard_results),
                         "shard_counts": [len(r.landmark_ids) for r in shard_results]}
    label_sets = {}
    shard_fold_counts = {}
    for name, landmark_ids in tables.items():
        index = {lm: i for i, lm in enumerate(landmark_ids)}
        class_counts = np.zeros(len(landmark_ids), np.int64)
        per_shard = []
        for r in results["train"]:
            keep = [name == "full" or c for c in r.clean]
            lms = [lm for lm, k in zip(r.landmark_ids, keep, strict=True) if k]
            fls = [f for f, k in zip(r.folds, keep, strict=True) if k]
            np.add.at(class_counts, [index[lm] for lm in lms], 1)
            per_shard.append(np.bincount(np.asarray(fls, np.int64), minlength=folds).tolist())
        shard_fold_counts[name] = per_shard
        label_sets[name] = {
            "landmark_ids": landmark_ids,
            "class_counts": class_counts.tolist(),
            "fold_counts": np.sum(per_shard, axis=0, dtype=np.int64).reshape(-1).tolist()
            if per_shard else [0] * folds,
            "num_examples": int(class_counts.sum()),
            "num_empty_classes": int((class_counts == 0).sum()),
        }
    splits["train"]["shard_fold_counts"] = shard_fold_counts
    for r in (r for rs in results.values() for r in rs):
        skipped = skipped + r.skipped
    return {
        "version": MANIFEST_VERSION,
        "label_set": label_set,
        "folds": folds,
        "seed": seed,
        "max_side": options.max_side,
        "jpeg_quality": options.jpeg_quality,
        "min_examples_per_shard": MIN_EXAMPLES_PER_SHARD,
        "splits": splits,
        "label_sets": label_sets,
        "fold_counts": label_sets["full"]["fold_counts"],
        "skipped": skipped,
    }


def _prepare_output(output_dir: str) -> None:
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create output dir {output_dir}: {e.strerror}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise BuildError(f"output dir {output_dir} is not writable")


def build_gldv2(
    data_dir: str,
    output_dir: str,
    *,
    num_shards: int = 8,
    label_set: str = "full",
    folds: int = 5,
    max_side: int | None = None,
    jpeg_quality: int = 95,
    num_workers: int = 1,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Converts a GLDv2 folder to TFRecords and writes manifest.json; returns the manifest.

    Args:
      data_dir: GLDv2 root (train.csv, train/a/b/c/<id>.jpg, ...).
      output_dir: where the shards and manifest.json go (created).
      num_shards: train shards; test/index get one per 256 images, at most num_shards.
      label_set: 'full' (train.csv) or 'clean' (train_clean.csv): whose contiguous
        class goes into image/class. Both tables are always in the manifest.
      folds: stratified folds by landmark id (image/fold).
      max_side: re-encode images whose longer side exceeds this many pixels.
      jpeg_quality: quality of re-encoded JPEGs.
      num_workers: processes writing shards in parallel (1 = in this process).
      seed: fold assignment and shard order are deterministic functions of it.
      show_progress: draw a tqdm progress bar.

    Raises:
      BuildError: no train.csv, no train image found, bad arguments, unwritable output.
    """
    if label_set not in LABEL_SETS:
        raise BuildError(f"label_set must be one of {LABEL_SETS}, got {label_set!r}")
    if num_shards < 1 or folds < 1 or num_workers < 1:
        raise BuildError("num_shards, folds and num_workers must be >= 1")
    if max_side is not None and max_side < 1:
        raise BuildError(f"max_side must be >= 1, got {max_side}")
    if not 1 <= jpeg_quality <= 100:
        raise BuildError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if not os.path.isdir(data_dir):
        raise BuildError(f"data dir {data_dir} does not exist")

    train, skipped = read_train(data_dir)
    present = {}
    for image_id, landmark in train.items():
        if os.path.exists(image_path(data_dir, "train", image_id)):
            present[image_id] = landmark
        else:
            skipped.append({"split": "train", "id": image_id, "reason": "missing file"})
    if not present:
        raise BuildError(f"no train images found under {os.path.join(data_dir, 'train')}")
    train = present
    clean = read_clean(data_dir, train)
    if label_set == "clean" and not clean:
        raise BuildError(f"label_set 'clean' needs {os.path.join(data_dir, 'train_clean.csv')}"
                         " listing train images")
    tables = _label_tables(train, clean)
    fold_of = assign_folds(train, folds, seed)
    entries: dict[str, list[Entry]] = {
        "train": [Entry("train", i, lm, fold_of[i], i in clean) for i, lm in sorted(train.items())]
    }
    solution = read_solution(data_dir)
    test_ids, bad = read_ids(data_dir, "test")
    index_ids, bad_index = read_ids(data_dir, "index")
    skipped += bad + bad_index
    entries["test"] = [Entry("test", i, solution.get(i, -1)) for i in test_ids]
    entries["index"] = [Entry("index", i) for i in index_ids]

    _prepare_output(output_dir)
    options = EncodeOptions(max_side=max_side, jpeg_quality=jpeg_quality)
    class_of = {lm: i for i, lm in enumerate(tables[label_set])}
    tasks = {split: _shard_tasks(split, entries[split], num_shards, seed, output_dir,
                                 data_dir=data_dir, class_of=class_of, label_set=label_set,
                                 options=options)
             for split in SPLITS}
    flat = [t for split in SPLITS for t in tasks[split]]
    try:
        flat_results = _run_tasks(flat, num_workers, show_progress)
    except OSError as e:
        raise BuildError(f"cannot write shards to {output_dir}: {e}") from None
    results, k = {}, 0
    for split in SPLITS:
        results[split] = flat_results[k:k + len(tasks[split])]
        k += len(tasks[split])
    manifest = _manifest(results, tables, folds, label_set, seed, options, skipped)
    tmp = os.path.join(output_dir, f"{MANIFEST_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, MANIFEST_FILE))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner quiet
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="GLDv2 root with train.csv")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_shards", type=int, default=8)
    parser.add_argument("--label_set", choices=LABEL_SETS, default="full")
    parser.add_argument("--clean", dest="label_set", action="store_const", const="clean",
                        help="shorthand for --label_set clean")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max_side", type=int, default=None)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = build_gldv2(
            args.data_dir, args.output_dir, num_shards=args.num_shards,
            label_set=args.label_set, folds=args.folds, max_side=args.max_side,
            jpeg_quality=args.jpeg_quality, num_workers=args.num_workers, seed=args.seed,
            show_progress=not args.no_progress)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = {s: manifest["splits"][s]["num_examples"] for s in SPLITS}
    print(json.dumps({"output_dir": args.output_dir, "examples": counts,
                      "classes": {n: len(t["landmark_ids"])
                                  for n, t in manifest["label_sets"].items()},
                      "skipped": len(manifest["skipped"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

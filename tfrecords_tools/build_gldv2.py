"""Converts GLDv2 (the folder or its tar shards + CSVs) into sharded TFRecords.

    python -m tfrecords_tools.build_gldv2 --data_dir /data/gldv2 --output_dir /data/gld_tfr \
        --num_shards 512 --folds 5 --max_side 1024            # add --from_tars for tars

(One job at ~680 lines: the build itself, from listing sources through dealing,
writing and resuming shards in parallel to the manifest; reading the CSVs is
tfrecords_tools/gldv2_csv.py's, encoding images tfrecords_tools/images.py's.)

Reads train.csv (id,url,landmark_id), train_clean.csv (landmark_id,images), test.csv,
index.csv and, when present, recognition_solution_v2.1.csv (test landmarks). Images come
from `<split>/a/b/c/<id>.jpg` or, with --from_tars, from `<split>/*.tar` read in place.
Writes `{split}-{i:05d}-of-{n:05d}.tfrecord` for train/test/index (schema in
tfrecords_tools/features.py), TFDS metadata (dataset_info.json, features.json; see
tfrecords_tools/tfds_metadata.py) and `manifest.json` last:

    version, label_set, folds, seed, max_side, jpeg_quality, max_pixels,
    min_examples_per_shard
    splits.{train,test,index}: files, num_examples, shard_counts
    splits.train.shard_fold_counts.{full,clean,clean_classes_full}: [file][fold] example counts
    label_sets.{full,clean,clean_classes_full}: landmark_ids (class i = landmark_ids[i]),
        class_counts, fold_counts, num_examples, num_empty_classes
    fold_counts (full set), skipped: [{split, id, reason}], skipped_counts: {reason: n},
    reencoded: {change: n}, converted_to_rgb: images whose source was not a 3-channel
        JPEG (grayscale, CMYK, PNG, ...), now RGB JPEGs

Robust to the real set: every bad input (bad CSV rows, duplicate or malformed ids,
missing files, files without a row, unreadable directories or tars, empty, truncated,
huge or odd-format images) is listed in `skipped` with its reason and the run succeeds;
odd but good images (PNG under .jpg, CMYK, 16-bit, EXIF-rotated) are converted, not
lost. Only an unusable input as a whole (no CSV, no images, unwritable output) exits 1
with one line.

Resumable and idempotent: each shard is written to a temporary name and renamed when
complete, with a small record of its contents in `_parts/`; a rerun (after a kill, or
of a finished build) redoes only shards whose record is missing or was made from other
inputs, and two runs over the same inputs give byte-identical shards and manifest.
Output may be any path tf.io.gfile writes (gs://bucket/dir on a TPU VM).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from gld_jax.utils import fs
from gld_jax.utils.cli import quiet_tensorflow
from tfrecords_tools import sources
from tfrecords_tools.gldv2_csv import (
    BuildError,
    assign_folds,
    read_clean,
    read_ids,
    read_test_landmarks,
    read_train,
    skip_record,
)
from tfrecords_tools.images import DEFAULT_MAX_PIXELS, EncodeOptions, ImageError, encode_image

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only where records are written, so user mistakes are reported
# in a fraction of a second and without TF's start-up log lines.

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
PARTS_DIR = "_parts"
# Bumped whenever a shard's bytes for the same inputs would change: stale parts are redone.
CONVERTER_VERSION = 3
LABEL_SETS = ("full", "clean")
SPLITS = ("train", "test", "index")
# test/index get one shard per this many images (at most num_shards), so small splits
# are not spread over many near-empty files.
MIN_EXAMPLES_PER_SHARD = 256
_SPLIT_SEED = {"train": 1, "test": 2, "index": 3}
image_path = sources.image_path  # kept importable from here


@dataclass(frozen=True, slots=True)
class Entry:
    """One image to convert. landmark_id/fold are -1 when not applicable."""

    split: str
    image_id: str
    landmark_id: int = -1
    fold: int = -1
    clean: bool = False


@dataclass
class ShardResult:
    """What one shard holds: per written example its landmark id, fold, clean flag."""

    name: str
    landmark_ids: list[int] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    clean: list[bool] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    reencoded: dict[str, int] = field(default_factory=dict)
    num_bytes: int = 0
    fingerprint: str = ""
    reused: bool = False


# --------------------------------------------------------------------------- images


def entry_to_example(
    location: str | tuple[str, int, int], entry: Entry, class_index: int, options: EncodeOptions
) -> tuple[tf.train.Example, str] | str:
    """(Example, how the image was changed) for one image, or the reason it is skipped."""
    from tfrecords_tools import features

    try:
        data = sources.read_bytes(location)
    except FileNotFoundError:
        return "missing file"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    try:
        enc = encode_image(data, options)
    except ImageError as e:
        return str(e)
    example = features.make_example(
        encoded=enc.data,
        image_id=entry.image_id,
        class_index=class_index,
        landmark_id=entry.landmark_id,
        height=enc.height,
        width=enc.width,
        fold=entry.fold,
        clean=entry.clean,
    )
    return example, enc.change


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardTask:
    path: str
    entries: list[Entry]
    locations: list[str | tuple[str, int, int]]
    classes: list[int]  # per entry: class in the build-time label set, -1 if none
    options: EncodeOptions

    def fingerprint(self) -> str:
        """Hash of everything that decides this shard's bytes (not where images are read)."""
        h = hashlib.sha256()
        h.update(json.dumps([CONVERTER_VERSION, asdict(self.options)]).encode())
        for e, c in zip(self.entries, self.classes, strict=True):
            h.update(f"{e.split},{e.image_id},{e.landmark_id},{e.fold},{e.clean:d},{c};".encode())
        return h.hexdigest()


def _part_path(shard_path: str) -> str:
    return os.path.join(
        os.path.dirname(shard_path), PARTS_DIR, os.path.basename(shard_path) + ".json"
    )


def _load_part(task: ShardTask) -> ShardResult | None:
    """The record of a complete shard made from these inputs, or None (redo it)."""
    import tensorflow as tf

    part = _part_path(task.path)
    if not (tf.io.gfile.exists(part) and tf.io.gfile.exists(task.path)):
        return None
    try:
        with tf.io.gfile.GFile(part, "r") as f:
            result = ShardResult(**json.load(f))
    except (ValueError, TypeError, tf.errors.OpError):
        return None
    if (
        result.fingerprint != task.fingerprint()
        or tf.io.gfile.stat(task.path).length != result.num_bytes
    ):
        return None
    result.reused = True
    return result


def _write_atomic(path: str, text: str) -> None:
    import tensorflow as tf

    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_shard(task: ShardTask, progress: Callable[[int], object] | None = None) -> ShardResult:
    """Writes one shard (unless an identical one is already complete) and its part record.

    The shard goes to a temporary name and is renamed when complete; the part record is
    written after that, so a kill at any point leaves either a finished shard with its
    record or something the next run redoes.
    """
    import tensorflow as tf

    done = _load_part(task)
    if done is not None:
        if progress is not None:
            progress(len(task.entries))
        return done
    result = ShardResult(name=os.path.basename(task.path), fingerprint=task.fingerprint())
    reencoded: collections.Counter[str] = collections.Counter()
    tmp = f"{task.path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as writer:
        for entry, location, cls in zip(task.entries, task.locations, task.classes, strict=True):
            out = entry_to_example(location, entry, cls, task.options)
            if isinstance(out, str):
                result.skipped.append(skip_record(entry.split, entry.image_id, out))
            else:
                example, change = out
                writer.write(example.SerializeToString(deterministic=True))  # sorted map keys
                result.landmark_ids.append(entry.landmark_id)
                result.folds.append(entry.fold)
                result.clean.append(entry.clean)
                if change:
                    reencoded[change] += 1
            if progress is not None:
                progress(1)
    tf.io.gfile.rename(tmp, task.path, overwrite=True)
    result.reencoded = dict(sorted(reencoded.items()))
    result.num_bytes = tf.io.gfile.stat(task.path).length
    record = asdict(result)
    del record["reused"]
    _write_atomic(_part_path(task.path), json.dumps(record))
    return result


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _shard_tasks(
    split: str,
    entries: list[Entry],
    locations: dict,
    classes: dict[str, int],
    num_shards: int,
    seed: int,
    output_dir: str,
    options: EncodeOptions,
) -> list[ShardTask]:
    """Shuffles a split's images with the seed and cuts them into contiguous shards."""
    if split != "train":
        num_shards = min(num_shards, max(1, math.ceil(len(entries) / MIN_EXAMPLES_PER_SHARD)))
    order = np.random.default_rng([seed, _SPLIT_SEED[split]]).permutation(len(entries))
    tasks = []
    for i, part in enumerate(np.array_split(order, num_shards)):
        chosen = [entries[k] for k in part]
        tasks.append(
            ShardTask(
                path=os.path.join(output_dir, shard_name(split, i, num_shards)),
                entries=chosen,
                locations=[locations[e.image_id] for e in chosen],
                classes=[classes.get(e.image_id, -1) for e in chosen],
                options=options,
            )
        )
    return tasks


def _pool(num_workers: int):
    # spawn, not fork: TensorFlow's threads do not survive a fork.
    return multiprocessing.get_context("spawn").Pool(num_workers)


def _run_tasks(tasks: list[ShardTask], num_workers: int, show_progress: bool) -> list[ShardResult]:
    """Runs the shard tasks (in worker processes when num_workers > 1), in task order."""
    total = sum(len(t.entries) for t in tasks)
    # tqdm shows images/s and the ETA; with workers it advances a shard at a time.
    with tqdm(
        total=total, desc="TFRecords", unit="img", disable=not show_progress, smoothing=0.05
    ) as bar:
        if num_workers <= 1:
            return [write_shard(t, bar.update) for t in tasks]
        with _pool(num_workers) as pool:
            results = {}
            for res in pool.imap_unordered(write_shard, tasks):
                results[res.name] = res
                bar.update(len(res.landmark_ids) + len(res.skipped))
        return [results[os.path.basename(t.path)] for t in tasks]


# --------------------------------------------------------------------------- sources


def _list_split(
    data_dir: str, split: str, from_tars: bool, num_workers: int, show_progress: bool
) -> sources.Listing:
    """Everything a split's source holds (folder walk, or tar headers indexed in parallel)."""
    if not from_tars:
        return sources.list_folder(data_dir, split)
    tars = sources.tar_files(data_dir, split)
    if num_workers > 1 and len(tars) > 1:
        with _pool(min(num_workers, len(tars))) as pool:
            parts = list(
                tqdm(
                    pool.imap(sources.index_tar, tars),
                    total=len(tars),
                    desc=f"index {split} tars",
                    disable=not show_progress,
                )
            )
    else:
        parts = [
            sources.index_tar(t)
            for t in tqdm(tars, desc=f"index {split} tars", disable=not show_progress)
        ]
    locations: dict = {}
    stray: list[str] = []
    errors: list[tuple[str, str]] = []
    for part in parts:  # tar order is sorted, so a duplicate keeps its first copy
        for image_id, loc in part.locations.items():
            locations.setdefault(image_id, loc)
        stray += part.stray
        errors += part.errors
    return sources.Listing(locations, stray, errors)


def _match(
    split: str, ids: Sequence[str], listing: sources.Listing, skipped: list[dict]
) -> list[str]:
    """Ids that have an image, recording the others and the images without an id."""
    present = []
    for image_id in ids:
        if image_id in listing.locations:
            present.append(image_id)
        else:
            skipped.append(skip_record(split, image_id, "missing file"))
    wanted = set(ids)
    skipped += [
        skip_record(split, i, "no csv row") for i in sorted(listing.locations) if i not in wanted
    ]
    skipped += [
        skip_record(split, name, "stray file (not <16 hex id>.jpg)") for name in listing.stray
    ]
    skipped += [skip_record(split, where, reason) for where, reason in listing.errors]
    return present


# --------------------------------------------------------------------------- manifest


def _label_tables(train: dict[str, int], clean: set[str]) -> dict[str, list[int]]:
    clean_ids = sorted({train[i] for i in clean})
    # clean_classes_full: every train.csv image of a clean class (the 1st place's
    # extended retrieval index), labelled with the clean classes.
    return {
        "full": sorted(set(train.values())),
        "clean": clean_ids,
        "clean_classes_full": clean_ids,
    }


def _in_label_set(name: str, landmark_id: int, clean: bool, classes: dict[int, int]) -> bool:
    """Whether a train record belongs to label set `name` (see _label_tables)."""
    if name == "clean":
        return clean
    return landmark_id in classes


def _manifest(
    results: dict[str, list[ShardResult]],
    tables: dict[str, list[int]],
    folds: int,
    label_set: str,
    seed: int,
    options: EncodeOptions,
    skipped: list[dict],
) -> dict:
    splits = {}
    for split, shard_results in results.items():
        splits[split] = {
            "files": [r.name for r in shard_results],
            "num_examples": sum(len(r.landmark_ids) for r in shard_results),
            "shard_counts": [len(r.landmark_ids) for r in shard_results],
        }
    label_sets = {}
    shard_fold_counts = {}
    for name, landmark_ids in tables.items():
        index = {lm: i for i, lm in enumerate(landmark_ids)}
        class_counts = np.zeros(len(landmark_ids), np.int64)
        per_shard = []
        for r in results["train"]:
            keep = [
                _in_label_set(name, lm, c, index)
                for lm, c in zip(r.landmark_ids, r.clean, strict=True)
            ]
            lms = [lm for lm, k in zip(r.landmark_ids, keep, strict=True) if k]
            fls = [f for f, k in zip(r.folds, keep, strict=True) if k]
            np.add.at(class_counts, [index[lm] for lm in lms], 1)
            per_shard.append(np.bincount(np.asarray(fls, np.int64), minlength=folds).tolist())
        shard_fold_counts[name] = per_shard
        label_sets[name] = {
            "landmark_ids": landmark_ids,
            "class_counts": class_counts.tolist(),
            "fold_counts": np.sum(per_shard, axis=0, dtype=np.int64).reshape(-1).tolist()
            if per_shard
            else [0] * folds,
            "num_examples": int(class_counts.sum()),
            "num_empty_classes": int((class_counts == 0).sum()),
        }
    splits["train"]["shard_fold_counts"] = shard_fold_counts
    reencoded: collections.Counter[str] = collections.Counter()
    for r in (r for rs in results.values() for r in rs):
        skipped = skipped + r.skipped
        reencoded.update(r.reencoded)
    reasons = collections.Counter(s["reason"].split(":")[0] for s in skipped)
    return {
        "version": MANIFEST_VERSION,
        "label_set": label_set,
        "folds": folds,
        "seed": seed,
        "max_side": options.max_side,
        "jpeg_quality": options.jpeg_quality,
        "max_pixels": options.max_pixels,
        "min_examples_per_shard": MIN_EXAMPLES_PER_SHARD,
        "splits": splits,
        "label_sets": label_sets,
        "fold_counts": label_sets["full"]["fold_counts"],
        "skipped_counts": dict(sorted(reasons.items())),
        "reencoded": dict(sorted(reencoded.items())),
        "converted_to_rgb": sum(
            n
            for change, n in reencoded.items()
            if any(part.startswith("converted") for part in change.split("+"))
        ),
        "skipped": skipped,
    }


def _prepare_output(output_dir: str) -> None:
    """Creates output_dir (local or gs://), removes stale temporaries, checks it is writable."""
    import tensorflow as tf

    parts = os.path.join(output_dir, PARTS_DIR)
    try:
        tf.io.gfile.makedirs(parts)
        for d in (output_dir, parts):
            for name in tf.io.gfile.listdir(d):
                if ".tmp-" in name:  # left by a killed run
                    tf.io.gfile.remove(os.path.join(d, name))
        probe = os.path.join(output_dir, f".write-probe-{os.getpid()}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        raise BuildError(f"output dir {output_dir} is not writable: {message}") from None


def _write_outputs(
    output_dir: str,
    manifest: dict,
    results: dict[str, list[ShardResult]],
    tables: dict[str, list[int]],
    label_set: str,
) -> None:
    """TFDS metadata, then manifest.json last (its presence means the build is complete)."""
    from tfrecords_tools import tfds_metadata

    tfds_metadata.write_tfds_metadata(
        output_dir,
        splits={s: [len(r.landmark_ids) for r in rs] for s, rs in results.items()},
        num_bytes={s: sum(r.num_bytes for r in rs) for s, rs in results.items()},
        class_names=[str(lm) for lm in tables[label_set]],
        description=f"GLDv2 converted by tfrecords_tools.build_gldv2 (label_set "
        f"{label_set}); image/class indexes the {label_set} label set.",
    )
    _write_atomic(os.path.join(output_dir, MANIFEST_FILE), json.dumps(manifest, indent=1))


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
    from_tars: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict:
    """Converts GLDv2 to TFRecords + TFDS metadata + manifest.json; returns the manifest.

    The returned dict is manifest.json's content plus "_reused_shards": how many shards a
    previous (interrupted or finished) run had already completed with the same inputs.

    Args:
      data_dir: GLDv2 root (train.csv, train/a/b/c/<id>.jpg or train/*.tar, ...); local
        or any tf.io.gfile path.
      output_dir: where the shards and manifest.json go (created; local or gs://).
      num_shards: train shards; test/index get one per 256 images, at most num_shards.
      label_set: 'full' (train.csv) or 'clean' (train_clean.csv): whose contiguous
        class goes into image/class. Both tables are always in the manifest.
      folds: stratified folds by landmark id (image/fold).
      max_side: re-encode images whose longer side exceeds this many pixels.
      jpeg_quality: quality of re-encoded JPEGs.
      num_workers: processes writing shards in parallel (1 = in this process).
      seed: fold assignment and shard order are deterministic functions of it.
      show_progress: draw tqdm progress bars (images/s and ETA).
      from_tars: read images from `<split>/*.tar` instead of `<split>/a/b/c/<id>.jpg`.
      max_pixels: refuse larger images unless a JPEG decodes downscaled below it.

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
    if max_pixels < 1:
        raise BuildError(f"max_pixels must be >= 1, got {max_pixels}")
    if not fs.exists(data_dir):
        raise BuildError(f"data dir {data_dir} does not exist")

    train, skipped = read_train(data_dir)
    listings = {s: _list_split(data_dir, s, from_tars, num_workers, show_progress) for s in SPLITS}
    present = _match("train", sorted(train), listings["train"], skipped)
    if not present:
        where = "*.tar" if from_tars else "a/b/c/<id>.jpg"
        raise BuildError(f"no train images found under {os.path.join(data_dir, 'train', where)}")
    train = {i: train[i] for i in present}
    clean = read_clean(data_dir, train)
    if label_set == "clean" and not clean:
        raise BuildError(
            f"label_set 'clean' needs {os.path.join(data_dir, 'train_clean.csv')}"
            " listing train images"
        )
    tables = _label_tables(train, clean)
    fold_of = assign_folds(train, folds, seed)
    entries: dict[str, list[Entry]] = {
        "train": [Entry("train", i, lm, fold_of[i], i in clean) for i, lm in sorted(train.items())]
    }
    solution = read_test_landmarks(data_dir)
    for split in ("test", "index"):
        ids, bad = read_ids(data_dir, split)
        skipped += bad
        ids = _match(split, ids, listings[split], skipped)
        entries[split] = [
            Entry(split, i, solution.get(i, -1) if split == "test" else -1) for i in ids
        ]

    _prepare_output(output_dir)
    options = EncodeOptions(max_side=max_side, jpeg_quality=jpeg_quality, max_pixels=max_pixels)
    class_of = {lm: i for i, lm in enumerate(tables[label_set])}
    classes = {
        e.image_id: class_of[e.landmark_id]
        for e in entries["train"]
        if label_set == "full" or e.clean
    }
    tasks = {
        split: _shard_tasks(
            split,
            entries[split],
            listings[split].locations,
            classes if split == "train" else {},
            num_shards,
            seed,
            output_dir,
            options,
        )
        for split in SPLITS
    }
    flat = [t for split in SPLITS for t in tasks[split]]
    try:
        flat_results = _run_tasks(flat, num_workers, show_progress)
    except OSError as e:
        raise BuildError(f"cannot write shards to {output_dir}: {e}") from None
    results, k = {}, 0
    for split in SPLITS:
        results[split] = flat_results[k : k + len(tasks[split])]
        k += len(tasks[split])
    manifest = _manifest(results, tables, folds, label_set, seed, options, skipped)
    _write_outputs(output_dir, manifest, results, tables, label_set)
    manifest["_reused_shards"] = sum(r.reused for r in flat_results)  # not written to disk
    return manifest


def summary_line(manifest: dict) -> str:
    """One human line: examples per split, classes, skipped by reason, re-encoded."""
    counts = ", ".join(f"{s} {manifest['splits'][s]['num_examples']:,}" for s in SPLITS)
    classes = ", ".join(
        f"{n} {len(t['landmark_ids']):,}" for n, t in manifest["label_sets"].items()
    )
    skipped = ", ".join(f"{r} {n:,}" for r, n in manifest["skipped_counts"].items()) or "none"
    reenc = sum(manifest["reencoded"].values())
    return (
        f"converted {counts} images; classes {classes}; re-encoded {reenc:,}; "
        f"skipped {len(manifest['skipped']):,} ({skipped}); "
        f"{manifest.get('_reused_shards', 0)} shards reused"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="GLDv2 root with train.csv")
    parser.add_argument("--output_dir", required=True, help="local dir or gs://bucket/dir")
    parser.add_argument("--num_shards", type=int, default=8)
    parser.add_argument("--label_set", choices=LABEL_SETS, default="full")
    parser.add_argument(
        "--clean",
        dest="label_set",
        action="store_const",
        const="clean",
        help="shorthand for --label_set clean",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max_side", type=int, default=None)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores)",
    )
    parser.add_argument(
        "--from_tars",
        action="store_true",
        help="read <split>/*.tar (GLDv2's download format) in place",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = build_gldv2(
            args.data_dir,
            args.output_dir,
            num_shards=args.num_shards,
            label_set=args.label_set,
            folds=args.folds,
            max_side=args.max_side,
            jpeg_quality=args.jpeg_quality,
            num_workers=args.num_workers,
            seed=args.seed,
            show_progress=not args.no_progress,
            from_tars=args.from_tars,
            max_pixels=args.max_pixels,
        )
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_line(manifest), file=sys.stderr)
    counts = {s: manifest["splits"][s]["num_examples"] for s in SPLITS}
    print(
        json.dumps(
            {
                "output_dir": args.output_dir,
                "examples": counts,
                "classes": {n: len(t["landmark_ids"]) for n, t in manifest["label_sets"].items()},
                "skipped": len(manifest["skipped"]),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

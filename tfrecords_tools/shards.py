"""One TFRecord shard of the converter: its images, written atomically and resumably.

A shard's task names its examples and where their images are read; `write_shard`
encodes them (tfrecords_tools.images), writes `<name>.tmp-<pid>`, renames it when
complete, then writes a small record of its contents under `_parts/`. A rerun
reuses every shard whose record matches the same inputs (`ShardTask.fingerprint`),
so a killed build redoes only the shards it had not finished.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from tfrecords_tools import sources
from tfrecords_tools.gldv2_csv import skip_record
from tfrecords_tools.images import EncodeOptions, ImageError, encode_image

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only where records are written, so user mistakes are reported
# in a fraction of a second and without TF's start-up log lines.

PARTS_DIR = "_parts"
# Bumped whenever a shard's bytes for the same inputs would change: stale parts are redone.
CONVERTER_VERSION = 3
# test/index get one shard per this many images (at most num_shards), so small splits
# are not spread over many near-empty files.
MIN_EXAMPLES_PER_SHARD = 256
_SPLIT_SEED = {"train": 1, "test": 2, "index": 3}


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


def part_path(shard_path: str) -> str:
    return os.path.join(
        os.path.dirname(shard_path), PARTS_DIR, os.path.basename(shard_path) + ".json"
    )


def _load_part(task: ShardTask) -> ShardResult | None:
    """The record of a complete shard made from these inputs, or None (redo it)."""
    import tensorflow as tf

    part = part_path(task.path)
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


def write_atomic(path: str, text: str) -> None:
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
    write_atomic(part_path(task.path), json.dumps(record))
    return result


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_tasks(
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


def worker_pool(num_workers: int):
    # spawn, not fork: TensorFlow's threads do not survive a fork.
    return multiprocessing.get_context("spawn").Pool(num_workers)


def run_tasks(tasks: list[ShardTask], num_workers: int, show_progress: bool) -> list[ShardResult]:
    """Runs the shard tasks (in worker processes when num_workers > 1), in task order."""
    total = sum(len(t.entries) for t in tasks)
    # tqdm shows images/s and the ETA; with workers it advances a shard at a time.
    with tqdm(
        total=total, desc="TFRecords", unit="img", disable=not show_progress, smoothing=0.05
    ) as bar:
        if num_workers <= 1:
            return [write_shard(t, bar.update) for t in tasks]
        with worker_pool(num_workers) as pool:
            results = {}
            for res in pool.imap_unordered(write_shard, tasks):
                results[res.name] = res
                bar.update(len(res.landmark_ids) + len(res.skipped))
        return [results[os.path.basename(t.path)] for t in tasks]

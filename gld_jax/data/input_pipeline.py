"""tf.data input pipelines over the TFRecords of tfrecords_tools.build_gldv2.

(~460 lines: the two streams share their record reading, label tables and sharding.)

    train_dataset: infinite, shuffled, augmented batches {"image" uint8 [B,S,S,3],
        "label" int32 [B]} of this process's slice of the data; epoch-structured, so a
        resume at any step is exact; optional square-root / class-balanced sampling;
        JPEGs decoded at reduced DCT scale when the stage's images are small.
    eval_dataset: one pass, no augmentation, padded to whole batches with "mask";
        every process yields the same number of batches (multi-host jit needs that).
    num_examples / class_counts / landmark_ids: numbers from manifest.json
        (gld_jax.data.manifest, re-exported here).

Labels are contiguous classes of a label set ('full' = train.csv, 'clean' =
train_clean.csv): the landmark id of each record is looked up in the manifest's table,
so one set of shards serves every training stage. With 'clean', train records not in
train_clean.csv are dropped. Batch sizes are per process.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gld_jax.data import augment as augment_lib
from gld_jax.data.manifest import (  # noqa: F401  (re-exported: the pipeline's numbers)
    Manifest,
    check_split,
    class_counts,
    landmark_ids,
    num_examples,
    read_manifest,
)
from tfrecords_tools import features

READ_BUFFER_BYTES = 4 << 20  # per open shard file


# --------------------------------------------------------------------------- records


def _files(tfrecord_dir: str, manifest: Manifest, split: str) -> list[str]:
    return [os.path.join(tfrecord_dir, name) for name in manifest.files(split)]


def _read_records(path: tf.Tensor) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)


def _label_table(manifest: Manifest, label_set: str) -> tf.lookup.StaticHashTable:
    ids = manifest.landmark_ids(label_set).tolist()
    init = tf.lookup.KeyValueTensorInitializer(
        tf.constant(ids, tf.int64), tf.range(len(ids), dtype=tf.int64)
    )
    return tf.lookup.StaticHashTable(init, default_value=-1)


def _parser(table: tf.lookup.StaticHashTable):
    """Parses a serialized Example and adds "label": class of its landmark id or -1."""

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = tf.io.parse_single_example(serialized, features.FEATURE_SPEC)
        ex["label"] = table.lookup(ex[features.LANDMARK_ID])
        return ex

    return parse


def _selector(split: str, label_set: str, folds: list[int] | None):
    """Predicate on parsed records: in the label set (train) and in `folds`."""
    fold_list = tf.constant(folds if folds is not None else [], tf.int64)

    def keep(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        ok = tf.constant(True)
        if split == "train":
            ok = ex["label"] >= 0
            if label_set == "clean":
                ok = ok & tf.equal(ex[features.CLEAN], 1)
            if folds is not None:
                ok = ok & tf.reduce_any(tf.equal(ex[features.FOLD], fold_list))
        return ok

    return keep


def _shard_files(
    files: list[str], process_index: int, process_count: int
) -> tuple[list[str], bool]:
    """This process's files, and whether records must be sharded instead (too few files)."""
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )
    if len(files) >= process_count:
        return files[process_index::process_count], False
    return files, True


# --------------------------------------------------------------------------- train


def records_per_epoch(
    tfrecord_dir: str,
    *,
    label_set: str = "full",
    folds: Sequence[int] | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> int:
    """Training records process `process_index` reads in one epoch (from the manifest).

    Over all processes these add up to num_examples(tfrecord_dir, "train", ...): every
    record is read by exactly one process per epoch.
    """
    manifest = read_manifest(tfrecord_dir)
    manifest.check_label_set(label_set)
    fold_list = None if folds is None else manifest.check_folds(folds)
    files = _files(tfrecord_dir, manifest, "train")
    _, shard_records = _shard_files(files, process_index, process_count)
    counts = manifest.file_counts("train", label_set=label_set, folds=fold_list)
    if shard_records:
        return len(range(process_index, sum(counts), process_count))
    return sum(counts[process_index::process_count])


def sampling_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Expected copies per epoch of one image of each class, float64 [num_classes].

    Class c (n_c images) is then drawn with probability proportional to n_c ** power
    (power 1: as stored, 0.5: square-root sampling, 0: class-balanced) while the
    expected epoch size stays sum(n): w_c = N * n_c ** (power - 1) / sum_c n_c ** power.
    Empty classes get weight 0.
    """
    n = np.asarray(counts, np.float64)
    present = n > 0
    w = np.zeros_like(n)
    w[present] = n.sum() * n[present] ** (power - 1.0) / np.sum(n[present] ** power)
    return w


SAMPLING_POWERS = {"uniform": 1.0, "sqrt": 0.5, "balanced": 0.0}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How the training stream reads, samples and augments: what holds for a whole
    run, where a stage sets only image_size, batch_size, label_set and seed.

    Attributes:
      folds: folds to train on (None = all).
      augment: recipe augmentations (augment_lib.AugmentConfig) or plain resize.
      augment_config: overrides the default augmentation parameters.
      host_geometric: with `augment`, also flip, shift-scale-rotate and cut out here;
        False leaves those to the train step (`input.augment_on=device`) and the
        host only decodes, crops and resizes.
      shuffle_buffer: records in the shuffle buffer (of encoded JPEGs).
      deterministic: True: the same batches on every run (resume is exact). False: the
        fast mode, parallel stages may reorder elements (resume then only approximate).
      dct_scaling: decode JPEGs at 1/2, 1/4 or 1/8 scale when the source (or its crop)
        is at least 2x, 4x, 8x image_size.
      sampling: 'uniform' (each image once per epoch), 'sqrt' (class c drawn with
        probability proportional to sqrt(n_c)) or 'balanced' (every class equally):
        images are repeated floor(w_c) or ceil(w_c) times per epoch
        (sampling_weights; the expected epoch size is unchanged).
    """

    folds: Sequence[int] | None = None
    augment: bool = True
    augment_config: augment_lib.AugmentConfig | None = None
    host_geometric: bool = True
    shuffle_buffer: int = 2048
    deterministic: bool = True
    dct_scaling: bool = True
    sampling: str = "uniform"


def train_dataset(
    tfrecord_dir: str,
    *,
    image_size: int,
    batch_size: int,
    label_set: str = "full",
    seed: int = 0,
    skip_batches: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    options: TrainOptions | None = None,
) -> tf.data.Dataset:
    """Infinite training batches for this process.

    The stream is a sequence of epochs; epoch e reads this process's files in an order
    shuffled with (seed, e), shuffles records within the epoch with (seed, e) and
    augments record i of the stream with (seed, process, i). Every record of the
    selection is read by exactly one process in every epoch (records_per_epoch).

    Args:
      tfrecord_dir: output of tfrecords_tools.build_gldv2.
      image_size: side S of the square images in pixels.
      batch_size: examples per batch on this process (per-process, not global).
      label_set: 'full' or 'clean'; labels are contiguous classes of that set.
      seed: file order, record shuffle and augmentation are deterministic in it.
      skip_batches: start after this many batches (resume): the same batches as
        `.skip(skip_batches)` on the dataset. With sampling 'uniform' whole epochs are
        skipped arithmetically and only the records of the current epoch before the
        resume point are read (not decoded); with other samplings the epochs' lengths
        vary, so the skipped records are read (not decoded) from the start.
      process_index, process_count: this process reads a disjoint slice: whole files
        when there are at least process_count files, else every process_count-th record.
      options: the run-wide settings (TrainOptions; None: its defaults).

    Returns:
      Dataset of {"image": uint8 [B, S, S, 3], "label": int32 [B]}, drop_remainder.

    Raises:
      ValueError: bad arguments, or no training record for this process.
    """
    options = options or TrainOptions()
    folds, sampling, deterministic = options.folds, options.sampling, options.deterministic
    manifest = read_manifest(tfrecord_dir)
    manifest.check_label_set(label_set)
    if image_size < 1 or batch_size < 1 or skip_batches < 0:
        raise ValueError(
            f"need image_size, batch_size >= 1 and skip_batches >= 0, got "
            f"{image_size}, {batch_size}, {skip_batches}"
        )
    if sampling not in SAMPLING_POWERS:
        raise ValueError(f"sampling must be one of {sorted(SAMPLING_POWERS)}, got {sampling!r}")
    fold_list = None if folds is None else manifest.check_folds(folds)
    files = _files(tfrecord_dir, manifest, "train")
    my_files, shard_records = _shard_files(files, process_index, process_count)
    mine = records_per_epoch(
        tfrecord_dir,
        label_set=label_set,
        folds=fold_list,
        process_index=process_index,
        process_count=process_count,
    )
    if mine == 0:  # an infinite stream over nothing would hang, not fail
        raise ValueError(
            f"no training records for label_set={label_set!r}, folds={folds} "
            f"on process {process_index} of {process_count} in {tfrecord_dir}"
        )
    config = options.augment_config or augment_lib.AugmentConfig()
    parse = _parser(_label_table(manifest, label_set))
    keep = _selector("train", label_set, fold_list)
    weights = None
    if sampling != "uniform":
        counts = manifest.class_counts(label_set)
        weights = tf.constant(
            sampling_weights(np.asarray(counts), SAMPLING_POWERS[sampling]), tf.float32
        )
    files_t = tf.constant(my_files, tf.string)

    def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
        """The records of one epoch, in the order (seed, epoch) decides."""
        epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + epoch
        ds = tf.data.Dataset.from_tensor_slices(files_t)
        if shard_records:
            # Fewer files than processes (tiny data): every process reads all files in
            # one fixed order and keeps every process_count-th selected record.
            ds = ds.interleave(_read_records, cycle_length=len(my_files), block_length=1)
            ds = ds.map(parse).filter(keep).shard(process_count, process_index)
        else:
            ds = ds.shuffle(len(my_files), seed=epoch_seed)
            ds = ds.interleave(
                _read_records,
                cycle_length=min(len(my_files), 16),
                block_length=1,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic,
            )
            ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
            ds = ds.filter(keep)
        if weights is not None:
            ds = ds.flat_map(
                lambda ex: tf.data.Dataset.from_tensors(ex).repeat(
                    _copies(ex, weights, epoch_seed, process_index)
                )
            )
        return ds.shuffle(options.shuffle_buffer, seed=epoch_seed * 7919 + process_index)

    first = skip_batches * batch_size
    start_epoch, within = divmod(first, mine) if weights is None else (0, first)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records)
    ds = ds.skip(within)  # before decoding: skipped records cost a read and a parse
    ds = ds.enumerate(start=first)

    def prepare(i: tf.Tensor, ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if options.augment:
            elem_seed = tf.stack([tf.constant(seed, tf.int64) * 65537 + process_index, i])
            image = augment_lib.augment_train_image(
                ex[features.ENCODED],
                ex[features.HEIGHT],
                ex[features.WIDTH],
                elem_seed,
                image_size,
                config,
                dct_scaling=options.dct_scaling,
                geometric=options.host_geometric,
            )
        else:
            image = augment_lib.decode_eval_image(
                ex[features.ENCODED], image_size, dct_scaling=options.dct_scaling
            )
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True)
    if not deterministic:
        options = tf.data.Options()
        options.deterministic = False
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def _copies(
    ex: dict[str, tf.Tensor], weights: tf.Tensor, epoch_seed: tf.Tensor, process_index: int
) -> tf.Tensor:
    """floor(w) or ceil(w) copies of a record (w = its class weight), E[copies] = w.

    The coin is a stateless function of (record id, epoch seed), so reruns agree.
    """
    w = tf.gather(weights, ex["label"])
    base = tf.floor(w)
    key = tf.strings.to_hash_bucket_fast(ex[features.ID], 2**62)
    u = tf.random.stateless_uniform([], tf.stack([key, epoch_seed * 31 + process_index]))
    return tf.cast(base, tf.int64) + tf.cast(u < w - base, tf.int64)


# --------------------------------------------------------------------------- eval


def eval_num_batches(
    tfrecord_dir: str,
    *,
    split: str,
    batch_size: int,
    label_set: str = "full",
    fold: int | None = None,
    every: int = 1,
    process_count: int = 1,
) -> int:
    """Batches eval_dataset yields on every process (the same on all of them)."""
    manifest = read_manifest(tfrecord_dir)
    counts = manifest.file_counts(
        split, label_set=label_set, folds=None if fold is None else [fold], every=every
    )
    if len(counts) >= process_count:
        largest = max(sum(counts[p::process_count]) for p in range(process_count))
    else:
        largest = math.ceil(sum(counts) / process_count)
    return math.ceil(largest / batch_size)


def eval_dataset(
    tfrecord_dir: str,
    *,
    split: str,
    image_size: int,
    batch_size: int,
    label_set: str = "full",
    fold: int | None = None,
    every: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    dct_scaling: bool = True,
) -> tf.data.Dataset:
    """One deterministic pass over this process's slice of a split, padded to whole batches.

    Args:
      tfrecord_dir: output of tfrecords_tools.build_gldv2.
      split: 'train', 'test' or 'index'.
      image_size: side S of the square images in pixels (plain resize, no crop).
      batch_size: examples per batch on this process.
      label_set: table for "label"; on train also keeps only that set's records.
      fold: train only: keep only this fold (validation).
      every: keep the every-th selected record of each shard file, in file order
        (the recipe validates on every 15th image of the held-out fold).
      process_index, process_count: disjoint slices whose union is the whole selection.
      dct_scaling: decode sources at least 2x image_size at reduced JPEG scale.

    Returns:
      Finite dataset of {"image": uint8 [B,S,S,3], "id": string [B], "landmark_id":
      int64 [B] (-1 none), "label": int32 [B] (-1 not in label_set), "fold": int64 [B]
      (-1 for test/index), "mask": bool [B]}; padding examples have mask False, id "",
      landmark_id/label/fold -1 and zero images. Every process
      yields eval_num_batches(...) batches; len(dataset) is known.
    """
    manifest = read_manifest(tfrecord_dir)
    check_split(split)
    manifest.check_label_set(label_set)
    if every < 1 or image_size < 1 or batch_size < 1:
        raise ValueError("every, image_size and batch_size must be >= 1")
    if fold is not None and split != "train":
        raise ValueError(f"fold selects validation images of train, not of {split!r}")
    fold_list = None if fold is None else manifest.check_folds([fold])
    files = _files(tfrecord_dir, manifest, split)
    my_files, shard_records = _shard_files(files, process_index, process_count)
    counts = manifest.file_counts(split, label_set=label_set, folds=fold_list, every=every)
    if shard_records:
        mine = len(range(process_index, sum(counts), process_count))
    else:
        mine = sum(counts[process_index::process_count])
    num_batches = eval_num_batches(
        tfrecord_dir,
        split=split,
        batch_size=batch_size,
        label_set=label_set,
        fold=fold,
        every=every,
        process_count=process_count,
    )
    table = _label_table(manifest, label_set)
    parse = _parser(table)
    keep = _selector(split, label_set, fold_list)

    def read_file(path: tf.Tensor) -> tf.data.Dataset:
        # every-th is counted per file so it does not depend on how files are dealt out.
        ds = _read_records(path).map(parse).filter(keep).enumerate()
        return ds.filter(lambda i, ex: i % every == 0).map(lambda i, ex: ex)

    def prepare(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "image": augment_lib.decode_eval_image(
                ex[features.ENCODED], image_size, dct_scaling=dct_scaling
            ),
            "id": ex[features.ID],
            "landmark_id": ex[features.LANDMARK_ID],
            "label": tf.cast(ex["label"], tf.int32),
            "fold": ex[features.FOLD],
            "mask": tf.constant(True),
        }

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(my_files, tf.string))
    ds = ds.interleave(
        read_file,
        cycle_length=max(1, min(len(my_files), 8)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shard_records:
        ds = ds.shard(process_count, process_index)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = {
        "image": tf.zeros([image_size, image_size, 3], tf.uint8),
        "id": tf.constant(b""),
        "landmark_id": tf.constant(-1, tf.int64),
        "label": tf.constant(-1, tf.int32),
        "fold": tf.constant(-1, tf.int64),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * batch_size - mine))
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    return ds.prefetch(tf.data.AUTOTUNE)

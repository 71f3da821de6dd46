"""Converts GLDv2 (the folder or its tar shards + CSVs) into sharded TFRecords.

    python -m tfrecords_tools.build_gldv2 --data_dir /data/gldv2 --output_dir /data/gld_tfr \
        --num_shards 512 --folds 5 --max_side 1024            # add --from_tars for tars

The build: list the sources, match them to the CSVs (tfrecords_tools/gldv2_csv.py),
deal the images into shards written in parallel and resumably
(tfrecords_tools/shards.py, encoding by tfrecords_tools/images.py), then the
manifest (tfrecords_tools/build_manifest.py).

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
import json
import os
import sys
from collections.abc import Sequence

from tqdm import tqdm

from gld_jax.data.manifest import MANIFEST_FILE, SPLITS
from gld_jax.utils import fs
from gld_jax.utils.cli import quiet_tensorflow
from tfrecords_tools import sources
from tfrecords_tools.build_manifest import build_manifest, label_tables
from tfrecords_tools.gldv2_csv import (
    BuildError,
    assign_folds,
    read_clean,
    read_ids,
    read_test_landmarks,
    read_train,
    skip_record,
)
from tfrecords_tools.images import DEFAULT_MAX_PIXELS, EncodeOptions
from tfrecords_tools.shards import (
    PARTS_DIR,
    Entry,
    ShardResult,
    run_tasks,
    shard_tasks,
    worker_pool,
    write_atomic,
)

# TensorFlow is imported only once the inputs are checked, by the functions that touch
# the output (_prepare_output here, tfrecords_tools.shards), so user mistakes are
# reported in a fraction of a second and without TF's start-up lines.

LABEL_SETS = ("full", "clean")


# --------------------------------------------------------------------------- sources


def _list_split(
    data_dir: str, split: str, from_tars: bool, num_workers: int, show_progress: bool
) -> sources.Listing:
    """Everything a split's source holds (folder walk, or tar headers indexed in parallel)."""
    if not from_tars:
        return sources.list_folder(data_dir, split)
    tars = sources.tar_files(data_dir, split)
    if num_workers > 1 and len(tars) > 1:
        with worker_pool(min(num_workers, len(tars))) as pool:
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
    write_atomic(os.path.join(output_dir, MANIFEST_FILE), json.dumps(manifest, indent=1))


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
    tables = label_tables(train, clean)
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
        split: shard_tasks(
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
        flat_results = run_tasks(flat, num_workers, show_progress)
    except OSError as e:
        raise BuildError(f"cannot write shards to {output_dir}: {e}") from None
    results, k = {}, 0
    for split in SPLITS:
        results[split] = flat_results[k : k + len(tasks[split])]
        k += len(tasks[split])
    manifest = build_manifest(results, tables, folds, label_set, seed, options, skipped)
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

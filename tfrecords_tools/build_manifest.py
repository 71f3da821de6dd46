"""manifest.json's content: what the converter wrote, counted per split, label set,
shard and fold, so a run plans its stages without opening a shard.

The format is gld_jax.data.manifest's (the reader, which names the file and
its version); this module only builds it from the shards' results.
"""

from __future__ import annotations

import collections

import numpy as np

from gld_jax.data.manifest import SUPPORTED_VERSION
from tfrecords_tools.images import EncodeOptions
from tfrecords_tools.shards import MIN_EXAMPLES_PER_SHARD, ShardResult


def label_tables(train: dict[str, int], clean: set[str]) -> dict[str, list[int]]:
    clean_ids = sorted({train[i] for i in clean})
    # clean_classes_full: every train.csv image of a clean class (the 1st place's
    # extended retrieval index), labelled with the clean classes.
    return {
        "full": sorted(set(train.values())),
        "clean": clean_ids,
        "clean_classes_full": clean_ids,
    }


def _in_label_set(name: str, landmark_id: int, clean: bool, classes: dict[int, int]) -> bool:
    """Whether a train record belongs to label set `name` (see label_tables)."""
    if name == "clean":
        return clean
    return landmark_id in classes


def build_manifest(
    results: dict[str, list[ShardResult]],
    tables: dict[str, list[int]],
    folds: int,
    label_set: str,
    seed: int,
    options: EncodeOptions,
    skipped: list[dict],
) -> dict:
    """manifest.json's content (gld_jax.data.manifest reads it) from the shards'
    results per split, the label tables and the images skipped before writing."""
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
        "version": SUPPORTED_VERSION,
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

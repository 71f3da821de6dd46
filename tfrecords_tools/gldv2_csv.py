"""GLDv2's CSV files, read for the converter: train.csv (id -> landmark),
train_clean.csv (the clean ids), test.csv / index.csv (ids), the recognition
solution (test id -> landmark), and the stratified folds of the training ids.

Every problem a user can cause (a missing file, a missing column, a malformed
line) is either a one-line BuildError or a recorded skip, never a traceback.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np

from gld_jax.utils import fs
from tfrecords_tools import sources

SOLUTION_FILE = "recognition_solution_v2.1.csv"
_FOLD_SEED = 7


class BuildError(Exception):
    """A user mistake (missing CSV, no images, bad output dir): reported as one line."""


def skip_record(split: str, image_id: str, reason: str) -> dict:
    return {"split": split, "id": image_id, "reason": reason}


def _read_csv(
    path: str, columns: Sequence[str], skipped: list[dict], split: str
) -> Iterator[dict[str, str]]:
    """Streams the rows of a CSV that must have `columns` in its header.

    Rows the csv module cannot parse (NUL bytes, runaway quotes) are recorded in
    `skipped` as 'malformed csv line N'; undecodable UTF-8 becomes U+FFFD (and then
    fails the id check). Raises BuildError if the file or a column is missing.
    """
    if not fs.exists(path):
        raise BuildError(f"{path} not found")
    with fs.open_file(path, "rb") as raw:
        if fs.is_remote(path):  # GFile lacks the io.RawIOBase methods TextIOWrapper uses
            raw = io.BytesIO(raw.read())
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        reader = csv.DictReader(text)
        try:
            fieldnames = reader.fieldnames or []
        except csv.Error as e:
            raise BuildError(f"{path}: unreadable header: {e}") from None
        missing = [c for c in columns if c not in fieldnames]
        if missing:
            raise BuildError(f"{path}: missing column(s) {', '.join(missing)}")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                skipped.append(skip_record(split, "", f"malformed csv line {reader.line_num}: {e}"))
                continue
            yield row


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    return value.strip() if isinstance(value, str) else ""


def read_train(data_dir: str) -> tuple[dict[str, int], list[dict]]:
    """train.csv as {id: landmark_id} and a skip list for unusable rows."""
    path = os.path.join(data_dir, "train.csv")
    labels: dict[str, int] = {}
    skipped: list[dict] = []
    for row in _read_csv(path, ["id", "landmark_id"], skipped, "train"):
        image_id = _cell(row, "id")
        try:
            landmark = int(_cell(row, "landmark_id"))
        except ValueError:
            landmark = -1
        if not sources.valid_id(image_id):
            skipped.append(skip_record("train", image_id, "bad id (not 16 hex digits)"))
        elif landmark < 0 or None in row:  # None key: more cells than columns
            skipped.append(skip_record("train", image_id, "bad csv row"))
        elif image_id in labels:
            skipped.append(skip_record("train", image_id, "duplicate id"))
        else:
            labels[image_id] = landmark
    if not labels:
        raise BuildError(f"{path} has no usable rows")
    return labels, skipped


def read_clean(data_dir: str, train_labels: dict[str, int]) -> set[str]:
    """Ids listed in train_clean.csv under the same landmark as in train.csv (empty if absent)."""
    path = os.path.join(data_dir, "train_clean.csv")
    if not fs.exists(path):
        return set()
    clean = set()
    for row in _read_csv(path, ["landmark_id", "images"], [], "train"):
        try:
            landmark = int(_cell(row, "landmark_id"))
        except ValueError:
            continue
        # An id listed under another landmark than train.csv's would get two labels.
        clean.update(i for i in _cell(row, "images").split() if train_labels.get(i) == landmark)
    return clean


def read_ids(data_dir: str, split: str) -> tuple[list[str], list[dict]]:
    """Ids of test.csv / index.csv (an absent CSV means an empty split) and bad rows."""
    path = os.path.join(data_dir, f"{split}.csv")
    if not fs.exists(path):
        return [], []
    ids: list[str] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for row in _read_csv(path, ["id"], skipped, split):
        image_id = _cell(row, "id")
        if not sources.valid_id(image_id):
            skipped.append(skip_record(split, image_id, "bad id (not 16 hex digits)"))
        elif image_id in seen:
            skipped.append(skip_record(split, image_id, "duplicate id"))
        else:
            seen.add(image_id)
            ids.append(image_id)
    return ids, skipped


def read_test_landmarks(data_dir: str) -> dict[str, int]:
    """Test id -> landmark id from the recognition solution (its first landmark; a
    non-landmark image is absent). Not metrics.read_solution, which keeps every
    landmark and the Usage."""
    path = os.path.join(data_dir, SOLUTION_FILE)
    if not fs.exists(path):
        return {}
    out = {}
    for row in _read_csv(path, ["id", "landmarks"], [], "test"):
        parts = _cell(row, "landmarks").split()
        if parts and parts[0].lstrip("-").isdigit():
            out[_cell(row, "id")] = int(parts[0])
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

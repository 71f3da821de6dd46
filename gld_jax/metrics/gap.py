"""Global Average Precision (GAP), the Google Landmark Recognition metric.

Kaggle's micro-AP over one prediction per query image::

    GAP = (1 / M) * sum_{i=1..P} precision(i) * rel(i)

Predictions are sorted by confidence, descending. ``precision(i)`` is the
fraction of correct predictions among the first ``i`` of *all* predictions,
including those made on non-landmark images (which are never correct), so
confident predictions on non-landmarks cost precision. ``M`` counts the query
images with at least one true landmark, whether or not they got a prediction.

CLI::

    python -m gld_jax.metrics.gap --submission submission.csv \
        --solution recognition_solution_v2.1.csv

Plain Python; no numpy or TensorFlow needed.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from gld_jax.utils import fs

__all__ = [
    "gap_by_usage",
    "global_average_precision",
    "main",
    "read_solution",
    "read_submission",
    "solution_has_usage",
]

_USAGES = ("Public", "Private", "Ignored")


def global_average_precision(
    predictions: Mapping[str, tuple[int, float]],
    solution: Mapping[str, Collection[int]],
) -> float:
    """Kaggle GAP of one ``(landmark_id, confidence)`` prediction per image.

    Rules (the Kaggle / DELF ``metrics.GlobalAveragePrecision`` convention):

    * predictions for ids not in ``solution`` are ignored (e.g. rows scored in
      another Usage split);
    * an image whose true set is empty is a non-landmark: a prediction on it
      counts in the precision denominator but is never relevant;
    * ``M`` = images in ``solution`` with a non-empty true set;
    * equal confidences are ordered by image id, ascending (as Kaggle does), so
      the score never depends on dict order;
    * ``M == 0`` returns 0.0: nothing can be retrieved, so no credit (rather
      than NaN, so a validation split without landmarks does not poison logs).

    Args:
      predictions: image id -> (predicted landmark id, confidence).
      solution: image id -> true landmark ids (empty for non-landmarks).

    Returns:
      GAP in [0, 1].
    """
    num_landmark_images = sum(1 for truth in solution.values() if truth)
    if num_landmark_images == 0:
        return 0.0
    scored = [(image_id, pred) for image_id, pred in predictions.items() if image_id in solution]
    scored.sort(key=lambda item: (-float(item[1][1]), item[0]))
    total, correct = 0.0, 0
    for rank, (image_id, (label, _)) in enumerate(scored, start=1):
        if int(label) in solution[image_id]:
            correct += 1
            total += correct / rank
    return total / num_landmark_images


def _read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and the non-empty rows (with their 1-based line numbers) of a CSV."""
    with fs.open_file(str(path)) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a CSV header)")
        rows = [(reader.line_num, row) for row in reader if row]
    return [h.strip() for h in header], rows


def _read_solution_rows(path: str | Path) -> tuple[list[tuple[str, set[int], str | None]], bool]:
    """All rows of a solution CSV as (id, landmarks, usage) and whether it has Usage."""
    header, csv_rows = _read_csv(path)
    if header not in (["id", "landmarks"], ["id", "landmarks", "Usage"]):
        raise ValueError(f"{path}: header must be 'id,landmarks[,Usage]', got {','.join(header)!r}")
    has_usage = len(header) == 3
    rows, seen = [], set()
    for line_no, row in csv_rows:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: expected {len(header)} fields, got {len(row)}")
        image_id = row[0].strip()
        if not image_id or image_id in seen:
            raise ValueError(f"{path}:{line_no}: empty or repeated id {image_id!r}")
        seen.add(image_id)
        try:
            landmarks = {int(tok) for tok in row[1].split()}
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: landmarks must be space-separated integers, got {row[1]!r}"
            ) from None
        usage = row[2].strip() if has_usage else None
        if has_usage and usage not in _USAGES:
            raise ValueError(f"{path}:{line_no}: Usage must be one of {_USAGES}, got {usage!r}")
        rows.append((image_id, landmarks, usage))
    return rows, has_usage


def read_solution(path: str | Path, usage: str | None = None) -> dict[str, set[int]]:
    """Read a recognition solution CSV (``recognition_solution_v2.1.csv``).

    Columns ``id,landmarks[,Usage]``; ``landmarks`` holds space-separated
    landmark ids, empty for a non-landmark image. Rows whose Usage is
    ``Ignored`` are never scored (as in the competition) unless asked for.

    Args:
      path: CSV file.
      usage: ``None`` for every scored row (Public and Private), or one of
        ``"Public"``, ``"Private"``, ``"Ignored"`` to keep only those rows
        (needs a Usage column).

    Returns:
      image id -> set of true landmark ids (empty set = non-landmark).

    Raises:
      OSError: the file cannot be read.
      ValueError: malformed header or row, repeated id, unknown Usage.
    """
    if usage is not None and usage not in _USAGES:
        raise ValueError(f"usage must be one of {_USAGES} or None, got {usage!r}")
    rows, has_usage = _read_solution_rows(path)
    if usage is not None and not has_usage:
        raise ValueError(f"{path}: no Usage column, cannot select usage={usage!r}")
    if usage is None:
        return {i: lm for i, lm, u in rows if u != "Ignored"}
    return {i: lm for i, lm, u in rows if u == usage}


def solution_has_usage(path: str | Path) -> bool:
    """Whether a solution CSV has the Usage column (Public/Private/Ignored rows);
    a user's own held-out solution often has only ``id,landmarks``.

    Raises:
      OSError: the file cannot be read.
      ValueError: malformed header or row.
    """
    return _read_solution_rows(path)[1]


def _scores(
    predictions: Mapping[str, tuple[int, float]],
    rows: list[tuple[str, set[int], str | None]],
    has_usage: bool,
) -> dict[str, float]:
    scores = {
        "GAP": global_average_precision(predictions, {i: lm for i, lm, u in rows if u != "Ignored"})
    }
    if has_usage:
        for usage in ("Public", "Private"):
            split = {i: lm for i, lm, u in rows if u == usage}
            scores[f"GAP/{usage}"] = global_average_precision(predictions, split)
    return scores


def gap_by_usage(
    predictions: Mapping[str, tuple[int, float]], solution_path: str | Path
) -> dict[str, float]:
    """GAP over every scored row ("GAP": Public + Private, Ignored rows left out)
    and, when the solution CSV has a Usage column, "GAP/Public" and
    "GAP/Private". The one place the pipeline, the evaluation CLIs and the
    report score a submission; `solution_path` may be local or gs://.

    Raises:
      OSError: the file cannot be read.
      ValueError: malformed header or row, repeated id, unknown Usage.
    """
    return _scores(predictions, *_read_solution_rows(solution_path))


def read_submission(path: str | Path) -> dict[str, tuple[int, float]]:
    """Read a Kaggle recognition submission (``id,landmarks``).

    ``landmarks`` is ``"<landmark_id> <confidence>"``, or empty for no
    prediction (such rows are left out of the result).

    Args:
      path: CSV file.

    Returns:
      image id -> (landmark id, confidence).

    Raises:
      OSError: the file cannot be read.
      ValueError: malformed header or row, repeated id, non-finite confidence.
    """
    header, csv_rows = _read_csv(path)
    if header != ["id", "landmarks"]:
        raise ValueError(f"{path}: header must be 'id,landmarks', got {','.join(header)!r}")
    predictions: dict[str, tuple[int, float]] = {}
    seen: set[str] = set()
    for line_no, row in csv_rows:
        if len(row) != 2:
            raise ValueError(f"{path}:{line_no}: expected 2 fields, got {len(row)}")
        image_id, value = row[0].strip(), row[1].split()
        if not image_id or image_id in seen:
            raise ValueError(f"{path}:{line_no}: empty or repeated id {image_id!r}")
        seen.add(image_id)
        if not value:
            continue
        try:
            if len(value) != 2:
                raise ValueError
            label, confidence = int(value[0]), float(value[1])
            if not math.isfinite(confidence):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: expected '<landmark_id> <confidence>', got {row[1]!r}"
            ) from None
        predictions[image_id] = (label, confidence)
    return predictions


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print GAP (and GAP/Public, GAP/Private with a Usage column)."""
    parser = argparse.ArgumentParser(
        prog="python -m gld_jax.metrics.gap",
        description="Global Average Precision of a Kaggle landmark recognition submission.",
    )
    parser.add_argument("--submission", required=True, help="CSV id,landmarks ('<id> <conf>')")
    parser.add_argument("--solution", required=True, help="CSV id,landmarks[,Usage]")
    args = parser.parse_args(argv)
    try:
        predictions = read_submission(args.submission)
        rows, has_usage = _read_solution_rows(args.solution)
    except (ValueError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except fs.path_errors() as err:
        print(f"error: {fs.error_line(err)}", file=sys.stderr)
        return 2
    known = {i for i, _, _ in rows}
    unknown = sum(1 for i in predictions if i not in known)
    if unknown:
        print(f"warning: {unknown} submission ids not in the solution, ignored", file=sys.stderr)
    for name, value in _scores(predictions, rows, has_usage).items():
        print(f"{name} {value:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

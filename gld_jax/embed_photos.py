"""Photo files through one finished run or an ensemble's runs: each file read
once, prepared at every run's final image size (gld_jax.data.photos), batched
through each run's jitted embedding step on its mesh, with one progress bar.

A file that cannot be used is reported through `on_error` and skipped; the
rest go on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from gld_jax.data.photo_files import image_id
from gld_jax.data.photos import load_photos
from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.ensemble import combine_embedding_sets
from gld_jax.trained_run import TrainedRun
from gld_jax.utils.progress import progress_bar


@dataclasses.dataclass
class EmbeddedPhotos:
    """The files that were embedded, in input order, and one set per run.

    Each set's ids are the files' image ids (names without suffix, GLDv2's
    ids), labels -1 (unknown), embeddings `[N, D_m]` in the run's
    `eval.embedding_dtype` (as its stored sets hold them) with the head's top-k
    lists. `failed` holds (path, reason) of the files skipped."""

    paths: list[str]
    sets: list[EmbeddingSet]
    failed: list[tuple[str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.paths) / max(self.seconds, 1e-9)

    def combined(
        self, weights: Sequence[float], means: Sequence[np.ndarray] | None = None
    ) -> EmbeddingSet:
        """The ensemble's rows: the weighted, normalised concatenation of the
        runs' rows with merged head lists (gld_jax.retrieval.ensemble), as the
        ensemble's search sees its test set; one run without means is its set
        as it is."""
        if len(self.sets) == 1 and means is None:
            return self.sets[0]
        # Rows are aligned by id: positions, since two files may share a name.
        rows = [str(i) for i in range(len(self.paths))]
        combined = combine_embedding_sets(
            [dataclasses.replace(s, ids=np.asarray(rows)) for s in self.sets], weights, means
        )
        return dataclasses.replace(combined, ids=self.sets[0].ids)


def batch_size_for(runs: Sequence[TrainedRun], requested: int | None = None) -> int:
    """Images per step: `requested` or the first run's `eval.batch_size`, rounded
    down to a multiple of the local device count (at least one per device)."""
    n = jax.local_device_count()
    size = requested or runs[0].config.eval.batch_size
    return max(n, (size // n) * n)


def embed_photos(
    runs: Sequence[TrainedRun],
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    desc: str = "embed",
    show_progress: bool = True,
) -> EmbeddedPhotos:
    """Embeds every usable file with every run.

    Args:
      runs: one run, or an ensemble's runs (each its own size and model).
      paths: image files (local or remote).
      batch_size: images per step (see :func:`batch_size_for`).
      on_error: called with (path, reason) for each file skipped.
      desc: the progress bar's label.

    Returns:
      An :class:`EmbeddedPhotos`.
    """
    size = batch_size_for(runs, batch_size)
    embedders = [run.embedder() for run in runs]
    preprocessors = [run.preprocessor() for run in runs]
    dtypes = [np.dtype(run.config.eval.get("embedding_dtype", "float32")) for run in runs]
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in runs]
    pending: list[list[np.ndarray]] = []

    def flush() -> None:
        for m, embedder in enumerate(embedders):
            batch = np.zeros((size, runs[m].image_size, runs[m].image_size, 3), np.uint8)
            batch[: len(pending)] = [images[m] for images in pending]
            emb, head_labels, head_scores = embedder.embed_batch(batch)
            n = len(pending)
            parts[m].setdefault("emb", []).append(emb[:n].astype(dtypes[m]))
            if head_labels is not None:  # eval.head_top_k > 0
                parts[m].setdefault("head_labels", []).append(head_labels[:n])
                parts[m].setdefault("head_scores", []).append(head_scores[:n])
        pending.clear()

    t0 = time.perf_counter()
    bar = progress_bar(total=len(paths), desc=desc, unit="img", enabled=show_progress)
    for photo in load_photos(paths, preprocessors):
        if photo.error:
            failed.append((photo.path, photo.error))
            on_error(photo.path, photo.error)
        else:
            done.append(photo.path)
            pending.append(photo.images)
            if len(pending) == size:
                flush()
        bar.update(1)
    if pending:
        flush()
    bar.close()
    seconds = time.perf_counter() - t0
    ids = np.asarray([image_id(p) for p in done], dtype=str)
    sets = []
    for m, run in enumerate(runs):
        cols = {k: np.concatenate(v) for k, v in parts[m].items()}
        k = min(run.config.eval.head_top_k, run.model.head.num_classes)
        empty_head = (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        head = (cols.get("head_labels"), cols.get("head_scores")) if cols else empty_head
        sets.append(
            EmbeddingSet(
                ids,
                cols.get("emb", np.zeros((0, run.model.embedding_dim), dtypes[m])),
                np.full(len(done), -1, np.int64),
                *(head if k > 0 else (None, None)),
            )
        )
    return EmbeddedPhotos(done, sets, failed, seconds)

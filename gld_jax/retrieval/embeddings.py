"""Embedding sets on disk: `.npz` files with `ids`, `embeddings` [N, D], `labels`.

One format everywhere (per model, per split, per host): `ids` are strings,
`embeddings` float16 or float32 rows (L2-normalised), `labels` the int landmark
id or -1 where there is none. Sets embedded with the classifier head also carry
`head_labels` [N, k] (the landmark ids of the head's top-k classes, best first)
and `head_scores` [N, k] (their sub-centre cosines). A folder of shards loads as
their concatenation.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gld_jax.utils import fs


@dataclasses.dataclass
class EmbeddingSet:
    ids: np.ndarray  # [N] str
    embeddings: np.ndarray  # [N, D] float
    labels: np.ndarray  # [N] int64 landmark id, -1 none
    head_labels: np.ndarray | None = None  # [N, k] int64 landmark ids of the head's top-k
    head_scores: np.ndarray | None = None  # [N, k] float32 their cosines, best first

    def __post_init__(self) -> None:
        if (self.head_labels is None) != (self.head_scores is None):
            raise ValueError("head_labels and head_scores come together")
        if self.head_labels is not None and (
            self.head_labels.shape != self.head_scores.shape
            or self.head_labels.shape[:1] != self.ids.shape
        ):
            raise ValueError(
                f"head_labels {self.head_labels.shape} and head_scores "
                f"{self.head_scores.shape} must both be [N={len(self.ids)}, k]"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_head(self) -> bool:
        return self.head_labels is not None

    def select(self, mask_or_index) -> EmbeddingSet:
        head = (
            (self.head_labels[mask_or_index], self.head_scores[mask_or_index])
            if self.has_head
            else (None, None)
        )
        return EmbeddingSet(
            self.ids[mask_or_index],
            self.embeddings[mask_or_index],
            self.labels[mask_or_index],
            *head,
        )


def save_embeddings(
    path: str, emb: EmbeddingSet, *, dtype=np.float32, paths: np.ndarray | None = None
) -> None:
    """Writes atomically (temp file + rename) so a crash leaves no half file.
    `path` may be local or remote (gs://...). `paths` ``[N]`` str, the image
    files of a set embedded from files, is stored beside (read with
    :func:`embedded_paths`; :func:`load_embeddings` ignores it)."""
    fs.makedirs(fs.parent(path))
    extra = {}
    if paths is not None:
        if len(paths) != len(emb):
            raise ValueError(f"{len(paths)} paths for {len(emb)} rows")
        extra["paths"] = np.asarray(paths, dtype=str)
    if emb.has_head:
        extra.update(
            head_labels=np.asarray(emb.head_labels, np.int64),
            head_scores=np.asarray(emb.head_scores, np.float32),
        )
    fs.save_npz(
        path,
        ids=np.asarray(emb.ids, dtype=str),
        embeddings=np.asarray(emb.embeddings, dtype=dtype),
        labels=np.asarray(emb.labels, dtype=np.int64),
        **extra,
    )


def embedded_paths(path: str) -> dict[str, str]:
    """{id: image file} of a set file saved with `paths` ({} for any other set)."""
    if fs.isdir(path) or not fs.exists(path):
        return {}
    z = fs.load_npz(path)
    if "paths" not in z:
        return {}
    return dict(zip(z["ids"].tolist(), z["paths"].tolist(), strict=True))


SHARD_SET = "shards.json"  # {"num_shards": P}: the folder is one set of P per-process shards


def shard_path(directory: str, process_index: int) -> str:
    """The shard of one process in a folder of per-process shards."""
    return os.path.join(directory, f"part-{process_index:05d}.npz")


def declare_shard_set(directory: str, num_shards: int) -> None:
    """Records that ``directory`` holds exactly ``num_shards`` per-process shards.

    Raises:
      ValueError: the folder already declares another count (shards of a run
        with another process count would mix into one set).
    """
    fs.makedirs(directory)
    meta = os.path.join(directory, SHARD_SET)
    if fs.exists(meta):
        with fs.open_file(meta) as f:
            old = json.load(f)["num_shards"]
        if old != num_shards:
            raise ValueError(
                f"{directory} holds a set of {old} shards, this run has {num_shards} processes: "
                "remove the folder to re-embed"
            )
        return
    fs.write_atomic(meta, json.dumps({"num_shards": num_shards}))


def _shard_files(directory: str) -> list[str]:
    files = fs.glob(os.path.join(directory, "*.npz"))
    meta = os.path.join(directory, SHARD_SET)
    if not fs.exists(meta):
        return files
    with fs.open_file(meta) as f:
        n = json.load(f)["num_shards"]
    expected = [shard_path(directory, p) for p in range(n)]
    missing = [os.path.basename(f) for f in expected if not fs.exists(f)]
    if missing:
        raise ValueError(f"{directory}: incomplete shard set, missing {missing} of {n}")
    extra = sorted(set(files) - set(expected))
    if extra:
        raise ValueError(f"{directory}: files outside the set of {n} shards: {extra}")
    return expected


def load_embeddings(path: str) -> EmbeddingSet:
    """One .npz file, or a folder (or glob) of .npz shards concatenated in name order.

    A folder with ``shards.json`` (written by multi-process embedding) must hold
    exactly its ``part-00000.npz`` .. ``part-<P-1>.npz``, else ValueError.
    """
    if fs.isdir(path):
        files = _shard_files(path)
    elif any(ch in path for ch in "*?["):
        files = fs.glob(path)
    else:
        files = [path]
    if not files or not all(fs.exists(f) for f in files):
        raise FileNotFoundError(f"no embedding file at {path!r}")
    parts = []
    for f in files:
        z = fs.load_npz(f)
        missing = {"ids", "embeddings", "labels"} - set(z)
        if missing:
            raise ValueError(f"{f}: not an embedding set (missing {sorted(missing)})")
        head = (z["head_labels"], z["head_scores"]) if "head_labels" in z else (None, None)
        parts.append(EmbeddingSet(z["ids"], z["embeddings"], z["labels"], *head))
    return concatenate_sets(parts, where=path)


def concatenate_sets(parts: list[EmbeddingSet], *, where: str = "") -> EmbeddingSet:
    """Rows of all parts in order; head top-k lists only when every part has them
    with the same k (a mixed folder is an error, not a silent drop)."""
    with_head = {p.head_labels.shape[1] for p in parts if p.has_head}
    if with_head and (len(with_head) > 1 or not all(p.has_head for p in parts)):
        raise ValueError(f"{where}: shards disagree on the head's top-k lists (k = {with_head})")
    head = (None, None)
    if with_head:
        head = (
            np.concatenate([p.head_labels for p in parts]),
            np.concatenate([p.head_scores for p in parts]),
        )
    return EmbeddingSet(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.labels for p in parts]),
        *head,
    )

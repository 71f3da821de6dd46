"""Embedding sets on disk: `.npz` files with `ids`, `embeddings` [N, D], `labels`.

One format everywhere (per model, per split, per host): `ids` are strings,
`embeddings` float16 or float32 rows (L2-normalised), `labels` the int landmark
id or -1 where there is none. A folder of shards loads as their concatenation.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np


@dataclasses.dataclass
class EmbeddingSet:
    ids: np.ndarray  # [N] str
    embeddings: np.ndarray  # [N, D] float
    labels: np.ndarray  # [N] int64 landmark id, -1 none

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, mask_or_index) -> EmbeddingSet:
        return EmbeddingSet(
            self.ids[mask_or_index], self.embeddings[mask_or_index], self.labels[mask_or_index]
        )


def save_embeddings(path: str, emb: EmbeddingSet, *, dtype=np.float32) -> None:
    """Writes atomically (temp file + rename) so a crash leaves no half file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        ids=np.asarray(emb.ids, dtype=str),
        embeddings=np.asarray(emb.embeddings, dtype=dtype),
        labels=np.asarray(emb.labels, dtype=np.int64),
    )
    os.replace(tmp, path)


def load_embeddings(path: str) -> EmbeddingSet:
    """One .npz file, or a folder (or glob) of .npz shards concatenated in name order."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.npz")))
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
    else:
        files = [path]
    if not files or not all(os.path.exists(f) for f in files):
        raise FileNotFoundError(f"no embedding file at {path!r}")
    parts = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            missing = {"ids", "embeddings", "labels"} - set(z.files)
            if missing:
                raise ValueError(f"{f}: not an embedding set (missing {sorted(missing)})")
            parts.append(EmbeddingSet(z["ids"], z["embeddings"], z["labels"]))
    return EmbeddingSet(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.labels for p in parts]),
    )

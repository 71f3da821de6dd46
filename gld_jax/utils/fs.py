"""Paths that may be local or remote (gs://, file://): one small file API.

Local paths use the os module; a path with a scheme goes through
`tf.io.gfile`, imported only then, so a run whose workdir or data live on
Cloud Storage reads and writes them the same way. Orbax handles checkpoints
itself; this covers the manifest, embeddings, submissions and small JSON.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import IO


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern) if is_remote(pattern) else _glob.glob(pattern))


def open_file(path: str, mode: str = "r") -> IO:
    """Text or binary ("rb"/"wb") file object; remote writes land on close."""
    if is_remote(path):
        return _gfile().GFile(path, mode)
    return open(
        path,
        mode,
        encoding=None if "b" in mode else "utf-8",
        newline="" if "w" in mode and "b" not in mode else None,
    )


def replace(src: str, dst: str) -> None:
    """Renames src over dst (atomic on local disks; a copy+delete on GCS)."""
    if is_remote(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def parent(path: str) -> str:
    """The containing folder (absolute for local paths)."""
    return os.path.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))

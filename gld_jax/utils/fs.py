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

# URL schemes the layer serves (through tf.io.gfile, and Orbax's etils paths for
# checkpoints). file:// is refused: Orbax rejects it, and a plain path says the same.
SUPPORTED_SCHEMES = ("gs",)


def is_remote(path: str) -> bool:
    return "://" in str(path)


def unsupported_scheme(path: str, key: str) -> str | None:
    """One line for a path whose URL scheme this layer cannot serve, naming the
    config key or flag it came from; None when the path is fine."""
    path = str(path)
    if "://" not in path:
        return None
    scheme = path.split("://", 1)[0]
    if scheme in SUPPORTED_SCHEMES:
        return None
    supported = " or ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    return f"{key}: {scheme}:// is not supported, use a local path or {supported}"


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

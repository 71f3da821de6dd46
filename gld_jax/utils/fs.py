"""Paths that may be local or on Cloud Storage (gs://): the one file API.

Local paths use the os module; a path with a scheme goes through
`tf.io.gfile`, imported only then, so a run whose workdir or data live on
Cloud Storage reads and writes them the same way. Everything in gld_jax,
tfrecords_tools and scripts that touches a user path comes through here;
Orbax handles checkpoints itself (etils paths, TensorStore for the arrays).
"""

from __future__ import annotations

import errno
import glob as _glob
import io
import os
import shutil
import sys
import uuid
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


def _errors(path: str) -> tuple[type[BaseException], ...]:
    """What a failed file operation on `path` raises: OSError, and TF's OpError
    (NotFoundError, PermissionDeniedError, ...) for remote paths."""
    if not is_remote(path):
        return (OSError,)
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


def path_errors() -> tuple[type[BaseException], ...]:
    """For `except`: OSError, plus TF's OpError once TensorFlow is loaded (a
    gs:// object that is missing or forbidden raises NotFoundError or
    PermissionDeniedError, which are not OSErrors)."""
    tf = sys.modules.get("tensorflow")
    return (OSError,) if tf is None else (OSError, tf.errors.OpError)


def error_line(e: BaseException) -> str:
    """The first line of a file error's message (TF's carry the path)."""
    text = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def writable_problem(path: str, key: str) -> str | None:
    """One line when folder `path` (from config key or flag `key`) cannot be
    created or written: a missing bucket, no permission, a file in the way.
    Creates the folder and writes and deletes a probe file; None when fine."""
    if not path:
        return None
    try:
        if exists(path) and not isdir(path):
            return f"{key}: {path} is not a directory"
        makedirs(path)
        probe = os.path.join(path, f".write-probe-{uuid.uuid4().hex}")
        write_text(probe, "ok")
        remove(probe)
    except _errors(path) as e:
        return f"{key}: {path} is not writable: {error_line(e)}"
    return None


def readable_dir_problem(path: str, key: str) -> str | None:
    """One line when `path` (from `key`) is not a folder that can be listed."""
    try:
        if not exists(path):
            return f"{key}: {path} does not exist"
        if not isdir(path):
            return f"{key}: {path} is not a directory"
        listdir(path)
    except _errors(path) as e:
        return f"{key}: {path} cannot be read: {error_line(e)}"
    return None


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


def walk_files(root: str) -> list[str]:
    """Every file under folder `root`, at any depth, sorted by path."""
    if is_remote(root):
        walked = ((d.rstrip("/"), names) for d, _, names in _gfile().walk(root))
    else:
        walked = ((d, names) for d, _, names in os.walk(root))
    return sorted(os.path.join(d, n) for d, names in walked for n in names)


def open_file(path: str, mode: str = "r") -> IO:
    """Text or binary ("rb"/"wb") file object; remote writes land on close."""
    if is_remote(path):
        # GFile opens lazily and TF's NotFoundError may carry no path: say which.
        if "r" in mode and not _gfile().exists(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return _gfile().GFile(path, mode)
    return open(
        path,
        mode,
        encoding=None if "b" in mode else "utf-8",
        newline="" if "w" in mode and "b" not in mode else None,
    )


def read_text(path: str) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to path+".tmp", then renames it over `path`: a reader never
    sees half a file (on GCS the object appears whole on close anyway)."""
    with open_file(path + ".tmp", "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    replace(path + ".tmp", path)


def save_npz(path: str, **arrays) -> None:
    """np.savez to any path, atomically. The zip is built in memory first: its
    writer seeks back, and a remote file only streams forward."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def load_npz(path: str) -> dict:
    """{name: array} of an .npz file on any path (read whole: np.load seeks, and
    seeks on a remote file are round trips)."""
    import numpy as np

    with open_file(path, "rb") as f:
        data = io.BytesIO(f.read())
    with np.load(data, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def listdir(path: str) -> list[str]:
    """Entry names (no trailing slash), sorted."""
    if is_remote(path):
        return sorted(n.rstrip("/") for n in _gfile().listdir(path))
    return sorted(os.listdir(path))


def remove(path: str) -> None:
    """Deletes one file; a missing one is not an error."""
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().remove(path)
    elif os.path.lexists(path):
        os.remove(path)


def rmtree(path: str) -> None:
    """Deletes a folder and everything under it; a missing one is not an error."""
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def copy_tree(src: str, dst: str) -> None:
    """Copies the files under folder `src` into `dst` (either may be remote), for
    libraries that only read and write local folders (ScaNN's serialised index)."""
    makedirs(dst)
    for name in listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if isdir(s):
            copy_tree(s, d)
        elif is_remote(s) or is_remote(d):
            _gfile().copy(s, d, overwrite=True)
        else:
            shutil.copyfile(s, d)


def replace(src: str, dst: str) -> None:
    """Renames src over dst (atomic on local disks; a copy+delete on GCS)."""
    if is_remote(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def parent(path: str) -> str:
    """The containing folder (absolute for local paths)."""
    return os.path.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))

"""Where the converter reads image bytes from: the GLDv2 folder or its tar shards.

GLDv2 ships each split as tar files (`images_000.tar` .. `images_499.tar` for train)
whose members are `a/b/c/<id>.jpg`. A user may untar them into `<data_dir>/<split>/` (the
folder layout) or keep them as `<data_dir>/<split>/*.tar` and pass --from_tars: the tar
headers are indexed once (member offsets), then workers read each image with one seek,
so 500 GB need not be unpacked first. Both sources go through tf.io.gfile only when the
path is not local (gs://...), and list what they hold so the converter can report ids
without a file, files without an id and unreadable directories.

Ids are checked (16 lowercase hex digits, as GLDv2's) before any path is built from
them, so a CSV cannot make the converter read outside data_dir.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass

from gld_jax.utils import fs

_ID = re.compile(r"[0-9a-f]{16}")
_TAR_MEMBER = re.compile(r"(?:^|/)([0-9a-f]{16})\.jpg$")


def valid_id(image_id: str) -> bool:
    """True for a GLDv2 image id: exactly 16 lowercase hex digits."""
    return _ID.fullmatch(image_id) is not None


def image_path(data_dir: str, split: str, image_id: str) -> str:
    """GLDv2 location of an image: data_dir/split/a/b/c/<id>.jpg (id must be valid)."""
    if not valid_id(image_id):
        raise ValueError(f"not a GLDv2 image id: {image_id!r}")
    return os.path.join(data_dir, split, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")


@dataclass(frozen=True)
class Listing:
    """What a split's source holds.

    Attributes:
      locations: id -> where its bytes are: a file path (folder) or (tar path, offset,
        size in bytes) (tars).
      stray: files that are not `<16-hex id>.jpg` where one is expected, relative names.
      errors: (path, reason) of directories or tars that could not be read.
    """

    locations: dict[str, str | tuple[str, int, int]]
    stray: list[str]
    errors: list[tuple[str, str]]


def list_folder(data_dir: str, split: str) -> Listing:
    """Walks data_dir/split (sorted, so the result is the same on every run)."""
    root = os.path.join(data_dir, split)
    locations: dict[str, str | tuple[str, int, int]] = {}
    stray: list[str] = []
    errors: list[tuple[str, str]] = []
    if fs.is_remote(root):
        import tensorflow as tf

        if not tf.io.gfile.isdir(root):
            return Listing({}, [], [])
        walk = tf.io.gfile.walk(root, onerror=lambda e: errors.append((str(e), "unreadable")))
    else:
        if not os.path.isdir(root):
            return Listing({}, [], [])

        def onerror(e: OSError) -> None:
            errors.append(
                (
                    os.path.relpath(e.filename or root, data_dir),
                    f"unreadable directory: {e.strerror or e}",
                )
            )

        walk = os.walk(root, onerror=onerror)
    for dirpath, dirnames, filenames in walk:
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext == ".jpg" and valid_id(stem):
                locations[stem] = os.path.join(dirpath, name)
            elif ext != ".tar":
                stray.append(os.path.relpath(os.path.join(dirpath, name), data_dir))
    return Listing(locations, stray, errors)


def tar_files(data_dir: str, split: str) -> list[str]:
    """The split's tar shards, data_dir/split/*.tar, sorted."""
    import tensorflow as tf

    pattern = os.path.join(data_dir, split, "*.tar")
    return sorted(tf.io.gfile.glob(pattern))


def index_tar(path: str) -> Listing:
    """Members of one tar: `<id>.jpg` -> (path, data offset, size); others are stray.

    Only headers are read (tarfile seeks over the data), so indexing a 1 GB shard costs
    a few thousand small reads. A tar that is cut short keeps the members before the cut.
    """
    locations: dict[str, str | tuple[str, int, int]] = {}
    stray: list[str] = []
    errors: list[tuple[str, str]] = []
    try:
        with fs.open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:  # truncated or garbled after some members
                    errors.append((os.path.basename(path), f"unreadable tar: {e}"))
                    break
                if member is None:
                    break
                if not member.isfile():
                    continue
                m = _TAR_MEMBER.search(member.name)
                if m:
                    locations[m.group(1)] = (path, member.offset_data, member.size)
                else:
                    stray.append(f"{os.path.basename(path)}:{member.name}")
    except Exception as e:  # OSError, TarError, tf.errors.OpError: the tar is unusable
        errors.append((os.path.basename(path), f"unreadable tar: {e}"))
    return Listing(locations, stray, errors)


def read_bytes(location: str | tuple[str, int, int]) -> bytes:
    """The bytes of one image (a path, or a (tar, offset, size) member).

    Raises:
      OSError: the file is missing or unreadable; a tar member is cut short.
    """
    if isinstance(location, str):
        with fs.open_file(location, "rb") as f:
            return f.read()
    path, offset, size = location
    with fs.open_file(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"tar member cut short ({len(data)} of {size} bytes)")
    return data

"""Which image files a command line names: files, folders, gs:// prefixes, @lists.

TensorFlow-free (paths go through gld_jax.utils.fs). A named file is taken
whatever its name ends with (its content decides whether it is an image); in a
folder or under a prefix, only files with an image suffix are taken, so a
folder's CSVs and READMEs are not reported as bad images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from gld_jax.utils import fs

# The formats the converter decodes (tfrecords_tools.images), by file name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_GLOB_CHARS = "*?["


def image_id(path: str) -> str:
    """The id of an image file: its name without the suffix (GLDv2's naming,
    `test/0/0/0/000b15b043eb8cf0.jpg` is id `000b15b043eb8cf0`)."""
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]


def _images_in(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if p.lower().endswith(IMAGE_SUFFIXES)]


def _expand_one(arg: str) -> tuple[list[str], str]:
    """(files, "") for one PATH argument, or ([], one line saying why none)."""
    what = "file or folder"
    try:
        if fs.isdir(arg):
            found = _images_in(fs.walk_files(arg))
            if not found:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                return [], f"{arg}: no image files under it ({suffixes})"
            return found, ""
        if fs.exists(arg):
            return [arg], ""
        if any(ch in arg for ch in _GLOB_CHARS):
            matches, what = fs.glob(arg), "match"
        elif fs.is_remote(arg):
            # A bucket has no folders, only name prefixes: gs://b/photos/img_ names
            # every object starting so.
            matches, what = fs.glob(arg + "*"), "object with this prefix"
        else:
            matches = []
        found = []
        for m in matches:
            found += _images_in(fs.walk_files(m)) if fs.isdir(m) else _images_in([m])
        if found:
            return found, ""
    except fs.path_errors() as e:
        return [], f"{arg}: cannot be read: {fs.error_line(e)}"
    return [], f"{arg}: no such {what}"


def _list_entries(list_path: str) -> tuple[list[str], str]:
    """The PATH lines of an @list file (blank lines and # comments skipped)."""
    try:
        text = fs.read_text(list_path)
    except fs.path_errors() as e:
        return [], f"@{list_path}: cannot be read: {fs.error_line(e)}"
    except UnicodeDecodeError:
        return [], f"@{list_path}: not a text file (one path per line)"
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")], ""


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The image files named by PATH arguments, in order, each once.

    Each argument is an image file, a folder (searched at any depth), a glob, a
    gs:// prefix, or `@LIST`: a text file with one such PATH per line (relative
    paths are taken from the current folder, as on the command line).

    Returns:
      (paths, problems): the files, and one line per argument that named none
      (missing, an empty folder, an unreadable list).
    """
    paths: list[str] = []
    problems: list[str] = []
    for arg in args:
        if arg.startswith("@"):
            entries, problem = _list_entries(arg[1:])
            if problem:
                problems.append(problem)
        else:
            entries = [arg]
        for entry in entries:
            found, problem = _expand_one(entry)
            paths += found
            if problem:
                problems.append(problem)
    return list(dict.fromkeys(paths)), problems

"""Every file under a folder, for byte-for-byte comparisons in tests."""

import os


def file_tree(root) -> dict[str, bytes]:
    """{path relative to root: bytes} of every file under `root`."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out

"""Photo-like JPEGs (gld_jax.data.host_feed.photo_jpeg) in the GLDv2 layout, for the
data benchmarks (not a test fixture)."""

from __future__ import annotations

import os

import numpy as np

from gld_jax.data.host_feed import photo_jpeg
from gld_jax.utils import fs


def write_gldv2_folder(
    root: str, num_images: int, width: int, height: int, num_classes: int = 50, seed: int = 0
) -> list[str]:
    """A GLDv2-layout folder (train/a/b/c/<id>.jpg + train.csv); returns the ids.

    Reuses an existing folder with the same parameters (a marker file records them).
    """
    marker = os.path.join(root, f"_done_{num_images}_{width}x{height}_{num_classes}_{seed}")
    rng = np.random.default_rng(seed)
    ids = [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=num_images)]
    if fs.exists(marker):
        return ids
    rows = ["id,url,landmark_id"]
    for k, image_id in enumerate(ids):
        path = os.path.join(root, "train", image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")
        fs.makedirs(os.path.dirname(path))
        with fs.open_file(path, "wb") as f:
            f.write(photo_jpeg(rng, width, height))
        rows.append(f"{image_id},http://example.com/{image_id},{k % num_classes}")
    with fs.open_file(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    fs.open_file(marker, "w").close()
    return ids

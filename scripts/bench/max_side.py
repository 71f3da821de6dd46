"""What the conversion's --max_side costs and saves: stored bytes per image and the
host's per-core rate at the recipe's stage sizes, for 1024 / 768 / 512 px.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/max_side.py

Sources: 8 photo-like 1024x1024 q90 JPEGs (gld_jax.data.host_feed.photo_jpeg),
stored as the converter stores them (tfrecords_tools.images.encode_image with
--max_side, q95 re-encode where resized). Rates: host_feed.calibrate on those
stored JPEGs, one TF thread, with the augmentations on the host (flip, warp,
cutout) and without them (input.augment_on=device). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gld_jax.data.host_feed import calibrate, photo_jpeg  # noqa: E402
from tfrecords_tools.images import EncodeOptions, encode_image  # noqa: E402

STAGE_SIZES = (256, 512, 672, 768)  # the recipe's stage sizes (effb7: 256/512/672, b4-b6: 768)


def main() -> None:
    rng = np.random.default_rng(0)
    originals = [photo_jpeg(rng, 1024, 1024) for _ in range(8)]
    rows = []
    for side in (1024, 768, 512):
        stored = [encode_image(o, EncodeOptions(max_side=side)).data for o in originals]
        row = {"max_side": side, "kb_per_image": round(np.mean([len(b) for b in stored]) / 1e3, 1)}
        for size in STAGE_SIZES:
            for geometric in (True, False):
                rate = calibrate(
                    size, source_side=side, geometric=geometric, seconds=2.0, sources=stored
                )
                row[f"{size}px_{'host_aug' if geometric else 'device_aug'}"] = round(rate, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "max_side", "source": "1024x1024 q90", "rows": rows}))


if __name__ == "__main__":
    main()

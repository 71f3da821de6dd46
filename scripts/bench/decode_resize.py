"""Per-image cost of the input pipeline's pieces on one JPEG, one thread of TF ops.

    nice -n 5 .venv/bin/python scripts/bench/decode_resize.py [--side 1024] [--quality 90]

Times, in ms per image (mean of --repeats after one warm-up call): full decode,
DCT-scaled decodes at 1/2 and 1/4, and resizes of the decoded image to 256 and
512 px (antialiased bilinear as the pipeline, area, plain bilinear). The source is
a photo-like picture (smooth colours plus noise) encoded with PIL. Prints one
JSON line. It explains scripts/bench/input_pipeline.py's ratios: how much of a
bare decode the resize costs, and how little DCT scaling saves on files whose
Huffman decoding dominates.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np


def photo_like_jpeg(side: int, quality: int, seed: int = 0) -> bytes:
    """JPEG bytes of a side x side picture: bicubic-upsampled random colours + noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.float32)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=1024, help="source side in pixels")
    ap.add_argument("--quality", type=int, default=90, help="source JPEG quality")
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    encoded = photo_like_jpeg(args.side, args.quality)
    enc = tf.constant(encoded)
    decoded = tf.io.decode_jpeg(enc, channels=3)

    def resize(size: int, method: str, antialias: bool):
        fn = tf.function(lambda x: tf.image.resize(x, [size, size], method, antialias=antialias))
        return lambda: fn(decoded)

    cases = {
        "decode_full": lambda: tf.io.decode_jpeg(enc, channels=3),
        "decode_ratio2": lambda: tf.io.decode_jpeg(enc, channels=3, ratio=2),
        "decode_ratio4": lambda: tf.io.decode_jpeg(enc, channels=3, ratio=4),
    }
    for size in (256, 512):
        cases[f"resize{size}_bilinear_antialias"] = resize(size, "bilinear", True)
        cases[f"resize{size}_area"] = resize(size, "area", False)
        cases[f"resize{size}_bilinear"] = resize(size, "bilinear", False)

    ms = {}
    for name, fn in cases.items():
        fn().numpy()  # warm-up (and tf.function tracing)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        out.numpy()
        ms[name] = round((time.perf_counter() - t0) / args.repeats * 1e3, 2)
    print(
        json.dumps(
            {
                "bench": "decode_resize",
                "source": f"{args.side}x{args.side} JPEG q{args.quality}",
                "source_kb": round(len(encoded) / 1024, 1),
                "threads": 1,
                "ms_per_image": ms,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Per-image cost of the input pipeline's pieces, one thread of TF ops.

    nice -n 5 .venv/bin/python scripts/bench/decode_resize.py [--side 1024] [--quality 90]

Times, in ms per image (mean over --images sources x --repeats, after a warm-up
pass): full decode, DCT-scaled decodes at 1/2 and 1/4, resizes of the decoded
image to 256 and 512 px (antialiased bilinear as the pipeline, area, plain
bilinear) and the shift-scale-rotate warp at those sizes. The sources are the
photo-like JPEGs of scripts/bench/input_pipeline.py (scripts/bench/helpers/photos.py).
Prints one JSON line, with the bound these costs put on that benchmark's two
goals (see "bounds" in the output and BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gld_jax.data.host_feed import photo_jpeg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=1024, help="source side in pixels")
    ap.add_argument("--quality", type=int, default=90, help="source JPEG quality")
    ap.add_argument("--images", type=int, default=8, help="distinct sources")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from gld_jax.data import augment

    rng = np.random.default_rng(0)
    encoded = [photo_jpeg(rng, args.side, args.side, args.quality) for _ in range(args.images)]
    enc = [tf.constant(e) for e in encoded]
    decoded = [tf.io.decode_jpeg(e, channels=3) for e in enc]

    def over(inputs, fn):
        return lambda: [fn(x) for x in inputs]

    def resize(size: int, method: str, antialias: bool):
        return tf.function(lambda x: tf.image.resize(x, [size, size], method, antialias=antialias))

    cases = {
        "decode_full": over(enc, lambda e: tf.io.decode_jpeg(e, channels=3)),
        "decode_ratio2": over(enc, lambda e: tf.io.decode_jpeg(e, channels=3, ratio=2)),
        "decode_ratio4": over(enc, lambda e: tf.io.decode_jpeg(e, channels=3, ratio=4)),
    }
    for size in (256, 512):
        cases[f"resize{size}_bilinear_antialias"] = over(decoded, resize(size, "bilinear", True))
        cases[f"resize{size}_area"] = over(decoded, resize(size, "area", False))
        cases[f"resize{size}_bilinear"] = over(decoded, resize(size, "bilinear", False))
        small = [tf.cast(resize(size, "bilinear", False)(d), tf.uint8) for d in decoded]
        warp = tf.function(
            lambda x: augment.affine_transform(x, 7.0, 1.1, tf.constant([0.05, -0.05]))
        )
        cases[f"shift_scale_rotate{size}"] = over(small, warp)

    ms = {}
    for name, fn in cases.items():
        fn()[-1].numpy()  # warm-up (and tf.function tracing)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        out[-1].numpy()
        ms[name] = round((time.perf_counter() - t0) / (args.repeats * args.images) * 1e3, 2)
    d, q = ms["decode_full"], ms["decode_ratio4"]
    # Goal 1 (>= 0.9 of a bare decode) leaves o <= d/9 for all other work of a full-decode
    # image; goal 2 (DCT >= 2x at 256 px) then needs q + o' <= (d + o) / 2 <= 5d/9.
    bounds = {
        "ratio4_over_full_decode": round(q / d, 3),
        "both_goals_need_ratio4_over_full_at_most": round(5 / 9, 3),
        "full_decode_plus_aa_resize256_vs_bare_decode": round(
            d / (d + ms["resize256_bilinear_antialias"]), 3
        ),
        "full_decode_plus_area_resize256_vs_bare_decode": round(d / (d + ms["resize256_area"]), 3),
    }
    print(
        json.dumps(
            {
                "bench": "decode_resize",
                "source": f"{args.side}x{args.side} JPEG q{args.quality}",
                "images": args.images,
                "source_kb_mean": round(float(np.mean([len(e) for e in encoded])) / 1024, 1),
                "threads": 1,
                "ms_per_image": ms,
                "bounds": bounds,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark of tfrecords_tools.build_gldv2: images/s per core, next to the ceiling.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/convert.py \
        --num_images 1000 --workdir /tmp/gldjax-bench-convert

Converts --num_images photo-like 800x600 JPEGs (GLDv2 layout) with 1 and 2 workers,
keeping the originals and with --max_side 512, and measures in the same run the plain
PIL decode + JPEG encode of the same files in one process (the per-core ceiling of any
converter that re-encodes) and PIL decode alone (what verifying an image costs). Prints
one JSON line; rates are images/s, "per core" divides by the workers used.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from PIL import Image  # noqa: E402

from scripts.bench.helpers import photos  # noqa: E402
from tfrecords_tools import build_gldv2, sources  # noqa: E402


def _ceiling(paths: list[str], max_side: int | None) -> dict[str, float]:
    """PIL rates over the same files in this process: decode only; decode+encode."""
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    decode = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        if max_side is not None:
            scale = max_side / max(rgb.size)
            rgb = rgb.resize(
                (round(rgb.width * scale), round(rgb.height * scale)),
                Image.Resampling.BICUBIC,
                reducing_gap=3.0,
            )
        rgb.save(io.BytesIO(), "JPEG", quality=95)
    return {"pil_decode": decode, "pil_decode_encode": len(paths) / (time.perf_counter() - t)}


def _convert(data: str, out: str, workers: int, max_side: int | None, shards: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    manifest = build_gldv2.build_gldv2(
        data, out, num_shards=shards, num_workers=workers, max_side=max_side, show_progress=False
    )
    seconds = time.perf_counter() - t
    return manifest["splits"]["train"]["num_examples"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--workdir", default="/tmp/gldjax-bench-convert")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    data = os.path.join(args.workdir, "data")
    ids = photos.write_gldv2_folder(data, args.num_images, 800, 600)
    paths = [sources.image_path(data, "train", i) for i in ids]
    sizes = [os.path.getsize(p) for p in paths]
    result = {
        "bench": "convert",
        "num_images": args.num_images,
        "source": "800x600 JPEG q90",
        "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "cpus": os.cpu_count(),
    }
    for max_side in (None, 512):
        tag = "keep" if max_side is None else f"max_side{max_side}"
        for name, rate in _ceiling(paths, max_side).items():
            result[f"{name}_{tag}"] = round(rate, 1)
        for workers in (int(w) for w in args.workers.split(",")):
            out = os.path.join(args.workdir, f"out-{tag}-{workers}")
            rate = _convert(data, out, workers, max_side, args.shards)
            result[f"convert_{tag}_w{workers}"] = round(rate, 1)
            result[f"convert_{tag}_w{workers}_per_core"] = round(rate / workers, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

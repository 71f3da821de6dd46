"""Synthetic GLDv2-like data set: procedurally drawn landmarks in the real GLDv2 layout.

(~460 lines: the plan, the files and the resumable writer of one data set; the pictures
are synthetic_scenes.py's.)

Every landmark class is one place (drawn by gld_jax.data.synthetic_scenes): a scene
(sky, ground, buildings, towers, domes, arches, windows) that is a deterministic
function of the class seed. Every image of the class is a different view of that scene:
perspective warp, crop and scale, blur, brightness/contrast/colour jitter, noise and
occluders. Non-landmark images (most of test, optionally train noise) are clutter, rooms
and textures that are no class's scene; like GLDv2's (people, rooms, food, documents)
they recur: each is a view of one of `nonlandmark_scenes` generic scenes (0: every one a
new random scene). Class sizes follow a long tail.

The output is the layout of the real data set, so every reader is exercised as on it:

    train/a/b/c/<id>.jpg  train.csv (id,url,landmark_id)
    train_clean.csv (landmark_id,images)
    test/a/b/c/<id>.jpg   test.csv (id)   recognition_solution_v2.1.csv (id,landmarks,Usage)
    index/a/b/c/<id>.jpg  index.csv (id)
    _SUCCESS.json         parameters and summary, written last

Command line:

    python -m gld_jax.data.synthetic --output_dir /tmp/gld_synth --num_classes 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from gld_jax.data.synthetic_scenes import (
    draw_landmark_scene,
    draw_nonlandmark_scene,
    jpeg_bytes,
    render_view,
)
from gld_jax.utils import fs

FORMAT_VERSION = 1
SUCCESS_FILE = "_SUCCESS.json"
IN_PROGRESS_FILE = "_IN_PROGRESS"
SOLUTION_FILE = "recognition_solution_v2.1.csv"
# Landmark ids are drawn from [1, MAX_LANDMARK_ID) so they are sparse, not class indices.
MAX_LANDMARK_ID = 200_000
# Class size for quantile q in [0, 1] is min * (max/min) ** (q ** TAIL_EXPONENT); 1.3 gives
# ~1,450 train images for the default 60 classes in [2, 120], a third with <= 5 images.
TAIL_EXPONENT = 1.3
# The scene is drawn at twice the image size so warped views are anti-aliased crops.
WORLD_SCALE = 2
PORTRAIT_PROB = 0.2

# Codes that separate the random streams of the image kinds (see _image_rng).
# (4 is a landmark scene's: synthetic_scenes.SCENE_STREAM.)
_KIND_TRAIN, _KIND_TEST, _KIND_INDEX, _KIND_NL_SCENE = 1, 2, 3, 5


def image_relpath(split: str, image_id: str) -> str:
    """GLDv2 path of an image relative to the data set root: `split/a/b/c/<id>.jpg`."""
    return os.path.join(split, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")


# --------------------------------------------------------------------------- plan


def class_sizes(
    num_classes: int, min_images: int, max_images: int, rng: np.random.Generator
) -> np.ndarray:
    """Long-tailed class sizes, int64 [num_classes], in [min_images, max_images].

    Stratified quantiles q_i = (i + u_i) / N (the largest forced to 1) are mapped through
    n(q) = min * (max/min) ** (q ** TAIL_EXPONENT): most classes sit near `min_images`,
    one class has exactly `max_images`. Sizes are returned in random class order.
    """
    q = (np.arange(num_classes) + rng.uniform(size=num_classes)) / num_classes
    q[-1] = 1.0
    sizes = np.floor(min_images * (max_images / min_images) ** (q**TAIL_EXPONENT) + 1e-9)
    sizes = np.clip(sizes.astype(np.int64), min_images, max_images)
    return rng.permutation(sizes)


def _unique_ids(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct random 16-hex-digit ids, like GLDv2's."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for value in rng.integers(0, 2**64, size=n - len(ids), dtype=np.uint64):
            image_id = f"{int(value):016x}"
            if image_id not in seen:
                seen.add(image_id)
                ids.append(image_id)
    return ids


def _validate(
    num_classes: int,
    min_images: int,
    max_images: int,
    num_test: int,
    test_nonlandmark_fraction: float,
    num_index: int,
    label_noise: float,
    nonlandmark_noise: float,
    image_size: tuple[int, int],
    seed: int,
    nonlandmark_scenes: int,
) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 1 <= min_images <= max_images:
        raise ValueError(f"need 1 <= min_images <= max_images, got {min_images}, {max_images}")
    if num_test < 0 or num_index < 0:
        raise ValueError(f"num_test and num_index must be >= 0, got {num_test}, {num_index}")
    for name, value in [
        ("test_nonlandmark_fraction", test_nonlandmark_fraction),
        ("label_noise", label_noise),
        ("nonlandmark_noise", nonlandmark_noise),
    ]:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if label_noise + nonlandmark_noise > 1.0:
        raise ValueError(
            f"label_noise + nonlandmark_noise must be <= 1, got {label_noise + nonlandmark_noise}"
        )
    if nonlandmark_scenes < 0:
        raise ValueError(f"nonlandmark_scenes must be >= 0, got {nonlandmark_scenes}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (width, height) with both >= 16, got {image_size}")


def _plan(params: dict[str, Any]) -> dict[str, Any]:
    """Everything but the pixels: ids, labels, true scenes, noise, splits. Pure in params."""
    rng = np.random.default_rng([params["seed"], 0])
    n_cls = params["num_classes"]
    landmark_ids = np.sort(rng.choice(np.arange(1, MAX_LANDMARK_ID), n_cls, replace=False))
    sizes = class_sizes(n_cls, params["min_images"], params["max_images"], rng)
    labels = np.repeat(np.arange(n_cls), sizes)  # class index per train image, by label
    n_train = len(labels)
    scenes = labels.copy()  # class whose place the pixels show; -1 = non-landmark
    order = rng.permutation(n_train)
    n_label_noise = round(params["label_noise"] * n_train)
    n_nl_noise = round(params["nonlandmark_noise"] * n_train)
    label_noisy = order[:n_label_noise]
    # A relabelled image shows another class's place: shift by 1..N-1 so it is never its own.
    scenes[label_noisy] = (labels[label_noisy] + rng.integers(1, n_cls, size=n_label_noise)) % n_cls
    scenes[order[n_label_noise : n_label_noise + n_nl_noise]] = -1

    n_test, n_index = params["num_test"], params["num_index"]
    n_test_nl = round(params["test_nonlandmark_fraction"] * n_test)
    test_scenes = np.concatenate(
        [np.full(n_test_nl, -1), rng.integers(0, n_cls, size=n_test - n_test_nl)]
    )
    test_scenes = rng.permutation(test_scenes)
    usage = np.array(["Private"] * n_test, dtype=object)
    usage[rng.permutation(n_test)[: round(n_test / 3)]] = "Public"
    index_scenes = rng.integers(0, n_cls, size=n_index)

    ids = _unique_ids(rng, n_train + n_test + n_index)
    train_order = np.argsort(ids[:n_train], kind="stable")  # train.csv sorted by id, like real
    return {
        "landmark_ids": landmark_ids,
        "train_ids": [ids[i] for i in train_order],
        "train_labels": labels[train_order],
        "train_scenes": scenes[train_order],
        "test_ids": ids[n_train : n_train + n_test],
        "test_scenes": test_scenes,
        "test_usage": usage,
        "index_ids": ids[n_train + n_test :],
        "index_scenes": index_scenes,
        "sizes": sizes,
    }


# --------------------------------------------------------------------------- writing


def _write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    with fs.open_file(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _params_dict(**params: Any) -> dict[str, Any]:
    params["image_size"] = [int(v) for v in params["image_size"]]
    return json.loads(json.dumps(params))  # normalise (tuples -> lists, numpy -> python)


def _check_existing(output_dir: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Summary of an identical finished run in `output_dir`, None to (re)generate; else error."""
    marker = os.path.join(output_dir, SUCCESS_FILE)
    if fs.exists(marker):
        done = json.loads(fs.read_text(marker))
        if done.get("params") != params:
            changed = sorted(
                k
                for k in set(params) | set(done.get("params", {}))
                if params.get(k) != done.get("params", {}).get(k)
            )
            raise ValueError(
                f"{output_dir} already holds a synthetic data set made with other "
                f"parameters (differ: {', '.join(changed)}); use a new --output_dir"
            )
        return done["summary"]
    if fs.exists(os.path.join(output_dir, IN_PROGRESS_FILE)):
        for split in ("train", "test", "index"):  # leftovers of an interrupted run
            fs.rmtree(os.path.join(output_dir, split))
    elif fs.exists(os.path.join(output_dir, "train.csv")):
        raise ValueError(
            f"{output_dir} holds a train.csv that this generator did not write; "
            "refusing to overwrite it"
        )
    return None


def generate_gldv2_like(
    output_dir: str,
    *,
    num_classes: int = 60,
    min_images: int = 2,
    max_images: int = 120,
    num_test: int = 300,
    test_nonlandmark_fraction: float = 0.7,
    num_index: int = 100,
    label_noise: float = 0.0,
    nonlandmark_noise: float = 0.0,
    image_size: tuple[int, int] = (160, 120),
    seed: int = 0,
    nonlandmark_scenes: int = 12,
    show_progress: bool = True,
) -> dict:
    """Writes a synthetic data set in the GLDv2 layout and returns its summary.

    Args:
      output_dir: root to write (created). A finished run with the same parameters is
        reused as is; one with other parameters is an error (ValueError).
      num_classes: landmark classes in train; landmark ids are sparse ints < 200,000.
      min_images, max_images: bounds of the long-tailed train class sizes.
      num_test: test images; `test_nonlandmark_fraction` of them show no landmark.
      num_index: index images, all views of landmark classes.
      label_noise: fraction of train images labelled with a wrong class.
      nonlandmark_noise: fraction of train images that show no landmark but carry a label.
        Noisy images are left out of train_clean.csv, as are classes left with < 2 images.
      image_size: (width, height) of landscape images in pixels; a fifth of the images
        are portrait (height, width).
      seed: everything, pixels included, is a deterministic function of the parameters.
      nonlandmark_scenes: generic scenes the non-landmark images are views of (each
        image picks one at random), so non-landmarks recur as on GLDv2; 0 draws a new
        random scene for every non-landmark image.
      show_progress: draw a tqdm progress bar.

    Returns:
      Summary dict: num_classes, num_train, num_train_label_noise,
      num_train_nonlandmark_noise, num_clean_classes, num_clean_images, num_test,
      num_test_landmark, num_test_nonlandmark, num_index, class_size_min/median/max.
    """
    _validate(
        num_classes,
        min_images,
        max_images,
        num_test,
        test_nonlandmark_fraction,
        num_index,
        label_noise,
        nonlandmark_noise,
        image_size,
        seed,
        nonlandmark_scenes,
    )
    params = _params_dict(
        num_classes=num_classes,
        min_images=min_images,
        max_images=max_images,
        num_test=num_test,
        test_nonlandmark_fraction=test_nonlandmark_fraction,
        num_index=num_index,
        label_noise=label_noise,
        nonlandmark_noise=nonlandmark_noise,
        image_size=image_size,
        seed=seed,
        nonlandmark_scenes=nonlandmark_scenes,
        format_version=FORMAT_VERSION,
    )
    fs.makedirs(output_dir)
    existing = _check_existing(output_dir, params)
    if existing is not None:
        return existing
    fs.write_text(os.path.join(output_dir, IN_PROGRESS_FILE), "generation in progress\n")

    plan = _plan(params)
    lm_ids = plan["landmark_ids"]
    base_w, base_h = params["image_size"]
    world = (base_w * WORLD_SCALE, base_h * WORLD_SCALE)
    scene_cache: dict[int, Image.Image] = {}
    generic_cache: dict[int, Image.Image] = {}

    def scene_for(cls: int, rng: np.random.Generator) -> Image.Image:
        if cls < 0:
            if nonlandmark_scenes == 0:
                return draw_nonlandmark_scene(rng, world)
            pick = int(rng.integers(nonlandmark_scenes))
            if pick not in generic_cache:
                generic_cache[pick] = draw_nonlandmark_scene(
                    np.random.default_rng([int(seed), _KIND_NL_SCENE, pick]), world
                )
            return generic_cache[pick]
        if cls not in scene_cache:
            scene_cache[cls] = draw_landmark_scene(int(seed) * 1_000_003 + int(lm_ids[cls]), world)
        return scene_cache[cls]

    jobs: list[tuple[str, str, int, int]] = []  # (split, id, scene class, kind code)
    jobs += [
        ("train", i, int(s), _KIND_TRAIN)
        for i, s in zip(plan["train_ids"], plan["train_scenes"], strict=True)
    ]
    jobs += [
        ("test", i, int(s), _KIND_TEST)
        for i, s in zip(plan["test_ids"], plan["test_scenes"], strict=True)
    ]
    jobs += [
        ("index", i, int(s), _KIND_INDEX)
        for i, s in zip(plan["index_ids"], plan["index_scenes"], strict=True)
    ]
    made_dirs: set[str] = set()
    for n, (split, image_id, cls, kind) in enumerate(
        tqdm(jobs, desc="synthetic GLDv2", unit="img", disable=not show_progress)
    ):
        rng = np.random.default_rng([int(seed), kind, n])
        size = (base_h, base_w) if rng.uniform() < PORTRAIT_PROB else (base_w, base_h)
        image = render_view(scene_for(cls, rng), rng, size)
        path = os.path.join(output_dir, image_relpath(split, image_id))
        parent = os.path.dirname(path)
        if parent not in made_dirs:
            fs.makedirs(parent)
            made_dirs.add(parent)
        with fs.open_file(path, "wb") as f:
            f.write(jpeg_bytes(image))

    summary = _write_csvs(output_dir, plan)
    fs.write_text(
        os.path.join(output_dir, SUCCESS_FILE),
        json.dumps({"params": params, "summary": summary}, indent=2, sort_keys=True),
    )
    fs.remove(os.path.join(output_dir, IN_PROGRESS_FILE))
    return summary


def _write_csvs(output_dir: str, plan: dict[str, Any]) -> dict[str, Any]:
    lm_ids = plan["landmark_ids"]
    train_ids, labels, scenes = plan["train_ids"], plan["train_labels"], plan["train_scenes"]
    _write_csv(
        os.path.join(output_dir, "train.csv"),
        ["id", "url", "landmark_id"],
        [
            [i, f"https://synthetic.invalid/gldv2/train/{i}.jpg", int(lm_ids[c])]
            for i, c in zip(train_ids, labels, strict=True)
        ],
    )
    clean: dict[int, list[str]] = {}
    for image_id, label, scene in zip(train_ids, labels, scenes, strict=True):
        if label == scene:
            clean.setdefault(int(lm_ids[label]), []).append(image_id)
    clean = {lm: ids for lm, ids in clean.items() if len(ids) >= 2}
    _write_csv(
        os.path.join(output_dir, "train_clean.csv"),
        ["landmark_id", "images"],
        [[lm, " ".join(clean[lm])] for lm in sorted(clean)],
    )
    _write_csv(os.path.join(output_dir, "test.csv"), ["id"], [[i] for i in plan["test_ids"]])
    _write_csv(os.path.join(output_dir, "index.csv"), ["id"], [[i] for i in plan["index_ids"]])
    _write_csv(
        os.path.join(output_dir, SOLUTION_FILE),
        ["id", "landmarks", "Usage"],
        [
            [i, "" if s < 0 else int(lm_ids[s]), u]
            for i, s, u in zip(
                plan["test_ids"], plan["test_scenes"], plan["test_usage"], strict=True
            )
        ],
    )
    sizes = plan["sizes"]
    n_test_nl = int((plan["test_scenes"] < 0).sum())
    return {
        "num_classes": len(lm_ids),
        "num_train": len(train_ids),
        "num_train_label_noise": int(((scenes >= 0) & (scenes != labels)).sum()),
        "num_train_nonlandmark_noise": int((scenes < 0).sum()),
        "num_clean_classes": len(clean),
        "num_clean_images": sum(len(v) for v in clean.values()),
        "num_test": len(plan["test_ids"]),
        "num_test_landmark": len(plan["test_ids"]) - n_test_nl,
        "num_test_nonlandmark": n_test_nl,
        "num_index": len(plan["index_ids"]),
        "class_size_min": int(sizes.min()),
        "class_size_median": float(np.median(sizes)),
        "class_size_max": int(sizes.max()),
    }


# --------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None, generate: Callable[..., dict] = generate_gldv2_like) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_classes", type=int, default=60)
    parser.add_argument("--min_images", type=int, default=2)
    parser.add_argument("--max_images", type=int, default=120)
    parser.add_argument("--num_test", type=int, default=300)
    parser.add_argument("--test_nonlandmark_fraction", type=float, default=0.7)
    parser.add_argument("--num_index", type=int, default=100)
    parser.add_argument("--label_noise", type=float, default=0.0)
    parser.add_argument("--nonlandmark_noise", type=float, default=0.0)
    parser.add_argument(
        "--image_size",
        type=_parse_size,
        default=(160, 120),
        help="WIDTHxHEIGHT of landscape images, e.g. 160x120",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--nonlandmark_scenes",
        type=int,
        default=12,
        help="generic scenes the non-landmark images are views of (0: all different)",
    )
    parser.add_argument("--no_progress", action="store_true")
    args = vars(parser.parse_args(argv))
    output_dir = args.pop("output_dir")
    show_progress = not args.pop("no_progress")
    try:
        summary = generate(output_dir, show_progress=show_progress, **args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

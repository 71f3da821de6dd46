"""List (and optionally drop) likely-noisy training images with a trained
Sub-center head: images farther than `--threshold_degrees` from their class's
dominant sub-centre (the Sub-center ArcFace paper's clean-up step).

    python -m gld_jax.clean_labels --config configs/demo.py --workdir runs/demo \
        --output runs/demo/noisy.csv --drop_to runs/demo/train_cleaned.csv

`--output` lists id, landmark_id, angle (degrees), sorted by angle. `--drop_to`
writes train.csv without the listed images (same columns as GLDv2's train.csv),
ready to convert again and retrain.
"""

from __future__ import annotations

import csv
import os
import sys

from absl import flags
from ml_collections import config_flags

from gld_jax.utils.cli import cpu_only_when_no_accelerator, parse_flags, quiet_tensorflow

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to the run's configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's directory.")
_OUTPUT = flags.DEFINE_string("output", None, "CSV of listed images.")
_DROP_TO = flags.DEFINE_string("drop_to", None, "Optional: train.csv without them.")
_THRESHOLD = flags.DEFINE_float("threshold_degrees", 75.0, "Angle above which an image is listed.")
_MIN_PER_CLASS = flags.DEFINE_integer(
    "min_per_class", 0, "Never list a class's this many closest images (0: the paper's rule)."
)


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parse_flags(list(sys.argv if argv is None else argv))
    if not _WORKDIR.value or not _OUTPUT.value:
        print("error: --workdir and --output are required", file=sys.stderr)
        return 2
    from gld_jax.utils import fs

    problem = next(
        filter(
            None,
            (
                fs.unsupported_scheme(path, key)
                for key, path in (
                    ("--workdir", _WORKDIR.value),
                    ("--output", _OUTPUT.value),
                    ("--drop_to", _DROP_TO.value or ""),
                )
            ),
        ),
        None,
    )
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cpu_only_when_no_accelerator()

    import jax
    import numpy as np

    from gld_jax.data.prepare import prepare_data, resolve_dirs
    from gld_jax.pipeline import _eval_split
    from gld_jax.retrieval.extract import Embedder
    from gld_jax.train.label_noise import angles_to_dominant, select_noisy
    from gld_jax.train.mesh import make_mesh
    from gld_jax.train.trainer import RunNotFinished, restore_trained_model

    config, workdir = _CONFIG.value, _WORKDIR.value
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    tfrecord_dir = prepare_data(config, workdir)
    try:
        result = restore_trained_model(
            config, workdir=workdir, tfrecord_dir=tfrecord_dir, mesh=mesh
        )
    except RunNotFinished as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = result.plans[-1]
    emb, aux = _eval_split(
        config, tfrecord_dir, plan, "train", Embedder(result.model, mesh), "embed train"
    )
    keep = aux["label"] >= 0
    centers = np.asarray(jax.device_get(result.model.head.centers[...]))
    angles = angles_to_dominant(emb.embeddings[keep], centers, aux["label"][keep])
    ids, landmarks = emb.ids[keep], emb.labels[keep]
    listed = select_noisy(angles, landmarks, _THRESHOLD.value, _MIN_PER_CLASS.value)
    order = np.argsort(-angles[listed], kind="stable")
    with fs.open_file(_OUTPUT.value + ".tmp", "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "landmark_id", "angle_degrees"])
        for i in order:
            w.writerow([ids[listed][i], int(landmarks[listed][i]), f"{angles[listed][i]:.2f}"])
    fs.replace(_OUTPUT.value + ".tmp", _OUTPUT.value)  # never a half-written list
    print(
        f"listed {int(listed.sum())} of {len(ids)} images above {_THRESHOLD.value} degrees "
        f"(label set {plan.label_set!r}) in {_OUTPUT.value}"
    )
    emptied = len(np.unique(landmarks)) - len(np.unique(landmarks[~listed]))
    if emptied:
        print(
            f"warning: {emptied} of {len(np.unique(landmarks))} classes lose every image; "
            "--min_per_class N keeps each class's N closest",
            file=sys.stderr,
        )
    if _DROP_TO.value:
        dropped = set(ids[listed].tolist())
        data_dir, _ = resolve_dirs(config, workdir)
        with (
            fs.open_file(os.path.join(data_dir, "train.csv")) as src,
            fs.open_file(_DROP_TO.value + ".tmp", "w") as dst,
        ):
            reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\n")
            writer.writerow(next(reader))
            kept = 0
            for row in reader:
                if row and row[0] not in dropped:
                    writer.writerow(row)
                    kept += 1
        fs.replace(_DROP_TO.value + ".tmp", _DROP_TO.value)
        print(f"wrote {kept} rows to {_DROP_TO.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

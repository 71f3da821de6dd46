"""Recognising photos against the pipeline's own embedding, and the exported
SavedModel's latency against the JAX function's, for one finished run.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/recognize.py \\
        --workdir runs/demo [--num_images 300] [--repeats 50]

Four figures, each after a warm-up pass (compiles and caches excluded):

- `recognise_images_per_s`: the run's test photos (its data dir's test/ files,
  cycled up to `--num_images`) through `gld_jax.embed_photos`: read, the
  converter's checks, decode and resize on a thread pool, the jitted embedding
  step with the head's top-k, at the run's eval batch size;
- `pipeline_images_per_s`: the same model's embedding of the test split from
  its TFRecords (`input_pipeline.eval_dataset` + the Embedder), as a run embeds;
- `saved_model_ms`: the median of `--repeats` calls of the exported
  SavedModel's `serving_default` on one decoded test photo (resize in the graph);
- `jax_ms`: the same for the jitted JAX function (`retrieval.descriptor`).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="runs/demo", help="a finished run (make demo)")
    p.add_argument("--num_images", type=int, default=300)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from gld_jax.utils.cli import cpu_only_when_no_accelerator

    cpu_only_when_no_accelerator()
    import jax
    import numpy as np
    import tensorflow as tf

    from gld_jax.data import input_pipeline
    from gld_jax.data.photo_files import expand_inputs
    from gld_jax.embed_photos import batch_size_for, embed_photos
    from gld_jax.export import write_saved_model
    from gld_jax.retrieval.descriptor import descriptor_of_image, make_descriptor
    from gld_jax.trained_run import find_run, open_run

    run = open_run(find_run(args.workdir))
    files, _ = expand_inputs([os.path.join(run.files.data_dir, "test")])
    photos = [files[i % len(files)] for i in range(args.num_images)]
    batch = batch_size_for([run])

    embed_photos([run], photos[:batch], show_progress=False)  # compile
    recognise_s = _timed(lambda: embed_photos([run], photos, show_progress=False))

    embedder = run.embedder()

    def pipeline_pass() -> None:
        ds = input_pipeline.eval_dataset(
            run.tfrecord_dir,
            split="test",
            image_size=run.image_size,
            batch_size=batch,
            label_set=run.label_set,
            dct_scaling=run.config.input.dct_scaling,
        )
        embedder(ds, desc="pipeline")

    pipeline_pass()  # compile
    pipeline_s = _timed(pipeline_pass)
    test_images = input_pipeline.num_examples(run.tfrecord_dir, "test", label_set=run.label_set)

    desc = make_descriptor([run.model], [run.image_size])
    image = tf.io.decode_jpeg(open(files[0], "rb").read(), channels=3)
    with tempfile.TemporaryDirectory(prefix="gldjax-bench-export-") as out:
        write_saved_model(out, desc, ["cpu"])
        serve = tf.saved_model.load(out).signatures["serving_default"]
        serve(input_image=image)
        saved = [
            _timed(lambda: serve(input_image=image)["global_descriptor"].numpy())
            for _ in range(args.repeats)
        ]
    fn = jax.jit(lambda leaves, x: descriptor_of_image(desc, leaves, x))
    leaves = [jax.device_put(x) for x in desc.leaves]
    pixels = jax.device_put(np.asarray(image))
    fn(leaves, pixels).block_until_ready()
    jax_times = [
        _timed(lambda: fn(leaves, pixels).block_until_ready()) for _ in range(args.repeats)
    ]

    print(
        json.dumps(
            {
                "workdir": args.workdir,
                "backbone": run.config.model.backbone,
                "image_size": run.image_size,
                "batch_size": batch,
                "devices": jax.device_count(),
                "photo_height_width": list(np.asarray(image).shape[:2]),
                "recognise_images": len(photos),
                "recognise_images_per_s": round(len(photos) / recognise_s, 1),
                "pipeline_images": test_images,
                "pipeline_images_per_s": round(test_images / pipeline_s, 1),
                "saved_model_ms": round(1000 * statistics.median(saved), 2),
                "jax_ms": round(1000 * statistics.median(jax_times), 2),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Export a trained run (or an ensemble) as a TensorFlow SavedModel that maps one
image to its global descriptor, and as a `jax.export` artifact.

    python -m gld_jax.export --workdir runs/demo --output exported/demo
    python -m gld_jax.export --ensemble configs/ensemble.py \\
        --ensemble.runs_root=gs://BUCKET/runs --output gs://BUCKET/exported/ensemble

`--output DIR` becomes:

- a SavedModel (`tf.saved_model.load(DIR)`) whose `serving_default` signature
  takes `input_image`, one uint8 image `[H, W, 3]` of any size, and returns
  `global_descriptor`, float32 `[D]`, L2-normalised. The run's eval
  preprocessing is inside the graph: the pipeline's own resize to the final
  stage's size (TensorFlow's antialiased bilinear, rounded to uint8); the model
  normalises its input itself. The model is jax2tf's native serialization
  (StableHLO) for CPU, CUDA and TPU, with the weights as variables. An
  ensemble is one model whose descriptor is the weighted, normalised
  concatenation its search uses (each model at its own size).
- `DIR/jax/descriptor.jax` and `DIR/jax/params.npz`: the same function for
  JAX alone (`jax.export.deserialize(...).call(params, image)`, the resize in
  JAX), no TensorFlow or gld_jax needed.
- `DIR/export.json`: runs, weights, image sizes, descriptor size; written last.

Before it finishes, the export checks both artifacts against the JAX function
on one image and prints their cosines in its one-line JSON summary.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gld_jax.utils import fs
from gld_jax.utils.cli import (
    EXIT_USAGE,
    cpu_only_when_no_accelerator,
    print_user_error,
    quiet_tensorflow,
    user_errors,
)

if TYPE_CHECKING:
    from gld_jax.retrieval.descriptor import Descriptor

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
JAX_DIR = "jax"
JAX_FUNCTION = "descriptor.jax"
JAX_PARAMS = "params.npz"
META = "export.json"


def _parser():
    from gld_jax.trained_run import run_parser

    p = run_parser(
        "python -m gld_jax.export",
        "Export a trained run or an ensemble as a SavedModel (image -> descriptor).",
    )
    p.add_argument("--output", required=True, help="folder for the SavedModel (created)")
    p.add_argument(
        "--platforms",
        default="cpu,cuda,tpu",
        help="comma-separated platforms the serialized function is lowered for",
    )
    return p


def _params_npz(leaves: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    # Zero-padded names: sorted(np.load(...).files) is the argument order.
    return {f"p{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}


def write_saved_model(directory: str, desc: Descriptor, platforms: Sequence[str]) -> None:
    """The SavedModel of `desc` (gld_jax.retrieval.descriptor.Descriptor) in `directory`."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    from gld_jax.data.augment import resize_square
    from gld_jax.retrieval.descriptor import descriptors_from_images

    variables = [
        tf.Variable(x, trainable=False, name=f"p{i:05d}") for i, x in enumerate(desc.leaves)
    ]
    model = jax2tf.convert(
        lambda leaves, *images: descriptors_from_images(desc, leaves, images),
        native_serialization_platforms=tuple(platforms),
        with_gradient=False,
    )

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="input_image")],
    )
    def serve(input_image):
        # The eval pipeline's resize (gld_jax.data.augment), per model's size.
        images = [resize_square(input_image, part.image_size)[None] for part in desc.parts]
        return {"global_descriptor": model(variables, *images)[0]}

    module = tf.Module()
    module.params = variables  # tracked: saved as the SavedModel's variables
    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def write_jax_export(directory: str, desc: Descriptor, platforms: Sequence[str]) -> None:
    """`descriptor.jax` (serialized jax.export.Exported of (params, image) -> [D],
    the image's size symbolic) and `params.npz` in `directory`."""
    import jax
    from jax import export

    from gld_jax.retrieval.descriptor import descriptor_of_image

    height, width = export.symbolic_shape("height, width")
    args = (
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in desc.leaves],
        jax.ShapeDtypeStruct((height, width, 3), np.uint8),
    )
    exported = export.export(
        jax.jit(lambda leaves, image: descriptor_of_image(desc, leaves, image)),
        platforms=tuple(platforms),
    )(*args)
    fs.makedirs(directory)
    fs.write_atomic(os.path.join(directory, JAX_FUNCTION), bytes(exported.serialize()))
    fs.save_npz(os.path.join(directory, JAX_PARAMS), **_params_npz(desc.leaves))


def load_jax_export(directory: str):
    """(exported function, params) of `write_jax_export`'s folder: call it as
    ``fn.call(params, image)``."""
    from jax import export

    with fs.open_file(os.path.join(directory, JAX_FUNCTION), "rb") as f:
        fn = export.deserialize(bytearray(f.read()))
    z = fs.load_npz(os.path.join(directory, JAX_PARAMS))
    return fn, [z[k] for k in sorted(z)]


def _check(directory: str, desc: Descriptor) -> dict[str, float]:
    """Cosines of both artifacts' descriptors of one image to the JAX function's."""
    import jax
    import tensorflow as tf

    from gld_jax.retrieval.descriptor import descriptor_of_image

    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    want = np.asarray(jax.jit(lambda p, x: descriptor_of_image(desc, p, x))(desc.leaves, image))
    served = tf.saved_model.load(directory).signatures["serving_default"]
    got = served(input_image=tf.constant(image))["global_descriptor"].numpy()
    fn, params = load_jax_export(os.path.join(directory, JAX_DIR))
    jax_got = np.asarray(fn.call(params, image))
    return {
        "saved_model_cosine": round(float(got @ want), 6),
        "jax_export_cosine": round(float(jax_got @ want), 6),
    }


def _output_problem(directory: str) -> str | None:
    """A folder that holds anything but an earlier export is not overwritten."""
    if not fs.exists(directory):
        return None
    if not fs.isdir(directory):
        return f"--output {directory} is a file"
    if fs.listdir(directory) and not fs.exists(os.path.join(directory, META)):
        return f"--output {directory} is not empty and holds no earlier export: choose a new one"
    return None


def _usage_problem(args, platforms: Sequence[str]) -> str | None:
    from gld_jax.trained_run import runs_problem

    if problem := runs_problem(args):
        return problem
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        return f"--platforms: unknown {unknown or 'none'}; choose from {', '.join(PLATFORMS)}"
    for flag in ("workdir", "config", "output"):
        if problem := fs.unsupported_scheme(getattr(args, flag) or "", f"--{flag}"):
            return problem
    return _output_problem(args.output)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow()
    from gld_jax.trained_run import parse_run_args

    args = parse_run_args(_parser(), list(sys.argv[1:] if argv is None else argv))
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    problem = _usage_problem(args, platforms)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    cpu_only_when_no_accelerator()

    from gld_jax.retrieval.descriptor import make_descriptor
    from gld_jax.trained_run import find_runs, open_run

    try:
        found, weights, _ = find_runs(args)
        runs = [open_run(f) for f in found]
        desc = make_descriptor([r.model for r in runs], [r.image_size for r in runs], weights)
        if fs.exists(os.path.join(args.output, META)):  # an earlier export: replaced whole
            fs.rmtree(args.output)
        write_saved_model(args.output, desc, platforms)
        write_jax_export(os.path.join(args.output, JAX_DIR), desc, platforms)
        meta = {
            "runs": [r.workdir for r in runs],
            "weights": weights,
            "image_sizes": [p.image_size for p in desc.parts],
            "descriptor_dim": desc.dim,
            "platforms": platforms,
            "signature": "serving_default: input_image uint8 [H, W, 3] -> "
            f"global_descriptor float32 [{desc.dim}]",
            "jax_export": f"{JAX_DIR}/{JAX_FUNCTION} (params: {JAX_DIR}/{JAX_PARAMS})",
        }
        check = _check(args.output, desc)
        fs.write_atomic(os.path.join(args.output, META), json.dumps(meta, indent=1))
    except user_errors() as e:
        return print_user_error(e)
    print(json.dumps({"saved_model": args.output, **meta, **check}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

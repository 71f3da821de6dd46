"""One JSON line describing a registered backbone.

    python -m gld_jax.models.backbone_stats --model resnest101 [--image_size 256]

Prints ``params`` (trainable backbone parameters, no classifier), ``batch_stats``
(BN running statistics), ``feature_dim``, ``default_resolution``, the feature map
shape and the forward cost of one image at ``--image_size`` (default: the
model's resolution): ``gflops`` as XLA counts it (a multiply-add is 2 FLOPs) and
``gmacs`` = gflops / 2, the unit papers and timm call "GFLOPs".
Nothing is initialised or run: shapes and costs come from tracing.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models.layers import traceable_rngs
from gld_jax.models.registry import BACKBONES, backbone_names, create_backbone


def backbone_summary(name: str, image_size: int | None = None) -> dict:
    """{'model', 'params', 'batch_stats', 'feature_dim', 'default_resolution',
    'image_size', 'feature_shape', 'gflops', 'gmacs'} for one image [1, S, S, 3]."""
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(backbone_names())}")
    size = image_size or BACKBONES[name].default_resolution
    if size < 32:
        raise ValueError(f"--image_size must be >= 32 pixels, got {size}")
    # lax convs everywhere: the standard op count, whatever form CPU would run.
    model = nnx.eval_shape(
        lambda: create_backbone(name, rngs=traceable_rngs(0), drop_path_rate=0.0, conv_impl="lax")[
            0
        ]
    )
    model.eval()
    graphdef, state = nnx.split(model)
    count = lambda kind: sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))  # noqa: E731
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    fwd = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    lowered = fwd.lower(state, x)
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0]
    flops = float(cost["flops"])
    out = jax.eval_shape(fwd, state, x)
    return {
        "model": name,
        "params": int(count(nnx.Param)),
        "batch_stats": int(count(nnx.BatchStat)),
        "feature_dim": int(model.feature_dim),
        "default_resolution": BACKBONES[name].default_resolution,
        "image_size": size,
        "feature_shape": list(out.shape),
        "gflops": round(flops / 1e9, 3),
        "gmacs": round(flops / 2e9, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gld_jax.models.backbone_stats", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(backbone_names())}")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="square input size in pixels (default: the model's resolution)",
    )
    args = parser.parse_args(argv)
    try:
        summary = backbone_summary(args.model, args.image_size)
    except ValueError as e:
        print(f"summary: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

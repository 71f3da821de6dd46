"""Full training step, ours vs timm/PyTorch on the same cores; prints one JSON line.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/train_step.py \
        --model efficientnet_b0 --image_size 128 --batch_size 32 \
        --peer_python /tmp/refvenv/bin/python

Ours: LandmarkModel (backbone + GeM + 512-d neck) + Sub-center ArcFace head
(K=3 x num_classes x 512) + AdamW, the trainer's own jitted step
(`gld_jax.train.step.make_train_step`) on one device, timed after compilation and
warm-up (median of --steps). Peer: timm's `tf_efficientnet_b0` (or the timm name
of --model) with the same neck, head size and AdamW in PyTorch
(`helpers/timm_peer.py`), run in --peer_python (a Python with torch and timm; torch is
not a product dependency). Without it the peer is skipped with a message.
--augment_ab times ours twice in the same run instead, without and with the
recipe's augmentations inside the step (`input.augment_on=device`), and skips the peer.
On GPU pass --dtype bfloat16 for ours and --peer_amp --peer_channels_last for the
peer (bfloat16 autocast, NHWC memory layout): the fair mixed-precision pairing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gld_jax.data.augment_config import AugmentConfig  # noqa: E402
from gld_jax.models.landmark import LandmarkModel  # noqa: E402
from gld_jax.train import mesh as mesh_lib  # noqa: E402
from gld_jax.train.optim import make_optimizer  # noqa: E402
from gld_jax.train.state import init_train_state, split_model  # noqa: E402
from gld_jax.train.step import make_train_step, state_shardings  # noqa: E402
from scripts.bench.helpers.timm_names import TIMM_NAMES as TIMM_PEERS  # noqa: E402


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The flags `build_ours` reads (shared with train_step_profile.py)."""
    ap.add_argument("--model", default="efficientnet_b0", choices=sorted(TIMM_PEERS))
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--num_classes", type=int, default=1000)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument(
        "--flax_bn",
        action="store_true",
        help="EfficientNet BN without the hand-written CPU gradient (A/B)",
    )


def build_ours(args, augment: bool = False):
    """(jitted step, state, batch, margins) of the benchmark, not yet compiled."""
    import ml_collections

    model = LandmarkModel(
        backbone=args.model,
        num_classes=args.num_classes,
        dtype=args.dtype,
        drop_path_rate=0.2,
        remat=args.remat,
        rngs=nnx.Rngs(0),
    )
    model.train()
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    opt_cfg = ml_collections.ConfigDict(
        dict(name="adamw", weight_decay=1e-4, momentum=0.9, grad_clip_norm=0.0)
    )
    tx = make_optimizer(opt_cfg, lambda step: 1e-3)
    graphdef, params, stats, rng_state = split_model(model)
    state = init_train_state(params, stats, tx)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    step = make_train_step(
        graphdef=graphdef,
        rng_state=rng_state,
        tx=tx,
        scale=80.0,
        key=jax.random.key(0),
        mesh=mesh,
        state_sharding=shardings,
        augment=AugmentConfig() if augment else None,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(
            rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8)
        ),
        "label": jnp.asarray(rng.integers(0, args.num_classes, args.batch_size), jnp.int32),
    }
    margins = jnp.full((args.num_classes,), 0.3, jnp.float32)
    return step, state, batch, margins


def time_ours(args, augment: bool = False) -> dict:
    step, state, batch, margins = build_ours(args, augment)
    t = time.perf_counter()
    state, metrics = step(state, batch, margins)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    for _ in range(args.warmup - 1):
        state, metrics = step(state, batch, margins)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = step(state, batch, margins)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    return {
        "compile_s": round(compile_s, 1),
        "step_s_median": round(median, 4),
        "images_per_s": round(args.batch_size / median, 2),
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def time_peer(args) -> dict | None:
    python = args.peer_python
    if not python or not os.path.exists(python):
        print(
            f"peer skipped: no Python with torch+timm at {python!r} (--peer_python)",
            file=sys.stderr,
        )
        return None
    cmd = [
        python,
        os.path.join(os.path.dirname(__file__), "helpers", "timm_peer.py"),
        "--model",
        TIMM_PEERS[args.model],
        "--image_size",
        str(args.image_size),
        "--batch_size",
        str(args.batch_size),
        "--num_classes",
        str(args.num_classes),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    if args.peer_channels_last:
        cmd.append("--channels_last")
    if args.peer_amp:
        cmd.append("--amp")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"peer skipped: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--peer_python", default=os.environ.get("GLD_JAX_PEER_PYTHON", "/tmp/refvenv/bin/python")
    )
    ap.add_argument("--peer_channels_last", action="store_true")
    ap.add_argument("--peer_amp", action="store_true")
    ap.add_argument("--skip_peer", action="store_true")
    ap.add_argument(
        "--augment_ab",
        action="store_true",
        help="time ours without and with device augmentation (no peer)",
    )
    args = ap.parse_args()
    # The peer runs first, before this process starts XLA: with our process's XLA
    # runtime alive, the torch subprocess ran 14 s/step instead of 1.0 s/step on the
    # shared 2-core machine (2026-11-27). Run first it still took 6.8 s/step, so
    # check the peer standalone too (see BENCHMARKS.md).
    if args.flax_bn:
        from gld_jax.models import layers

        layers.BatchNorm.hand_written_grad = False
    if args.augment_ab:
        plain, augmented = time_ours(args), time_ours(args, augment=True)
        out = {
            "bench": "train_step_device_augment",
            "model": args.model,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "device": str(jax.devices()[0].device_kind),
            "without": plain,
            "with_device_augment": augmented,
            "step_time_ratio": round(augmented["step_s_median"] / plain["step_s_median"], 3),
        }
        print(json.dumps(out))
        return 0
    peer = None if args.skip_peer else time_peer(args)
    ours = time_ours(args)
    out = {
        "bench": "train_step",
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_classes": args.num_classes,
        "dtype": args.dtype,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "ours": ours,
        "peer": peer,
    }
    if peer:
        out["ratio_ours_over_peer"] = round(ours["images_per_s"] / peer["images_per_s"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the augmentations cost inside the train step on a TPU, from XLA:TPU itself.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/device_augment_tpu.py \
        configs/effb3.py [--stage 0]

Compiles one stage of a recipe config for its target slice twice with the
deviceless compiler (libtpu, no TPU needed): with `input.augment_on=host` (the
step gets augmented images) and `=device` (the flip, warp and cutout inside
the step). Prints one JSON line: XLA's FLOPs, bytes accessed and temporaries
per device for both, their roofline step times and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gld_jax import compiled_plan  # noqa: E402
from gld_jax.config.defaults import resolve_mesh_shape  # noqa: E402
from gld_jax.dry_run import ACCELERATORS, GLDV2_COUNTS  # noqa: E402
from gld_jax.train import aot  # noqa: E402
from gld_jax.train import mesh as mesh_lib  # noqa: E402
from gld_jax.train.stages import plan_stages  # noqa: E402


def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--stage", type=int, default=0)
    args = ap.parse_args()
    config = _load(args.config)
    acc = ACCELERATORS[config.target.accelerator]
    n = config.target.num_devices
    keep = (config.folds - 1) / config.folds
    plans = plan_stages(
        config.stages,
        num_classes={k: c for k, (c, _) in GLDV2_COUNTS.items()},
        num_train={k: round(i * keep) for k, (_, i) in GLDV2_COUNTS.items()},
    )
    plan = plans[args.stage]
    topology, devices = aot.resolve_target_devices(config.target, n)
    mesh = mesh_lib.make_mesh(
        *resolve_mesh_shape(config.mesh.data, config.mesh.model, n), devices=devices
    )
    out = {
        "bench": "device_augment_tpu",
        "config": args.config,
        "topology": topology,
        "stage": plan.index,
        "image_size": plan.image_size,
        "global_batch": plan.batch_size,
    }
    for place in ("host", "device"):
        config.input.augment_on = place
        f, _ = compiled_plan._stage_figures(config, plan, mesh)
        compiled_plan._release_compiler_memory()
        out[place] = {
            "tflops": round(f.flops / 1e12, 4),
            "gb_accessed": round(f.bytes_accessed / 1e9, 3),
            "temp_gib": round(f.temp_bytes / 2**30, 3),
            "roofline_ms": round(
                f.roofline_seconds(acc.peak_flops, acc.hbm_bytes_per_second) * 1e3, 2
            ),
            "compile_s": round(f.compile_seconds, 1),
        }
        print(json.dumps(out[place]), file=sys.stderr, flush=True)
    out["roofline_ratio_device_over_host"] = round(
        out["device"]["roofline_ms"] / out["host"]["roofline_ms"], 4
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

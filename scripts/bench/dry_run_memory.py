"""The dry run's activation estimate against XLA's compiled memory analysis.

    .venv/bin/python scripts/bench/dry_run_memory.py --model efficientnet_b3 \
        --image_size 544 --batch 2 --dtype bfloat16

Compiles (does not run) the backward pass of backbone + GeM + neck on the
default backend at one device's micro-batch, and prints one JSON line: our
estimate (traced residuals x ACTIVATION_OVERHEAD, gld_jax.dry_run) next to the
compiled program's temporaries. On an accelerator this checks the calibration
that tests/test_dry_run.py checks on XLA:CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    import jax

    from gld_jax.dry_run import ACTIVATION_OVERHEAD, compiled_activation_bytes, embedder_costs

    _, fwd = embedder_costs(args.model, 512, args.dtype, False)
    residuals = fwd.at(args.image_size, args.batch)[1]
    t = time.perf_counter()
    temp = compiled_activation_bytes(args.model, args.image_size, args.batch, args.dtype)
    compile_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "model": args.model,
                "image_size": args.image_size,
                "batch": args.batch,
                "dtype": args.dtype,
                "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind,
                "compile_s": round(compile_s, 1),
                "residual_mib": round(residuals / 2**20, 1),
                "estimate_mib": round(residuals * ACTIVATION_OVERHEAD / 2**20, 1),
                "xla_temp_mib": round(temp / 2**20, 1),
                "estimate_over_xla": round(residuals * ACTIVATION_OVERHEAD / temp, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

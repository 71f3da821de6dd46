"""train_step.py under several XLA_FLAGS settings, one fresh process each.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/experiments/xla_flags_sweep.py \
        --model efficientnet_b0 --image_size 128 --batch_size 32 --steps 5 --warmup 2

Prints one JSON line per setting (images/s, step time, compile time, or the error)
and a Markdown table at the end. The baseline (no extra flags) runs first and
last, so drift from other load shows. --sets picks settings by name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

YNN = "--xla_cpu_experimental_ynn_fusion_type"
SETS = {
    "baseline": "",
    "ynn_off": f"{YNN}=",
    "ynn_-individual_dot": f"{YNN}=-individual_dot",
    "ynn_-reduce": f"{YNN}=-reduce",
    "ynn_-eltwise": f"{YNN}=-eltwise",
    "ynn_-individual_convolution": f"{YNN}=-individual_convolution",
    "xnnpack_off": "--xla_cpu_use_xnnpack=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "fusion_emitters_off": "--xla_cpu_use_fusion_emitters=false",
    "thunk_runtime_off": "--xla_cpu_use_thunk_runtime=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}


def run(name: str, flags: str, args) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [
        sys.executable,
        os.path.join(os.path.dirname(__file__), "train_step.py"),
        "--skip_peer",
        "--model",
        args.model,
        "--image_size",
        str(args.image_size),
        "--batch_size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    row = {
        "set": name,
        "xla_flags": flags,
        "wall_s": round(time.time() - t, 1),
        "loadavg": os.getloadavg()[0],
    }
    if res.returncode != 0:
        row["error"] = (res.stderr.strip().splitlines() or ["?"])[-1][:300]
    else:
        ours = json.loads(res.stdout.strip().splitlines()[-1])["ours"]
        row.update(ours)
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated of {list(SETS)}")
    args = ap.parse_args()
    names = [n for n in args.sets.split(",") if n]
    if names[0] != "baseline":
        names.insert(0, "baseline")
    names.append("baseline")
    rows = [run(n, SETS[n], args) for n in names]
    print("\n| XLA_FLAGS | images/s | step s | compile s |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| `{r['xla_flags'] or '(none)'}` | error: {r['error'][:80]} | | |")
        else:
            print(
                f"| `{r['xla_flags'] or '(none)'}` | {r['images_per_s']} | {r['step_s_median']} "
                f"| {r['compile_s']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

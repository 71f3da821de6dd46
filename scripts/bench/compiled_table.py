"""The recipe configs compiled for their TPU slice: one markdown table.

    .venv/bin/python scripts/bench/compiled_table.py configs/effb3.py ... [--out DIR] [-- overrides]

Runs `python -m gld_jax.main --config C --dry_run --compile --json` for each
config in turn (one compile at a time: on 2 cores a second would distort both),
keeps each JSON report in --out (a config whose report is already there is not
compiled again, so an interrupted sweep resumes), and prints per stage: px,
per-device batch, micro-batches, XLA:TPU's peak GiB per device, the plain dry
run's estimate (rerun with the current code: seconds), the largest per-device
batch that fits in one pass, the roofline step time and the stage's hours at
the roofline, and the compile time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from gld_jax.utils import fs  # noqa: E402


def run_one(config: str, out_dir: str, overrides: list[str]) -> dict:
    name = os.path.splitext(os.path.basename(config))[0]
    path = os.path.join(out_dir, f"{name}.json")
    if fs.exists(path):
        with fs.open_file(path) as f:
            return json.load(f)
    cmd = [sys.executable, "-m", "gld_jax.main", "--config", config, "--dry_run", "--compile"]
    cmd += ["--json", *overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if not res.stdout.strip():
        sys.exit(f"{config}: {res.stderr.strip().splitlines()[-1] if res.stderr else 'no output'}")
    report = json.loads(res.stdout)
    report["wall_seconds"] = time.perf_counter() - t0
    with fs.open_file(path + ".tmp", "w") as f:
        json.dump(report, f)
    fs.replace(path + ".tmp", path)
    print(f"{config}: {report['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    return report


def estimate(config: str, overrides: list[str]) -> dict:
    """The plain dry run's report (seconds; nothing compiled), for the estimate
    column as the current code makes it."""
    cmd = [sys.executable, "-m", "gld_jax.main", "--config", config, "--dry_run", "--json"]
    res = subprocess.run(
        [*cmd, *overrides],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
    )
    return json.loads(res.stdout)


def table(reports: list[dict], estimates: list[dict]) -> str:
    rows = [
        "| config | stage | px | batch/device | micro-batches | compiled GiB/device | "
        "estimate GiB/device | largest batch/device (one pass) | roofline step | "
        "hours at roofline | compile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, est in zip(reports, estimates, strict=True):
        name = os.path.splitext(os.path.basename(r["config"]))[0]
        for s, e in zip(r["stages"], est["stages"], strict=True):
            c = s["compiled"]
            rows.append(
                f"| {name} | {s['stage']} | {s['image_size']} | {s['per_device_batch']} | "
                f"{s['accumulate_steps']} | {c['peak_gib']:.2f} | "
                f"{e['memory_gib_per_device']['total']:.2f} | {c['largest_batch_per_device']} | "
                f"{c['roofline_seconds'] * 1e3:.0f} ms | {c['step_hours']:.1f} | "
                f"{c['compile_seconds']:.0f} s |"
            )
        e = r["embed_compiled"]
        rows.append(
            f"| {name} | embed | {e['image_size']} | {e['global_batch'] // r['num_devices']} | 1 "
            f"| {e['peak_gib']:.2f} | | | {e['roofline_seconds'] * 1e3:.0f} ms | | "
            f"{e['compile_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--out", default="/tmp/gldjax-compiled")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]  # `... -- --config.x=1` as documented
    fs.makedirs(args.out)
    reports = [run_one(c, args.out, overrides) for c in args.configs]
    print(table(reports, [estimate(c, overrides) for c in args.configs]))
    fits = all(r["fits"] for r in reports)
    print(json.dumps({"configs": len(reports), "all_fit": fits}))


if __name__ == "__main__":
    main()

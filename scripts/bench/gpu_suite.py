"""Every GPU figure in one run: the train step against timm, the step's roofline,
the augmentations inside the step, and the exact search against its matmul bound
and PyTorch. Run by scripts/bench/gpu_suite.sh; prints one JSON line per row.

    python scripts/bench/gpu_suite.py --out DIR            # on a GPU machine
    python scripts/bench/gpu_suite.py --smoke --out DIR    # any machine, tiny sizes

Each row is a job in its own process, so the jobs of a wave compile at once on
the host's cores. Then, once all of them have compiled and warmed up (XLA's
autotuning runs kernels on the device while it compiles), the driver lets
them run their timed parts one at a time (`timed_phase`). A job that fails
or is not ready in time gives a row with its error; the others still run.

Rows (`bench` field):
- `train_step`: ours (bfloat16, the trainer's jitted step: backbone + GeM + neck
  + Sub-center head + AdamW) with XLA's cost analysis of the compiled step
  (bytes, FLOPs) as a roofline beside the measured time; timm eager and with
  `torch.compile`, both with bfloat16 autocast and channels_last
  (helpers/timm_peer.py), cuDNN autotuned. B0 224 px batch 128, B5 456 px batch 32.
- `variant`: ours with the augmentations inside the step. (For an A/B of
  BatchNorm, `gpu_suite.py --job train_ours --model efficientnet_b0 --size 224
  --batch 128 --bn flax` times ours with flax's own BatchNorm in place of the
  hand-written fused form the GPU step uses.)
- `search`: all GLDv2 test queries (117,577) against its index (1,580,470 rows)
  in bfloat16, exact top-5, at 512 and 3,072 dims: each per-device method of
  gld_jax.retrieval.accelerator_search on device-resident blocks, the user path
  (AcceleratorIndex from numpy), PyTorch's `q @ X.T` + `torch.topk` in blocks
  of 8,192, and the matmul's bound at the device's peak; agreement of each
  method's rows with the one-pass search.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# Vendor figure for the H200 SXM: dense bfloat16 989 TFLOP/s, HBM3e 4.8 TB/s.
PEAK_FLOPS = float(os.environ.get("GLD_JAX_PEAK_FLOPS", 989e12))
HBM_BYTES_PER_S = float(os.environ.get("GLD_JAX_HBM_BYTES_PER_S", 4.8e12))


@contextlib.contextmanager
def timed_phase():
    """The job's timed part: it waits until the driver says go (every job of
    the wave has compiled and warmed up, and no other job is timing), and
    tells the driver when it is done. Outside the driver it just runs."""
    folder, name = os.environ.get("GLD_JAX_SUITE_DIR"), os.environ.get("GLD_JAX_SUITE_JOB")
    if not folder:
        yield
        return
    _touch(os.path.join(folder, name + ".ready"))
    while not os.path.exists(os.path.join(folder, name + ".go")):
        time.sleep(0.05)
    try:
        yield
    finally:
        _touch(os.path.join(folder, name + ".done"))


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


# ---------------------------------------------------------------- train step (ours)


def job_train_ours(a) -> dict:
    if a.xla_flags:  # before JAX reads XLA_FLAGS
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {a.xla_flags}".strip()
    import jax

    from gld_jax.models import batch_norm
    from scripts.bench.train_step import build_ours

    # "default": the product's BatchNorm; "flax": flax's own on this backend;
    # "fused" / "fused_one_pass": the hand-written form (two- or one-pass stats).
    if a.bn == "flax":
        batch_norm.BatchNorm.fused_backends = ("cpu",) if jax.default_backend() != "cpu" else ()
    elif a.bn in ("fused", "fused_one_pass"):
        batch_norm.BatchNorm.fused_backends = ("cpu", "gpu", "tpu")
        batch_norm.BatchNorm.one_pass_backends = (
            ("cpu", "gpu", "tpu") if a.bn == "fused_one_pass" else ()
        )
    args = argparse.Namespace(
        model=a.model,
        image_size=a.size,
        batch_size=a.batch,
        num_classes=1000,
        dtype="bfloat16",
        remat=False,
    )
    step, state, batch, margins = build_ours(args, augment=a.augment)
    t = time.perf_counter()
    compiled = step.lower(state, batch, margins).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    losses = []  # kept on the device, read after timing: where a loss turns non-finite
    for _ in range(a.warmup):
        state, metrics = compiled(state, batch, margins)
        losses.append(metrics["loss"])
    jax.block_until_ready(metrics)
    with timed_phase():
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()
            state, metrics = compiled(state, batch, margins)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
            losses.append(metrics["loss"])
    finite = [bool(f) for f in jax.numpy.isfinite(jax.numpy.stack(losses))]
    step_s = _median(times)
    flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    roofline = max(flops / PEAK_FLOPS, nbytes / HBM_BYTES_PER_S)
    return {
        "images_per_s": round(a.batch / step_s, 1),
        "step_ms": round(1e3 * step_s, 2),
        "compile_s": round(compile_s, 1),
        "xla_tflop_per_step": round(flops / 1e12, 3),
        "xla_gb_per_step": round(nbytes / 1e9, 2),
        "roofline_ms": round(1e3 * roofline, 2),
        "measured_over_roofline": round(step_s / roofline, 2) if roofline else None,
        "loss_finite": all(finite),
        "first_nonfinite_step": None if all(finite) else finite.index(False),
        "loss_first_last": [round(float(losses[0]), 3), round(float(losses[-1]), 3)],
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }


# ---------------------------------------------------------------- train step (timm)


def job_train_timm(a) -> dict:
    """timm eager and/or timm with torch.compile (model and loss), per --modes."""
    import torch

    from scripts.bench.helpers import timm_peer
    from scripts.bench.helpers.timm_names import TIMM_NAMES

    if not torch.cuda.is_available() and not a.smoke:
        raise RuntimeError("no CUDA device for the PyTorch peer")
    out, steps = {}, {}
    for name in a.modes.split(","):  # all built and warmed (compiled) first
        steps[name] = timm_peer.build_step(
            TIMM_NAMES.get(a.model, a.model),
            image_size=a.size,
            batch_size=a.batch,
            num_classes=1000,
            amp=True,
            channels_last=True,
            compile=name == "compiled",
        )
        t = time.perf_counter()
        for _ in range(a.warmup):
            steps[name]()
        out[name] = {"warmup_s": round(time.perf_counter() - t, 1)}
    with timed_phase():
        for name, step in steps.items():
            times = []
            for _ in range(a.steps):
                t = time.perf_counter()
                step()  # returns loss.item(): waits for the device
                times.append(time.perf_counter() - t)
            out[name]["images_per_s"] = round(a.batch / _median(times), 1)
            out[name]["step_ms"] = round(1e3 * _median(times), 2)
    out["torch"] = torch.__version__
    return out


# ---------------------------------------------------------------- search


def _clustered(key, n, dim, clusters, dtype):
    """[n, dim] unit rows: a random centre each plus noise, made on the device
    in chunks (a float32 copy of the whole set would not fit beside the rest)."""
    import jax
    import jax.numpy as jnp

    k1, k2, k3 = jax.random.split(key, 3)
    centres = jax.random.normal(k1, (clusters, dim), jnp.float32)
    labels = jax.random.randint(k2, (n,), 0, clusters)

    @jax.jit
    def make(labels, key):
        x = centres[labels] + jax.random.normal(key, (labels.shape[0], dim), jnp.float32)
        return (x / jnp.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)

    chunk = 1 << 18
    parts = [make(labels[i : i + chunk], jax.random.fold_in(k3, i)) for i in range(0, n, chunk)]
    return jnp.concatenate(parts)


def job_search(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from gld_jax.retrieval import accelerator_search as acc

    dim, n, nq, k = a.dim, a.rows, a.queries, 5
    devices = jax.devices()[:1]
    mesh = Mesh(np.array(devices), (acc.ROWS_AXIS,))
    memory = acc.device_memory_bytes(devices[0])
    out: dict = {
        "dim": dim,
        "rows": n,
        "queries": nq,
        "k": k,
        "dtype": "bfloat16",
        "device": devices[0].device_kind,
        "matmul_bound_s": 2.0 * nq * n * dim / PEAK_FLOPS,
        "methods": {},
    }
    key = jax.random.key(0)
    index = _clustered(key, n, dim, a.clusters, jnp.bfloat16)
    queries = _clustered(jax.random.fold_in(key, 1), nq, dim, a.clusters, jnp.bfloat16)
    # One padded copy of the rows serves every method (whole bins and tiles).
    per_device = -(-n // acc.PARTIAL_MULTIPLE) * acc.PARTIAL_MULTIPLE
    rows = jnp.zeros((per_device, dim), jnp.bfloat16).at[:n].set(index)
    rows = jax.device_put(rows, NamedSharding(mesh, P(acc.ROWS_AXIS, None)))
    host_index = np.asarray(index, np.float32) if a.user_path else None
    del index
    runs = {}
    for spec in a.methods.split(","):
        # "pallas@BQxBNxBKxWARPSxSTAGES": the kernel with other tiles.
        method, _, tiles = spec.partition("@")
        try:
            from gld_jax.retrieval import pallas_bin_max

            pallas_bin_max.DEFAULT_TILES = (
                pallas_bin_max.KernelTiles(*(int(t) for t in tiles.split("x")))
                if tiles
                else pallas_bin_max.KernelTiles()
            )
            plan = acc.plan_search(
                n, dim, devices=1, dtype="bfloat16", k=k, memory_bytes=memory, method=method
            )
            program = acc.program_for(plan, mesh, k=k, valid_rows=n, dtype="bfloat16")
            block = plan.query_block
            padded = jnp.zeros((-(-nq // block) * block, dim), jnp.bfloat16).at[:nq].set(queries)
            blocks = [padded[i : i + block] for i in range(0, padded.shape[0], block)]
            t = time.perf_counter()
            jax.block_until_ready(program(blocks[0], rows, rows))
            info = {"bin_size": plan.bin_size, "query_block": block}
            info["compile_s"] = round(time.perf_counter() - t, 1)
            runs[spec] = (program, blocks, info)
        except Exception as err:  # one method's failure must not lose the others
            out["methods"][spec] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
    searcher = None
    if a.user_path:  # AcceleratorIndex built from host rows, searched from host queries
        host_queries = np.asarray(queries, np.float32)
        t = time.perf_counter()
        searcher = acc.AcceleratorIndex(host_index, num_neighbors=k, dtype="bfloat16")
        build_s = time.perf_counter() - t
        del host_index
        searcher.search(host_queries[:256], k)
    results = {}
    with timed_phase():
        for spec, (program, blocks, _info) in runs.items():
            try:
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    res = [program(b, rows, rows) for b in blocks]
                    jax.block_until_ready(res)
                    times.append(time.perf_counter() - t)
                results[spec] = (res, min(times))
            except Exception as err:
                out["methods"][spec] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
        if searcher is not None:
            t = time.perf_counter()
            searcher.search(host_queries, k)
            out["user_path"] = {
                "method": searcher.method,
                "build_s": round(build_s, 2),
                "search_s": round(time.perf_counter() - t, 3),
            }
    reference = None
    for spec, (res, best) in results.items():
        ids = np.concatenate([np.asarray(r[1]) for r in res])[:nq]
        sims = np.concatenate([np.asarray(r[0]) for r in res])[:nq]
        row = {
            "search_s": round(best, 4),
            "over_bound": round(best / out["matmul_bound_s"], 2),
            **runs[spec][2],
            "self_check_ok": bool(all(bool(r[2]) for r in res)),
        }
        if reference is None:
            reference = (spec, ids, sims)
        else:
            row["same_rows_as_" + reference[0]] = round(float((ids == reference[1]).mean()), 6)
            row["max_abs_cos_diff"] = float(np.abs(sims - reference[2]).max())
        out["methods"][spec] = row
    return out


def job_search_torch(a) -> dict:
    """PyTorch's matmul + topk in blocks of --block queries, and its bf16 matmul
    rate on a square 8,192 product (the practical ceiling)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)

    def clustered(n, seed):
        g.manual_seed(seed)
        centres = torch.randn(a.clusters, a.dim, device=dev, generator=g)
        labels = torch.randint(0, a.clusters, (n,), device=dev, generator=g)
        out = torch.empty(n, a.dim, device=dev, dtype=torch.bfloat16)
        for i in range(0, n, 1 << 18):
            lab = labels[i : i + (1 << 18)]
            x = centres[lab] + torch.randn(len(lab), a.dim, device=dev, generator=g)
            out[i : i + len(lab)] = torch.nn.functional.normalize(x, dim=1)
        return out

    index, queries = clustered(a.rows, 0), clustered(a.queries, 1)

    def search():
        out = []
        for i in range(0, a.queries, a.block):
            out.append(torch.topk(queries[i : i + a.block] @ index.T, 5, dim=1))
        torch.cuda.synchronize() if dev == "cuda" else None
        return out

    search()  # warm-up
    with timed_phase():
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            search()
            times.append(time.perf_counter() - t)
        m = 8192 if not a.smoke else 256
        x = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
        (x @ x).sum().item()
        t = time.perf_counter()
        for _ in range(10):
            y = x @ x
        y.sum().item()
        rate = 10 * 2 * m**3 / (time.perf_counter() - t)
    return {
        "dim": a.dim,
        "search_s": round(min(times), 4),
        "matmul_tflops": round(rate / 1e12, 1),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------- driver

JOBS = {
    "train_ours": job_train_ours,
    "train_timm": job_train_timm,
    "search": job_search,
    "search_torch": job_search_torch,
}


def plan_jobs(smoke: bool) -> list[tuple[str, int, list[str]]]:
    """(row name, wave, job arguments) of every row. The jobs of a wave start
    together and the next wave when they are done, so that no two waves
    share the device's memory. The waves go from the surest to the longest:
    our searches (one at a time: the 3,072-dim index, its padded copy and a
    block's scores take most of the device), PyTorch's, then every train-step
    row at once (their compiles, XLA's autotuning and inductor's, overlap on
    the host's cores: six B0 and B5 rows took 249 s together on an H200
    machine's 16 cores, against 483 s in waves of their own)."""
    if smoke:
        train = [("efficientnet_b0_shallow", 32, 4)]
        searches = [("64", "8192", "512", "64")]
        steps = ["--steps", "3", "--warmup", "1"]
    else:
        train = [("efficientnet_b5", 456, 32), ("efficientnet_b0", 224, 128)]
        searches = [
            ("3072", "1580470", "117577", "81313"),
            ("512", "1580470", "117577", "81313"),
        ]
        steps = ["--steps", "20", "--warmup", "5"]
    jobs = []
    for wave, (dim, rows, queries, clusters) in enumerate(searches, start=1):
        methods = "onepass,binned,pallas_interpret"
        if not smoke:  # other kernel tiles at 512 dims only (the 3,072-dim wave is longer)
            tiles = ("64x128x64x4x4", "256x128x64x8x3") if dim == "512" else ()
            methods = ",".join(["onepass", "binned", "pallas", *(f"pallas@{t}" for t in tiles)])
        shape = ["--dim", dim, "--rows", rows, "--queries", queries, "--clusters", clusters]
        user = ["--user_path"] if dim in ("512", "64") else []
        shape += ["--repeats", "1" if smoke else "2"]
        jobs.append((f"search {dim}d", wave, ["search", *shape, "--methods", methods, *user]))
        jobs.append((f"search {dim}d torch", len(searches) + 1, ["search_torch", *shape]))
    wave = len(searches) + 2
    for model, size, batch in train:
        common = ["--model", model, "--size", str(size), "--batch", str(batch), *steps]
        if smoke:  # every job and flag once, in as few compiles as possible
            ours = ["train_ours", *common, "--bn", "fused_one_pass", "--augment"]
            jobs.append((f"train_step {model} {size}px ours", wave, ours))
            jobs.append((f"train_step {model} {size}px timm", wave, ["train_timm", *common]))
            continue
        jobs.append((f"train_step {model} {size}px ours", wave, ["train_ours", *common]))
        if size <= 224:
            augment = ["train_ours", *common, "--augment"]
            jobs.append((f"variant {model} {size}px augment", wave, augment))
        for mode in ("eager", "compiled"):  # one job each: eager's row stands alone
            timm = ["train_timm", *common, "--modes", mode]
            jobs.append((f"train_step {model} {size}px timm {mode}", wave, timm))
    return jobs


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _start(name: str, args: list[str], a, env) -> subprocess.Popen:
    path = os.path.join(a.out, _slug(name) + ".log")
    cmd = [sys.executable, os.path.abspath(__file__), "--job", *args]
    if a.smoke:
        cmd.append("--smoke")
    env = {**env, "GLD_JAX_SUITE_JOB": _slug(name)}
    if args[0] == "search":  # alone in its wave: the device's memory is the index's
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.85"
    with open(path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
    proc.log_path = path
    return proc


def _run_wave(started, a, deadline: float) -> list[tuple[str, dict]]:
    """Waits until every job is ready to be timed (or gone, or the deadline),
    lets them time one at a time, and collects their rows."""

    def flag(name, what):
        return os.path.exists(os.path.join(a.out, f"{_slug(name)}.{what}"))

    while time.perf_counter() < deadline and not all(
        flag(n, "ready") or p.poll() is not None for n, p in started
    ):
        time.sleep(0.2)
    for name, proc in started:
        if not flag(name, "ready") or proc.poll() is not None:
            continue
        _touch(os.path.join(a.out, f"{_slug(name)}.go"))
        while proc.poll() is None and not flag(name, "done") and time.perf_counter() < deadline:
            time.sleep(0.05)
    rows = []
    for name, proc in started:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            stage = "timing" if flag(name, "ready") else "compiling"
            rows.append((name, {"error": f"not done in time (--wave_seconds), {stage}"}))
            continue
        lines = stdout.decode().strip().splitlines()
        if proc.returncode == 0 and lines:
            rows.append((name, json.loads(lines[-1])))
            continue
        with open(proc.log_path) as log:
            last = (log.read().strip().splitlines() or [""])[-1]
        rows.append((name, {"error": f"exit {proc.returncode}: {last[:300]}"}))
    return rows


def run_all(a) -> int:
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ)
    # Several JAX processes share the device: none takes it all up front.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    env["GLD_JAX_SUITE_DIR"] = a.out
    t0 = time.perf_counter()
    jobs = [j for j in plan_jobs(a.smoke) if not a.only or j[0] in a.only]
    if a.one_wave:
        jobs = [(n, 1, args) for n, _, args in jobs]
    budgets = [float(b) for b in a.wave_seconds.split(",")]
    failures, deadline = 0, t0
    with open(os.path.join(a.out, "gpu_suite.jsonl"), "w") as f:
        for i, wave in enumerate(sorted({w for _, w, _ in jobs})):
            # Cumulative: what a wave leaves unused goes to the next ones.
            deadline += budgets[min(i, len(budgets) - 1)]
            started = [(n, _start(n, args, a, env)) for n, w, args in jobs if w == wave]
            for name, row in _run_wave(started, a, deadline):
                failures += "error" in row
                line = json.dumps({"row": name, **row})
                print(line, flush=True)
                f.write(line + "\n")
                f.flush()  # a suite cut short keeps its finished rows
        end = {"row": "suite", "wall_s": round(time.perf_counter() - t0, 1), "failed": failures}
        print(json.dumps(end))
        f.write(json.dumps(end) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_suite_out")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    p.add_argument("--only", nargs="*", help="run only the rows of these names")
    p.add_argument("--one_wave", action="store_true", help="start every row at once")
    p.add_argument(
        "--wave_seconds",
        default="120,60,45,255",
        help="seconds for each wave that runs, in order (our 3,072-dim search, our 512-dim "
        "search, PyTorch's searches, the train steps); what a wave leaves unused goes to "
        "the next",
    )
    p.add_argument("--job", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a, rest = p.parse_known_args(argv)
    if not a.job:
        return run_all(a)
    name, *job_args = a.job
    j = argparse.ArgumentParser()
    j.add_argument("--model")
    j.add_argument("--size", type=int)
    j.add_argument("--batch", type=int)
    j.add_argument("--steps", type=int, default=20)
    j.add_argument("--warmup", type=int, default=5)
    j.add_argument("--augment", action="store_true")
    j.add_argument("--bn", default="default")
    j.add_argument("--xla_flags", default="")
    j.add_argument("--dim", type=int)
    j.add_argument("--rows", type=int)
    j.add_argument("--queries", type=int)
    j.add_argument("--clusters", type=int)
    j.add_argument("--methods", default="onepass")
    j.add_argument("--repeats", type=int, default=3)
    j.add_argument("--user_path", action="store_true")
    j.add_argument("--block", type=int, default=8192, help="search_torch: queries per matmul")
    j.add_argument("--modes", default="eager,compiled", help="train_timm: peer modes")
    j.add_argument("--smoke", action="store_true")
    ja = j.parse_args(job_args)
    print(json.dumps(JOBS[name](ja)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

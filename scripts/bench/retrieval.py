"""Retrieval benchmark at GLDv2 scale: ScaNN vs faiss-cpu vs exact brute force.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/bench/retrieval.py
    (defaults: 1,580,470 x 512 index, 117,577 queries; --n 1000000 --queries 10000 for
    the 1M recall check)

Data: clustered synthetic float32 embeddings, L2-normalised: ``--clusters``
unit centres, each row a centre plus Gaussian noise (within-cluster cosine
~0.5, like same-landmark images), queries drawn the same way. Every engine runs
in its own subprocess (peak memory is per engine; the data is regenerated from
the seed, not timed). Exact search scores ``--exact_sample`` queries by blocked
numpy matmul, giving the ground truth top-1 for recall@1 of the others on that
sample, and its time is extrapolated linearly to all queries (said so in the
output). faiss IVF-Flat (nlist = 4 sqrt(N)) is searched at increasing nprobe
until its recall@1 reaches ScaNN's. ``--num_leaves``, ``--leaves_to_search``,
``--training_sample_size`` and ``--reorder`` override ScaNN's defaults (those of
``build_scann_index``). Prints one JSON line.

``--accelerator`` adds gld-jax's accelerator search (exact, or approximate with
``--search_recall`` < 1; ``--search_dtype``) on whatever devices JAX has here:
on a CPU it shows correctness and the shape of the cost only.

``--compile_tpu v3:4x4`` (or ``v5e:2x4``, ...) instead compiles one query block
of that search for the TPU slice with the deviceless XLA:TPU compiler (libtpu,
no TPU needed; nothing is allocated) and prints XLA's figures per device
(arguments, temporaries, FLOPs, bytes) and the roofline time of all the
queries: blocks x max(FLOPs / peak, bytes / HBM bandwidth), a lower bound.

Needs faiss-cpu (requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def make_data(n: int, q: int, dim: int, clusters: int, noise: float, seed: int):
    """(index [n, dim], queries [q, dim]) float32 unit rows, clustered."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for s in range(0, count, 262_144):  # blocks keep the temporaries small
            m = min(262_144, count - s)
            x = centres[rng.integers(0, clusters, m)]
            x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(
                noise / math.sqrt(dim)
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s : s + m] = x
        return out

    return draw(n), draw(q)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_exact(index, queries, sample: int) -> dict:
    from gld_jax.retrieval.index import exact_search

    sub = queries[:sample]
    t0 = time.perf_counter()
    idx, _ = exact_search(index, sub, 1)
    dt = time.perf_counter() - t0
    return {
        "top1": idx[:, 0].tolist(),
        "search_s_sample": round(dt, 2),
        "search_s_extrapolated": round(dt * len(queries) / len(sub), 1),
        "qps": round(len(sub) / dt, 1),
    }


def run_scann(index, queries, args) -> dict:
    from gld_jax.retrieval.index import build_scann_index

    overrides = {k: getattr(args, k) for k in _SCANN_FLAGS if getattr(args, k) is not None}
    t0 = time.perf_counter()
    searcher = build_scann_index(index, num_neighbors=1, **overrides)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx, _ = searcher.search(queries, 1, batch_size=16_384)
    search = time.perf_counter() - t0
    return {
        "top1": idx[: args.exact_sample, 0].tolist(),
        "build_s": round(build, 1),
        "search_s": round(search, 1),
        "qps": round(len(queries) / search, 1),
        "leaves_to_search": searcher.leaves_to_search,
        "reorder": searcher.reorder,
        "overrides": overrides,
    }


def run_faiss(data: dict, queries, args) -> dict:
    import faiss

    index = data.pop("index")  # the IVF lists hold their own copy: drop ours after add()
    truth = np.load(args.truth)
    target = args.target_recall
    d = index.shape[1]
    nlist = 4 * round(math.sqrt(len(index)))
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    train = index[rng.choice(len(index), min(len(index), 40 * nlist), replace=False)]
    ivf.train(train)
    ivf.add(index)
    build = time.perf_counter() - t0
    del index, train
    sample = queries[: len(truth)]
    tried = []
    for nprobe in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256):
        ivf.nprobe = nprobe
        _, idx = ivf.search(sample, 1)
        recall = float((idx[:, 0] == truth).mean())
        tried.append({"nprobe": nprobe, "recall_at_1": round(recall, 4)})
        if recall >= target:
            break
    t0 = time.perf_counter()
    ivf.search(queries, 1)
    search = time.perf_counter() - t0
    return {
        "nlist": nlist,
        "nprobe": nprobe,
        "recall_at_1": tried[-1]["recall_at_1"],
        "sweep": tried,
        "build_s": round(build, 1),
        "search_s": round(search, 1),
        "qps": round(len(queries) / search, 1),
    }


def run_accelerator(index, queries, args) -> dict:
    import jax

    from gld_jax.retrieval.accelerator_search import AcceleratorIndex

    t0 = time.perf_counter()
    searcher = AcceleratorIndex(
        index,
        num_neighbors=1,
        dtype=args.search_dtype,
        approx=args.search_recall < 1,
        recall_target=args.search_recall,
    )
    build = time.perf_counter() - t0
    searcher.search(queries[:8], 1)  # compile outside the timing
    t0 = time.perf_counter()
    idx, _ = searcher.search(queries, 1)
    search = time.perf_counter() - t0
    return {
        "top1": idx[: args.exact_sample, 0].tolist(),
        "devices": f"{len(jax.devices())} x {jax.devices()[0].device_kind}",
        "dtype": args.search_dtype,
        "recall_target": args.search_recall,
        "query_block": searcher.plan.query_block,
        "build_s": round(build, 1),
        "search_s": round(search, 1),
        "qps": round(len(queries) / search, 1),
    }


def compile_tpu(args) -> dict:
    """XLA:TPU's figures for one query block of the accelerator search on a slice."""
    import jax

    from gld_jax.dry_run import ACCELERATORS
    from gld_jax.retrieval.search_compile import compile_search
    from gld_jax.train import aot

    chip = ACCELERATORS[aot._kind_of(args.compile_tpu)]
    out = compile_search(
        args.compile_tpu,
        rows=args.n,
        dim=args.dim,
        queries=args.queries,
        k=args.k,
        dtype=args.search_dtype,
        recall_target=args.search_recall,
        peak_flops=chip.peak_flops,
        hbm_bytes_per_second=chip.hbm_bytes_per_second,
        memory_bytes=chip.memory_bytes,
        method=args.method,
    )
    return {"bench": "retrieval_compile_tpu", **out, "jax": jax.__version__}


def child(args) -> None:
    index, queries = make_data(args.n, args.queries, args.dim, args.clusters, args.noise, args.seed)
    if args.engine == "exact":
        out = run_exact(index, queries, args.exact_sample)
    elif args.engine == "accelerator":
        out = run_accelerator(index, queries, args)
    elif args.engine == "scann":
        out = run_scann(index, queries, args)
    else:
        data = {"index": index}
        del index
        out = run_faiss(data, queries, args)
    out["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(json.dumps(out))


def _spawn(args, engine: str, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--engine", engine] + _common(args) + list(extra)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{res.stderr[-2000:]}")
    line = res.stdout.strip().splitlines()[-1]
    print(f"{engine}: {line[:2000]}", file=sys.stderr, flush=True)  # progress, if a later one dies
    return json.loads(line)


# build_scann_index overrides the benchmark passes through (default: its own choice).
_SCANN_FLAGS = ("num_leaves", "leaves_to_search", "training_sample_size", "reorder")


def _ratio(slow: float, fast: float) -> float | None:
    """slow / fast to 2 decimals; None when the fast time rounded to 0 (tiny runs)."""
    return round(slow / fast, 2) if fast > 0 else None


def _common(args) -> list[str]:
    flags = [
        f"--{k}={getattr(args, k)}"
        for k in ("n", "queries", "dim", "clusters", "noise", "seed", "exact_sample")
    ]
    overrides = [k for k in _SCANN_FLAGS if getattr(args, k) is not None]
    return flags + [f"--{k}={getattr(args, k)}" for k in overrides]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_580_470)
    p.add_argument("--queries", type=int, default=117_577)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=81_313)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact_sample", type=int, default=2000)
    p.add_argument("--engine", choices=("exact", "scann", "faiss", "accelerator"))
    p.add_argument("--accelerator", action="store_true", help="also run the accelerator search")
    p.add_argument("--search_dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--search_recall", type=float, default=1.0)
    p.add_argument("--k", type=int, default=5, help="--compile_tpu: neighbours per query")
    p.add_argument("--compile_tpu", help="compile for this TPU topology (e.g. v3:4x4) only")
    p.add_argument(
        "--method",
        choices=("onepass", "partial"),
        help="--compile_tpu: the per-device top-k (default: what a TPU runs)",
    )
    p.add_argument("--truth")
    p.add_argument("--target_recall", type=float)
    p.add_argument("--skip_faiss", action="store_true")
    for k in _SCANN_FLAGS:
        p.add_argument(f"--{k}", type=int, help="ScaNN override (default: build_scann_index's)")
    args = p.parse_args()
    if args.compile_tpu:
        print(json.dumps(compile_tpu(args)))
        return
    if args.engine:
        child(args)
        return
    exact = _spawn(args, "exact")
    truth = np.asarray(exact.pop("top1"), np.int64)
    scann = _spawn(args, "scann")
    scann_recall = float((np.asarray(scann.pop("top1")) == truth).mean())
    scann["recall_at_1"] = round(scann_recall, 4)
    result = {
        "bench": "retrieval",
        "n": args.n,
        "queries": args.queries,
        "dim": args.dim,
        "clusters": args.clusters,
        "recall_sample": len(truth),
        "exact": exact,
        "scann": scann,
    }
    if args.accelerator:
        extra = [f"--search_dtype={args.search_dtype}", f"--search_recall={args.search_recall}"]
        accel = _spawn(args, "accelerator", extra)
        accel["recall_at_1"] = round(float((np.asarray(accel.pop("top1")) == truth).mean()), 4)
        result["accelerator"] = accel
    if not args.skip_faiss:
        truth_path = f"/tmp/retrieval_bench_truth_{os.getpid()}.npy"
        np.save(truth_path, truth)
        try:
            result["faiss_ivf_flat"] = _spawn(
                args, "faiss", [f"--truth={truth_path}", f"--target_recall={scann_recall}"]
            )
        finally:
            os.remove(truth_path)
        f = result["faiss_ivf_flat"]
        result["scann_speedup_vs_faiss_search"] = _ratio(f["search_s"], scann["search_s"])
        result["scann_speedup_vs_faiss_total"] = _ratio(
            f["build_s"] + f["search_s"], scann["build_s"] + scann["search_s"]
        )
    result["scann_speedup_vs_exact_search"] = _ratio(
        exact["search_s_extrapolated"], scann["search_s"]
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

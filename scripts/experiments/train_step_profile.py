"""Where the CPU train step's time goes: per-op profile of the train_step.py step.

    flock /tmp/gldjax-heavy.lock nice -n 5 \
        .venv/bin/python scripts/experiments/train_step_profile.py \
        --model efficientnet_b0 --image_size 128 --batch_size 32 --steps 3

Builds the same jitted step as train_step.py (`build_ours`), also times forward
only (the loss) and forward + backward (value_and_grad, no optimizer), then runs
--steps steps under `jax.profiler` and sums every XLA:CPU thunk's duration by the
op it runs. Each op is put in a bucket by the source line that made it (the HLO
metadata: our layers, BatchNorm, swish, GeM, head, optimizer...) and by direction
(forward / backward: ``transpose(`` in its op_name). Prints the buckets as a table
(ms per step) and the slowest ops; --json writes everything. Thunk times are wall
times of each thunk; thunks that ran side by side on both cores add up to more
than the step's wall time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from gld_jax.utils import fs  # noqa: E402
from scripts.bench.train_step import add_model_args, build_ours  # noqa: E402


def _effnet_lines(*needles: str) -> str:
    """'(l1|l2|...)': the lines of efficientnet.py holding any needle, so the rules
    below follow the source instead of pinning line numbers that edits shift."""
    path = os.path.join(ROOT, "gld_jax", "models", "efficientnet.py")
    with open(path) as f:
        hits = [str(i) for i, line in enumerate(f, 1) if any(n in line for n in needles)]
    return "(" + "|".join(hits) + ")"


# Rules on one stack frame "file:line function"; frames are tried innermost first
# and the first frame any rule matches names the bucket.
_FRAME_RULES = [
    ("optimizer (AdamW)", r"^optax/"),
    (
        "head + loss",
        r"^gld_jax/losses/|^gld_jax/train/step\.py:\d+ train_step_fn\.<locals>\.loss_fn",
    ),
    ("GeM", r"^gld_jax/models/pooling\.py"),
    ("neck", r"^gld_jax/models/neck\.py|^flax/nnx/nn/linear\.py"),
    (
        "depthwise conv",
        r"^gld_jax/models/conv\.py:\d+ "
        r"(_depthwise|_taps|_conv_shift_depthwise|_dw_|tap_grad)",
    ),
    ("1x1 / dense conv", r"^gld_jax/models/conv\.py:\d+ (_conv_shift_dense|_conv_lax)"),
    ("drop path", r"DropPath|^flax/nnx/rnglib\.py"),
    ("BatchNorm", r"^flax/nnx/nn/normalization\.py|^gld_jax/models/\w+\.py:\d+ \w*(bn|BatchNorm)"),
    ("swish", rf"^gld_jax/models/efficientnet\.py:{_effnet_lines('jax.nn.swish(self.')} "),
    ("SE", rf"^gld_jax/models/efficientnet\.py:{_effnet_lines('se = ', 'sigmoid(self.se_')} "),
    ("residual add", rf"^gld_jax/models/efficientnet\.py:{_effnet_lines('x = x + inputs')} "),
    ("input normalise", r"^gld_jax/models/landmark\.py"),
]
# A custom_vjp's backward carries the call site's stack: conv2d's depthwise branch.
_CALL_SITE_RULES = [("depthwise conv", r"^gld_jax/models/conv\.py:\d+ conv2d")]
_KIND_ORDER = (
    "convolution",
    "dot",
    "reduce-window",
    "reduce",
    "scatter",
    "gather",
    "while",
    "pad",
    "transpose",
    "copy",
)


def _bucket_of_chain(chain: str) -> str | None:
    frames = chain.split(" <- ") if chain else []
    for frame in frames:
        for name, pat in _FRAME_RULES:
            if re.search(pat, frame):
                # BatchNorm / Linear of the neck belong to the neck.
                if name == "BatchNorm" and "neck.py" in chain:
                    return "neck"
                return name
        for name, pat in _CALL_SITE_RULES:
            if re.search(pat, frame):
                return name
    return None


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _short_path(path: str) -> str:
    """.../site-packages/optax/x.py -> optax/x.py; .../gld_jax/models/x.py -> gld_jax/..."""
    path = os.path.normpath(path)
    for marker in ("site-packages/", "/gld_jax/", "/scripts/"):
        i = path.rfind(marker)
        if i >= 0:
            return path[i + len(marker) :] if marker == "site-packages/" else path[i + 1 :]
    return os.path.basename(path)


def _stack_frames(hlo_text: str) -> dict[int, str]:
    """stack_frame_id -> "file:line function <- caller ..." from the HLO module's tables."""
    tables: dict[str, dict[int, str]] = {}
    section = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            tables[section] = {}
            continue
        if section is None:
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if not m:
            if tables[section]:
                section = None
            continue
        tables[section][int(m.group(1))] = m.group(2)
    files = {k: _short_path(v.strip('"')) for k, v in tables.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in tables.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in tables.get("FileLocations", {}).items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (
            f"{files.get(int(f['file_name_id']), '?')}:{f['line']} "
            f"{funcs.get(int(f['function_name_id']), '?')}"
        )
    parent, loc = {}, {}
    for k, v in tables.get("StackFrames", {}).items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        loc[k] = int(f["file_location_id"])
        parent[k] = int(f["parent_frame_id"]) - 1  # printed one-based; 0 = no parent
    chains = {}
    for k in loc:
        parts, j = [], k
        while j > 0 and len(parts) < 40:
            parts.append(locs.get(loc[j], "?"))
            j = parent.get(j, 0)
        chains[k] = " <- ".join(parts)
    return chains


def _instruction_info(hlo_text: str) -> dict[str, dict]:
    """instruction name -> {"opcode", "src", "op_name", "fused": [(opcode, src, op_name)]}.

    ``src`` is the Python stack that made the instruction, innermost first."""
    chains = _stack_frames(hlo_text)
    comps: dict[str, list[tuple[str, str, str, str, str]]] = {}
    cur = None
    line_re = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^=]*?\s([\w\-]+)\(")
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.endswith("{"):
            name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            cur = name.lstrip("%")
            comps[cur] = []
            continue
        m = line_re.match(line)
        if not m or cur is None:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        frame = re.search(r"stack_frame_id=(\d+)", line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        comps[cur].append(
            (
                m.group(1),
                m.group(2),
                chains.get(int(frame.group(1)), "") if frame else "",
                op_name.group(1) if op_name else "",
                calls.group(1) if calls else "",
            )
        )
    info = {}
    for insts in comps.values():
        for name, opcode, src, op_name, calls in insts:
            fused = [(o, s, n) for _, o, s, n, _ in comps.get(calls, [])] if calls else []
            info[name] = {"opcode": opcode, "src": src, "op_name": op_name, "fused": fused}
    return info


def _describe(info: dict) -> tuple[str, str, str]:
    """(bucket, direction, kind) of one thunk's instruction."""
    fused = [f for f in info.get("fused", []) if f[0] not in ("parameter", "constant")]
    parts = [(info["opcode"], info["src"], info["op_name"])] + fused
    opcodes = [o for o, _, _ in parts]
    kind = next((k for k in _KIND_ORDER if k in opcodes), "elementwise")
    bucket = None
    # The heaviest op of a fusion names it; then any op that has a bucket.
    ranked = sorted(parts, key=lambda p: _KIND_ORDER.index(p[0]) if p[0] in _KIND_ORDER else 99)
    for _, src, _ in ranked:
        bucket = _bucket_of_chain(src)
        if bucket:
            break
    text = " ".join(n for _, _, n in parts)
    direction = "backward" if "transpose(" in text else "forward"
    if bucket == "optimizer (AdamW)":
        direction = "optimizer"
    return bucket or "other", direction, kind


def analyse(logdir: str, steps: int, full_step_s: float, top: int, info=None) -> dict:
    """Bucket the thunk times of the trace in ``logdir`` (see the module docstring)."""
    if info is None:
        with fs.open_file(os.path.join(logdir, "train_step.hlo.txt")) as f:
            info = _instruction_info(f.read())
    out = {"full_step_s": full_step_s}
    path = sorted(fs.glob(os.path.join(logdir, "plugins/profile/*/*.trace.json.gz")))[-1]
    with fs.open_file(path, "rb") as raw, gzip.open(raw) as f:
        events = json.load(f)["traceEvents"]
    per_op = _exclusive_ms(events, steps)
    buckets: dict[tuple[str, str], float] = collections.defaultdict(float)
    kinds: dict[str, float] = collections.defaultdict(float)
    rows = []
    for op, ms in per_op.items():
        bucket, direction, kind = _describe(info.get(op, {"opcode": "?", "src": "", "op_name": ""}))
        buckets[(bucket, direction)] += ms
        kinds[kind] += ms
        rows.append((ms, op, bucket, direction, kind, info.get(op, {}).get("src", "")))
    total = sum(per_op.values())
    out["thunk_ms_total"] = round(total, 1)
    out["trace_dir"] = logdir
    out["buckets_ms"] = {f"{b} | {d}": round(v, 1) for (b, d), v in sorted(buckets.items())}
    out["kinds_ms"] = {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    rows.sort(reverse=True)
    out["top_ops"] = [
        {"ms": round(ms, 2), "op": op, "bucket": b, "dir": d, "kind": k, "src": s}
        for ms, op, b, d, k, s in rows[:top]
    ]

    names = sorted({b for b, _ in buckets})
    print(f"\nthunk time per step {total:.0f} ms (wall {full_step_s * 1e3:.0f} ms)")
    print("| component | forward | backward | optimizer | total |")
    print("| --- | --- | --- | --- | --- |")
    for b in sorted(names, key=lambda b: -sum(v for (bb, _), v in buckets.items() if bb == b)):
        f, bw, o = (buckets.get((b, d), 0.0) for d in ("forward", "backward", "optimizer"))
        print(f"| {b} | {f:.0f} | {bw:.0f} | {o:.0f} | {f + bw + o:.0f} |")
    print("\nby op kind (ms/step):", out["kinds_ms"])
    print(f"\ntop {top} ops (ms/step):")
    for r in out["top_ops"]:
        src = " <- ".join(r["src"].split(" <- ")[:2])
        print(
            f"  {r['ms']:7.2f}  {r['bucket']:<18} {r['dir']:<9} {r['kind']:<12} {r['op']:<32} {src}"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no_split", action="store_true", help="skip forward / fwd+bwd timings")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", default="")
    ap.add_argument("--trace_dir", default="", help="keep the trace and HLO text here")
    ap.add_argument("--from_trace", default="", help="only re-analyse a kept --trace_dir")
    args = ap.parse_args()
    if args.from_trace:
        with fs.open_file(os.path.join(args.from_trace, "meta.json")) as f:
            meta = json.load(f)
        analyse(args.from_trace, meta["steps"], meta["full_step_s"], args.top)
        return 0
    if args.flax_bn:
        from gld_jax.models import layers

        layers.BatchNorm.hand_written_grad = False

    step, state, batch, margins = build_ours(args)
    out = {
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }

    if not args.no_split:
        import functools

        from flax import nnx

        from gld_jax.losses import sub_center_arcface_loss
        from gld_jax.train import step as step_lib

        partial = _find_partial(step)
        graphdef, rng_state = partial.keywords["graphdef"], partial.keywords["rng_state"]
        scale, key = partial.keywords["scale"], partial.keywords["key"]

        def _loss(params, state, batch, margins):
            model = nnx.merge(graphdef, params, state.batch_stats, rng_state)
            step_lib._reseeded(model, key, state.step)
            emb = model(batch["image"])
            losses = sub_center_arcface_loss(
                emb,
                model.head.centers[...],
                batch["label"],
                margins,
                scale,
                num_valid_classes=model.head.num_classes,
            )
            return jnp.mean(losses)

        def _loss_of_state(state, batch, margins):
            return _loss(state.params, state, batch, margins)

        fwd = jax.jit(_loss_of_state)
        fwd_bwd = jax.jit(
            lambda state, batch, margins: jax.value_and_grad(
                functools.partial(_loss, state=state, batch=batch, margins=margins)
            )(state.params)
        )
        for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
            jax.block_until_ready(fn(state, batch, margins))
            out[f"{name}_s"] = round(_median_time(lambda fn=fn: fn(state, batch, margins), 5), 4)
            print(f"{name}: {out[f'{name}_s']:.3f} s", file=sys.stderr)

    compiled = step.lower(state, batch, margins).compile()
    info = _instruction_info(compiled.as_text())
    state, metrics = compiled(state, batch, margins)
    jax.block_until_ready(metrics)
    holder = [state]

    def one():
        holder[0], m = compiled(holder[0], batch, margins)
        return m

    out["full_step_s"] = round(_median_time(one, 5), 4)
    print(f"full step: {out['full_step_s']:.3f} s", file=sys.stderr)

    logdir = args.trace_dir or tempfile.mkdtemp(prefix="gldjax-prof-")
    fs.makedirs(logdir)
    with fs.open_file(os.path.join(logdir, "train_step.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    with jax.profiler.trace(logdir):
        for _ in range(args.steps):
            jax.block_until_ready(one())
    with fs.open_file(os.path.join(logdir, "meta.json"), "w") as f:
        json.dump({"steps": args.steps, "full_step_s": out["full_step_s"]}, f)
    out.update(analyse(logdir, args.steps, out["full_step_s"], args.top, info))
    if args.json:
        with fs.open_file(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _exclusive_ms(events: list[dict], steps: int) -> dict[str, float]:
    """hlo_op -> ms per step of its thunks, less the time of thunks nested in them
    (a while loop's body thunks are recorded inside the while thunk)."""
    by_tid = collections.defaultdict(list)
    for e in events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") == "X" and op and "train_step" in e["args"].get("hlo_module", ""):
            by_tid[e["tid"]].append(e)
    per_op: dict[str, float] = collections.defaultdict(float)
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, op, child_total]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0] - 1e-3:
                end, op, child, dur = stack.pop()
                per_op[op] += dur - child
            if stack:
                stack[-1][2] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], 0.0, e["dur"]])
        while stack:
            end, op, child, dur = stack.pop()
            per_op[op] += dur - child
    return {op: us / 1e3 / steps for op, us in per_op.items()}


def _find_partial(step):
    """The functools.partial(train_step_fn, ...) inside the jitted step."""
    import functools

    fn = getattr(step, "__wrapped__", None)
    while fn is not None and not isinstance(fn, functools.partial):
        fn = getattr(fn, "__wrapped__", None)
    if fn is None:
        raise RuntimeError("cannot find the train_step_fn partial inside the jitted step")
    return fn


if __name__ == "__main__":
    sys.exit(main())

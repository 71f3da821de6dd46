"""Dry run: what a config will cost on its target accelerator, before any work.

(One report at ~620 lines: the plan's figures, the vendor tables they use, and
the table's formatting; XLA's compiled figures are compiled_plan.py's and the
host-feed rates gld_jax/data/host_feed.py's.)

    python -m gld_jax.main --config configs/effb7.py --dry_run [--json]

Per stage: image size, epochs, classes, images, global batch, steps, the
learning-rate schedule, parameter counts, FLOPs per step, the per-device memory
of parameters + gradients + optimizer state + activations on the configured
mesh, and the wall time at a stated MFU on `config.target`. Nothing is
initialised, compiled or read beyond a manifest: shapes come from `nnx.eval_shape`
and one abstract trace of the model (gld_jax.train.costs).

How each figure is made (say so when quoting them):
- parameters and optimizer state: exact sizes; float32; the embedder replicated,
  the head [C_pad, K, D] split over the mesh's 'model' axis; AdamW keeps 2
  moments per parameter, SGD+momentum 1; EMA (if on) one more copy.
- activations: the residuals the backward pass keeps (traced at a probe size and
  scaled by image area; exact for sizes that are multiples of 32), for one
  micro-batch per device, plus the head's logits for its rows x class shard,
  times `activation_overhead(target)` for the backend's working set over them
  (calibrated against XLA's compiled memory analysis: XLA:CPU's on CPU/GPU
  targets, XLA:TPU's on TPU targets). `--compile` replaces the estimate with
  XLA:TPU's own figures (gld_jax.compiled_plan).
  XLA's own scratch buffers are not counted: a stage "fits" when the total is
  within `USABLE_FRACTION` of the device memory. With `model.remat` only the
  blocks' saved inputs count, not the one block being recomputed: an underestimate.
- FLOPs per step: 3 x the forward's convolution and matmul FLOPs (the backward
  costs two forwards), 2 per multiply-add.
- wall time: steps x FLOPs per step / (devices x peak bf16 FLOP/s x MFU).
- host feed: images/s one host's devices consume (global batch / step time /
  hosts; the step time is the compiled roofline with `--compile`, a lower
  bound and so the hardest case, else the MFU estimate) against the images/s
  one host core delivers at the stage's size (gld_jax.data.host_feed: recorded
  figures, or measured here with `--calibrate_host`), for the augmentation
  placement the config resolves to on the target; cores needed against the
  host's vCPUs times the pipeline's share.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp

from gld_jax.data import manifest

GIB = 2**30
USABLE_FRACTION = 0.9  # of device memory, leaving room for XLA's scratch buffers
# XLA's working set of a train step over its residuals: the compiled backward of
# EfficientNet-B0 (128 px, batch 8, XLA:CPU) needed 529 MiB of temporaries for
# 347 MiB of residuals, 1.52x (tests/test_dry_run.py keeps this honest). XLA:GPU
# fuses and recomputes the elementwise tail and needed ~4x less than this
# estimate (BENCHMARKS.md): on GPUs it is an upper bound.
ACTIVATION_OVERHEAD = 1.5
# The same for TPU targets, from XLA:TPU itself (`--dry_run --compile` on a
# v3-32, BENCHMARKS.md): XLA:TPU fuses and recomputes BatchNorm/swish inside the
# backward, and its compiled temporaries were 0.23-0.78x the traced residuals
# over the 18 stages of the six recipe configs; the largest ratios are at batch 2
# per device (0.60-0.63, and 0.78 for effb3 at 1024 px), where the batch-free
# part of the temporaries weighs most. 0.80 keeps the estimate an upper bound
# on all of them.
TPU_ACTIVATION_OVERHEAD = 0.80
# XLA:TPU for v5e keeps far more: effb7 compiled for a v5e-32 needed 12.3 GiB of
# temporaries at 512 px (v3: 4.0) and 12.2 at 672 px (v3: 6.7), 0.93x and 1.09x
# the traced residuals. 1.10 covers those; only effb7 has been compiled for v5e.
TPU_V5E_ACTIVATION_OVERHEAD = 1.10
PROBE_BATCH, PROBE_SIZE = 2, 64  # the abstract trace's shape (see train.costs)


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One JAX device of a kind: memory in bytes, peak dense bf16 FLOP/s, HBM
    bandwidth in bytes/s."""

    name: str
    memory_bytes: float
    peak_flops: float
    devices_per_host: int
    hbm_bytes_per_second: float


# Vendor figures: Cloud TPU system-architecture pages (v3: 123 TFLOP/s, 32 GiB
# and 900 GB/s per chip, two TensorCores each a JAX device, so half of each per
# device; v4: 275 TFLOP/s, 32 GiB, 1,200 GB/s per chip, one device per chip;
# v5e: 197 TFLOP/s, 16 GB, 819 GB/s; v5p: 459 TFLOP/s, 95 GB, 2,765 GB/s; v6e:
# 918 TFLOP/s, 32 GB, 1,640 GB/s) and NVIDIA's H100 SXM / H200 / A100 data
# sheets (dense bf16; 3.35, 4.8 and 2.04 TB/s).
ACCELERATORS: dict[str, Accelerator] = {
    "tpu_v3": Accelerator("TPU v3 TensorCore", 16 * GIB, 61.5e12, 8, 450e9),
    "tpu_v4": Accelerator("TPU v4 chip", 32 * GIB, 275e12, 4, 1200e9),
    "tpu_v5e": Accelerator("TPU v5e chip", 16e9, 197e12, 8, 819e9),
    "tpu_v5p": Accelerator("TPU v5p chip", 95e9, 459e12, 4, 2765e9),
    "tpu_v6e": Accelerator("TPU v6e chip", 32e9, 918e12, 8, 1640e9),
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 80e9, 989e12, 8, 3.35e12),
    "h200": Accelerator("NVIDIA H200 141GB", 141e9, 989e12, 8, 4.8e12),
    "a100": Accelerator("NVIDIA A100 80GB", 80e9, 312e12, 8, 2.039e12),
}


def activation_overhead(accelerator: str) -> float:
    """Working set of a train step over its traced residuals on `accelerator`."""
    if accelerator == "tpu_v5e":
        return TPU_V5E_ACTIVATION_OVERHEAD
    return TPU_ACTIVATION_OVERHEAD if accelerator.startswith("tpu_") else ACTIVATION_OVERHEAD


# GLDv2 v2.1 (the dataset's README, github.com/cvdfoundation/google-landmark: train.csv
# and train_clean.csv): classes and images per label set.
GLDV2_COUNTS = {"full": (203_094, 4_132_914), "clean": (81_313, 1_580_470)}


class DryRunError(ValueError):
    """A plan that cannot run as configured; str() is one line for the user."""


# --------------------------------------------------------------------------- counts


def dataset_counts(config, workdir: str) -> tuple[dict, dict, str]:
    """(classes per label set, training images per label set, where they came from).

    The manifest of the run's TFRecords when there is one (exact); else GLDv2's
    published counts with the held-out fold taken off (1/folds of the images).
    """
    tfrecord_dir = config.tfrecord_dir or os.path.join(workdir, "tfrecords")
    if manifest.exists(tfrecord_dir):
        from gld_jax.train.trainer import stage_label_info

        num_classes, num_train = stage_label_info(tfrecord_dir, config)
        return num_classes, num_train, f"manifest {tfrecord_dir}"
    if config.synthetic.enabled:
        raise DryRunError(
            "the synthetic set's counts come from its manifest, which does not exist yet "
            f"({tfrecord_dir}); run the config once (e.g. make demo) and dry-run again"
        )
    keep = 1.0 if config.fold < 0 else (config.folds - 1) / config.folds
    num_classes = {k: c for k, (c, _) in GLDV2_COUNTS.items()}
    num_train = {k: round(n * keep) for k, (_, n) in GLDV2_COUNTS.items()}
    held_out = "all folds" if config.fold < 0 else f"fold {config.fold} held out"
    return num_classes, num_train, f"GLDv2 v2.1 published counts, {held_out}"


def validation_images(config, num_train: int) -> int:
    """Images one stage's validation embeds: the head's is every `val_every`-th
    held-out image, retrieval's every image of the label set (the training
    folds as the index, the held-out fold as queries). `num_train` excludes
    the held-out fold, which holds about num_train / (folds - 1) images."""
    if not config.eval.validate or config.fold < 0:
        return 0
    held_out = round(num_train / max(1, config.folds - 1))
    head = math.ceil(held_out / config.val_every)
    retrieval = num_train + held_out
    return {"head": head, "retrieval": retrieval, "both": head + retrieval}[config.eval.validation]


# --------------------------------------------------------------------------- model costs


def abstract_embedder(
    backbone: str, embedding_dim: int = 512, dtype: str = "float32", remat: bool = False
):
    """(forward(state, images) -> embeddings, abstract state) of backbone + GeM +
    neck in train mode, with the TPU/GPU convolution forms. `state` is a
    (params, rest) pair of jax.ShapeDtypeStruct trees: nothing is initialised."""
    from flax import nnx

    from gld_jax.models.landmark import DTYPES
    from gld_jax.models.layers import traceable_rngs
    from gld_jax.models.neck import EmbeddingNeck
    from gld_jax.models.pooling import GeM
    from gld_jax.models.registry import create_backbone

    compute = DTYPES[dtype]

    class Embedder(nnx.Module):
        def __init__(self, rngs):
            self.backbone, width = create_backbone(
                backbone, rngs=rngs, dtype=compute, remat=remat, conv_impl="lax"
            )
            self.pool = GeM()
            self.neck = EmbeddingNeck(width, embedding_dim, rngs=rngs, dtype=compute)

        def __call__(self, x):
            return self.neck(self.pool(self.backbone(x.astype(compute))))

    model = nnx.eval_shape(lambda: Embedder(traceable_rngs(0)))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(state, images):
        return nnx.merge(graphdef, *state)(images)

    return forward, (params, rest)


@functools.lru_cache(maxsize=8)
def embedder_costs(backbone: str, embedding_dim: int, dtype: str, remat: bool):
    """(embedder parameter count, ForwardCosts at the probe shape) of backbone +
    GeM + neck (`abstract_embedder`)."""
    from gld_jax.train.costs import trace_forward_costs

    forward, state = abstract_embedder(backbone, embedding_dim, dtype, remat)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(state[0]))
    return count, trace_forward_costs(forward, state, PROBE_BATCH, PROBE_SIZE)


def compiled_activation_bytes(
    backbone: str, image_size: int, batch: int, dtype: str = "float32"
) -> int:
    """XLA's own figure for what `embedder_costs` estimates: the temporaries of
    the compiled (not run) backward pass of `abstract_embedder` on the default
    backend, for `batch` images of `image_size` px. Compiling takes seconds to
    minutes: for calibration (tests, scripts/bench/dry_run_memory.py), not the
    dry run itself."""
    forward, state = abstract_embedder(backbone, 512, dtype)

    def backward(state, x):
        out, vjp = jax.vjp(lambda s: forward(s, x), state)
        return vjp(jnp.ones_like(out))[0]

    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    compiled = jax.jit(backward).lower(state, images).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def head_residual_bytes(rows: int, classes: int, sub_centers: int, dim: int) -> float:
    """Bytes the Sub-center ArcFace loss keeps for its backward on one device:
    `rows` embeddings against a shard of `classes` centres."""
    from gld_jax.losses import sub_center_arcface_loss
    from gld_jax.train.costs import residual_bytes

    def loss(emb, centers, labels, margins):
        return jnp.mean(sub_center_arcface_loss(emb, centers, labels, margins, 80.0))

    args = (
        jax.ShapeDtypeStruct((rows, dim), jnp.float32),
        jax.ShapeDtypeStruct((classes, sub_centers, dim), jnp.float32),
        jax.ShapeDtypeStruct((rows,), jnp.int32),
        jax.ShapeDtypeStruct((classes,), jnp.float32),
    )
    return residual_bytes(loss, *args)


# --------------------------------------------------------------------------- the plan


def plan_run(
    config,
    workdir: str,
    *,
    config_name: str = "",
    compile: bool = False,
    calibrate_host: bool = False,
) -> dict:
    """The dry-run report as a dict (printed by `format_plan` or as JSON).

    With `compile`, every stage's train step and the embedding step are also
    compiled for the target TPU slice (gld_jax.compiled_plan): each stage gets
    a "compiled" entry and "fits" is decided by XLA's figure.

    Raises:
      DryRunError: unknown accelerator or topology, or counts that cannot be known.
    """
    from gld_jax.config import ConfigError, stage_accumulate_steps, validate_config
    from gld_jax.models.landmark import padded_num_classes
    from gld_jax.train.mesh import resolve_mesh_shape
    from gld_jax.train.stages import plan_stages
    from gld_jax.train.traffic import traffic_floor

    target = config.target
    if target.accelerator not in ACCELERATORS:
        raise DryRunError(
            f"target.accelerator: unknown {target.accelerator!r}; "
            f"known: {', '.join(sorted(ACCELERATORS))}"
        )
    acc = ACCELERATORS[target.accelerator]
    num_devices = target.num_devices or jax.device_count()
    hosts = max(1, num_devices // acc.devices_per_host)
    try:
        validate_config(config, num_devices=num_devices, process_count=hosts, check_data=False)
    except ConfigError as e:
        raise DryRunError(f"config error: {e}") from None
    data, model_axis = resolve_mesh_shape(config.mesh.data, config.mesh.model, num_devices)
    num_classes, num_train, source = dataset_counts(config, workdir)
    plans = plan_stages(config.stages, num_classes=num_classes, num_train=num_train)

    m = config.model
    embedder_params, fwd = embedder_costs(m.backbone, m.embedding_dim, m.dtype, bool(m.remat))
    slots = {"adamw": 2, "sgd": 1 if config.optimizer.momentum else 0}[config.optimizer.name]
    ema = 1 if config.optimizer.ema_decay > 0 else 0
    budget = USABLE_FRACTION * acc.memory_bytes

    stages, total_seconds = [], 0.0
    for plan, stage_cfg in zip(plans, config.stages, strict=True):
        accumulate = stage_accumulate_steps(config, plan.index)
        c_pad = padded_num_classes(plan.num_classes)
        head_params = c_pad * m.sub_centers * m.embedding_dim
        # Per device, float32: embedder replicated (or split over 'data' with
        # FSDP; its few small leaves stay replicated), head split over 'model'.
        embedder_share = embedder_params / (data if config.mesh.fsdp else 1)
        param_bytes = 4 * (embedder_share + head_params / model_axis)
        micro = plan.batch_size // (num_devices * accumulate)  # images per device
        head_rows = plan.batch_size // (data * accumulate)  # the head sees its data group
        _, act_bytes = fwd.at(plan.image_size, micro)
        act_bytes += head_residual_bytes(
            head_rows, c_pad // model_axis, m.sub_centers, m.embedding_dim
        )
        residuals = act_bytes
        act_bytes *= activation_overhead(target.accelerator)
        act_bytes += 2 * micro * plan.image_size**2 * 3  # the uint8 batch, double-buffered
        floor = traffic_floor(
            param_bytes=param_bytes,
            optimizer_slots=slots,
            ema=bool(ema),
            residual_bytes=residuals,
            input_bytes=micro * plan.image_size**2 * 3,
            micro_batches=accumulate,
        )
        memory = {
            "params": param_bytes,
            "grads": param_bytes,
            "optimizer": slots * param_bytes,
            "ema": ema * param_bytes,
            "activations": act_bytes,
        }
        total = sum(memory.values())
        fwd_flops, _ = fwd.at(plan.image_size, plan.batch_size)
        head_flops = 2.0 * plan.batch_size * c_pad * m.sub_centers * m.embedding_dim
        step_flops = 3.0 * (fwd_flops + head_flops)
        seconds = plan.steps * step_flops / (num_devices * acc.peak_flops * target.mfu)
        val_images = validation_images(config, plan.num_train)
        val_seconds = (val_images * (fwd_flops + head_flops / 3) / plan.batch_size) / (
            num_devices * acc.peak_flops * target.mfu
        )
        total_seconds += seconds + val_seconds
        stages.append(
            {
                "stage": plan.index,
                "image_size": plan.image_size,
                "epochs": float(stage_cfg.epochs),
                "label_set": plan.label_set,
                "classes": plan.num_classes,
                "images": plan.num_train,
                "global_batch": plan.batch_size,
                "per_device_batch": plan.batch_size // num_devices,
                "accumulate_steps": accumulate,
                "steps": plan.steps,
                "learning_rate": {
                    "peak": plan.learning_rate,
                    "warmup_steps": plan.warmup_steps,
                    "schedule": "linear warmup from 0, cosine decay to 0",
                },
                "params": {
                    "embedder": embedder_params,
                    "head": head_params,
                    "total": embedder_params + head_params,
                },
                "tflops_per_step": step_flops / 1e12,
                "residual_gib": residuals / GIB,
                # The least HBM traffic of a step on one device (train/traffic.py).
                "traffic_floor_gb": floor.total / 1e9,
                "traffic_floor_parts_gb": {
                    k: v / 1e9 for k, v in dataclasses.asdict(floor).items()
                },
                "memory_gib_per_device": {k: v / GIB for k, v in memory.items()}
                | {"total": total / GIB, "usable": budget / GIB},
                "fits": total <= budget,
                "hours": seconds / 3600,
                "validation": {
                    "method": config.eval.validation if config.eval.validate else "none",
                    "images": val_images,
                    "hours": val_seconds / 3600,
                },
            }
        )
    report = {
        "config": config_name,
        "backbone": m.backbone,
        "dtype": m.dtype,
        "remat": bool(m.remat),
        "accelerator": target.accelerator,
        "accelerator_name": acc.name,
        "num_devices": num_devices,
        "hosts": hosts,
        "mesh": {"data": data, "model": model_axis},
        "mfu": target.mfu,
        "counts": source,
        "stages": stages,
        "total_hours": total_seconds / 3600,
        "fits": all(s["fits"] for s in stages),
    }
    if compile:
        _add_compiled(report, config, plans, num_devices, (data, model_axis), acc, budget)
    _add_host_feed(report, config, measure=calibrate_host)
    return report


def source_side(config) -> int:
    """The long side of the stored JPEGs the hosts decode: the conversion's
    `convert.max_side`, or 1024 px (the recorded rates' sources) when the
    converter keeps originals."""
    return int(config.convert.max_side) or 1024


def _add_host_feed(report: dict, config, *, measure: bool) -> None:
    """Puts each stage's host-feed check (gld_jax.data.host_feed) in the report."""
    from gld_jax.data import host_feed
    from gld_jax.data.augment_config import augments_on_device

    platform = "tpu" if report["accelerator"].startswith("tpu_") else "gpu"
    on_device = augments_on_device(config, platform)
    side = source_side(config)
    report["host_feed"] = {
        "augment_on": "device" if on_device else "host",
        "source_side": side,
        "dct_scaling": bool(config.input.dct_scaling),
    }
    for s in report["stages"]:
        if "compiled" in s:
            step_seconds = s["compiled"]["roofline_seconds"]
        else:
            step_seconds = s["hours"] * 3600 / s["steps"]
        geometric = bool(config.augment) and not on_device
        rate = host_feed.per_core_rate(s["image_size"], side, geometric, measure=measure)
        feed = host_feed.host_feed(
            global_batch=s["global_batch"],
            step_seconds=step_seconds,
            hosts=report["hosts"],
            accelerator=report["accelerator"],
            core_rate=rate,
        )
        s["host_feed"] = dataclasses.asdict(feed) | {
            "keeps_up": feed.keeps_up,
            "host_images_per_s": feed.host_images_per_s,
        }
        if not feed.keeps_up:
            s["host_feed"]["fix"] = host_feed.feed_fix(
                feed,
                augment_on_device=on_device,
                dct_scaling=bool(config.input.dct_scaling),
                tpu=platform == "tpu",
            )


def _add_compiled(report, config, plans, num_devices, mesh_shape, acc, budget) -> None:
    """Compiles every stage for the target slice and puts XLA's figures beside
    the estimate; "fits" then follows the compiled peak."""
    from gld_jax.compiled_plan import Target, compile_plan
    from gld_jax.train.aot import TopologyError

    target = Target(budget, acc.peak_flops, acc.hbm_bytes_per_second)
    try:
        compiled = compile_plan(
            config, plans, num_devices=num_devices, mesh_shape=mesh_shape, target=target
        )
    except TopologyError as e:
        raise DryRunError(str(e)) from None
    report["topology"] = compiled["topology"]
    report["embed_compiled"] = compiled["embed"]
    for stage, figures in zip(report["stages"], compiled["stages"], strict=True):
        stage["compiled"] = figures
        stage["fits"] = figures["fits"]
    report["roofline_hours"] = sum(s["compiled"]["step_hours"] for s in report["stages"])
    report["fits"] = all(s["fits"] for s in report["stages"])


def format_plan(report: dict) -> str:
    """The report as a table for a terminal."""
    r = report
    lines = [
        f"{r['config'] or r['backbone']}: {r['backbone']} ({r['dtype']}"
        f"{', remat' if r['remat'] else ''}) on {r['num_devices']} x {r['accelerator_name']}"
        f" ({r['hosts']} hosts), mesh data={r['mesh']['data']} x model={r['mesh']['model']}",
        f"counts: {r['counts']}; time at {r['mfu']:.0%} MFU",
        "",
        f"{'stage':>5} {'px':>5} {'ep':>5} {'labels':>6} {'classes':>8} {'images':>10} "
        f"{'batch':>6} {'/dev':>5} {'acc':>3} {'steps':>7} {'peak lr':>8} {'warmup':>7} "
        f"{'params':>8} {'TFLOP/step':>10} {'GiB/dev':>8} {'of':>5} {'hours':>7}",
    ]
    for s in r["stages"]:
        mem = s["memory_gib_per_device"]
        lines.append(
            f"{s['stage']:>5} {s['image_size']:>5} {s['epochs']:>5g} {s['label_set']:>6} "
            f"{s['classes']:>8,} {s['images']:>10,} {s['global_batch']:>6} "
            f"{s['per_device_batch']:>5} {s['accumulate_steps']:>3} {s['steps']:>7,} "
            f"{s['learning_rate']['peak']:>8.1e} "
            f"{s['learning_rate']['warmup_steps']:>7,} {s['params']['total'] / 1e6:>7.1f}M "
            f"{s['tflops_per_step']:>10.1f} {mem['total']:>8.2f} {mem['usable']:>5.1f} "
            f"{s['hours']:>7.1f}{'' if s['fits'] else '  DOES NOT FIT'}"
        )
    lines.append("")
    lines.append("GiB/dev = params + grads + optimizer + EMA + activations, per device:")
    for s in r["stages"]:
        mem = s["memory_gib_per_device"]
        parts = ", ".join(
            f"{k} {mem[k]:.2f}" for k in ("params", "grads", "optimizer", "ema", "activations")
        )
        lines.append(f"  stage {s['stage']}: {parts}")
    lines.append(
        "traffic floor = the least HBM bytes a step moves per device (params, grads and "
        "optimizer state read and written once, residuals written and read once, input "
        "read once):"
    )
    for s in r["stages"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in s["traffic_floor_parts_gb"].items())
        lines.append(f"  stage {s['stage']}: {s['traffic_floor_gb']:.2f} GB ({parts})")
    lines.append("validation after each stage (a forward pass, same MFU):")
    for s in r["stages"]:
        v = s["validation"]
        lines.append(
            f"  stage {s['stage']}: {v['method']}, {v['images']:,} images, {v['hours']:.2f} hours"
        )
    lines.append(
        f"total: {r['total_hours']:.1f} hours on {r['num_devices']} devices (training + validation)"
    )
    if "topology" in r:
        lines.append("(with --compile, XLA's compiled figures below decide what fits)")
        lines += ["", *_format_compiled(r)]
    lines += ["", *_format_host_feed(r)]
    return "\n".join(lines)


def _format_host_feed(r: dict) -> list[str]:
    from gld_jax.data import host_feed

    h = r["host_feed"]
    step = "the compiled roofline" if "topology" in r else f"{r['mfu']:.0%} MFU"
    lines = [
        f"host feed per host ({r['hosts']} hosts; augmentations on the {h['augment_on']}; "
        f"{h['source_side']} px sources; step time at {step}):",
        f"{'stage':>5} {'px':>5} {'chips img/s':>11} {'core img/s':>10} {'cores':>7} "
        f"{'of':>5} {'vCPUs':>5}  rate",
    ]
    for s in r["stages"]:
        f = s["host_feed"]
        lines.append(
            f"{s['stage']:>5} {s['image_size']:>5} {f['chips_images_per_s']:>11,.0f} "
            f"{f['core_images_per_s']:>10.1f} {f['cores_needed']:>7.1f} "
            f"{f['cores_available']:>5.0f} {f['host_vcpus']:>5}  {f['rate_source']}"
            + ("" if f["keeps_up"] else f"  HOSTS FALL BEHIND: {f['fix']}")
        )
    lines.append(
        f"(cores = chips img/s / core img/s, of = {host_feed.PIPELINE_SHARE:.0%} of the "
        f"host's vCPUs; recorded core rates: {host_feed.RECORDED_MACHINE}, one TF thread; "
        "--calibrate_host measures this machine's)"
    )
    return lines


def _format_compiled(r: dict) -> list[str]:
    lines = [
        f"compiled for {r['topology']} by XLA:TPU, per device (peak = arguments + outputs "
        "- aliased + temporaries; max/dev = largest per-device batch in one pass, "
        "extrapolated; roofline = max(FLOPs / peak FLOP/s, bytes / HBM bandwidth), a lower "
        "bound on the step):",
        f"{'stage':>5} {'px':>5} {'/dev':>5} {'acc':>3} {'args':>6} {'temp':>6} {'peak':>6} "
        f"{'est':>6} {'of':>5} {'max/dev':>7} {'TFLOP':>7} {'GB':>7} {'pad':>5} {'floor':>6} "
        f"{'x':>5} {'roofline':>9} {'hours':>6} {'compile':>8}",
    ]
    for s in r["stages"]:
        c = s["compiled"]
        lines.append(
            f"{s['stage']:>5} {s['image_size']:>5} {s['per_device_batch']:>5} "
            f"{s['accumulate_steps']:>3} {c['argument_gib']:>6.2f} {c['temp_gib']:>6.2f} "
            f"{c['peak_gib']:>6.2f} {s['memory_gib_per_device']['total']:>6.2f} "
            f"{s['memory_gib_per_device']['usable']:>5.1f} {c['largest_batch_per_device']:>7} "
            f"{c['tflops']:>7.2f} {c['gb_accessed']:>7.1f} {c.get('tile_padding_gb', 0):>5.1f} "
            f"{s['traffic_floor_gb']:>6.1f} "
            f"{c['gb_accessed'] / s['traffic_floor_gb']:>5.1f} "
            f"{c['roofline_seconds'] * 1e3:>7.0f}ms "
            f"{c['step_hours']:>6.2f} {c['compile_seconds']:>7.0f}s"
            f"{'' if c['fits'] else '  DOES NOT FIT'}"
        )
    e = r["embed_compiled"]
    lines.append(
        f"embed {e['image_size']:>5} {e['global_batch'] // r['num_devices']:>5} {1:>3} "
        f"{e['argument_gib']:>6.2f} {e['temp_gib']:>6.2f} {e['peak_gib']:>6.2f} {'':>6} "
        f"{'':>5} {'':>7} {e['tflops']:>7.2f} {e['gb_accessed']:>7.1f} {'':>5} {'':>6} {'':>5} "
        f"{e['roofline_seconds'] * 1e3:>7.0f}ms {'':>6} {e['compile_seconds']:>7.0f}s"
        f"{'' if e['fits'] else '  DOES NOT FIT'}"
    )
    lines.append(
        "(GB = XLA's bytes accessed per device per step; pad = the part of it that is tile "
        "padding, dimensions rounded up to the TPU's 8 x 128 tiles; floor = the traffic "
        "floor above; x = GB / floor, the distance to the limit)"
    )
    for s in r["stages"]:
        top = s["compiled"].get("top_traffic", [])
        if not top:
            continue
        lines.append(f"stage {s['stage']}'s largest traffic (operands + result, GB):")
        for t in top:
            lines.append(f"  {t['gb']:>7.2f}  {t['pass']:<8} {t['layer']}  ({t['op']})")
        layers = s["compiled"].get("by_layer", [])
        if layers:
            lines.append(
                f"stage {s['stage']}'s traffic by layer (GB, of it tile padding): "
                + ", ".join(f"{t['layer']} {t['gb']:.2f} ({t['padding_gb']:.2f})" for t in layers)
            )
    lines.append(
        f"training at the roofline: {r['roofline_hours']:.1f} hours on {r['num_devices']} "
        f"devices (a bound; at {r['mfu']:.0%} MFU: {r['total_hours']:.1f})"
    )
    return lines


def misfit_message(report: dict) -> str | None:
    """One line naming the first stage that does not fit, or None."""
    for s in report["stages"]:
        if not s["fits"]:
            mem = s["memory_gib_per_device"]
            need = s["compiled"]["peak_gib"] if "compiled" in s else mem["total"]
            how = (
                "compiled for the TPU"
                if "compiled" in s
                else "estimated, an upper bound; --compile gives XLA:TPU's own figure"
                if report["accelerator"].startswith("tpu_")
                else "estimated"
            )
            return (
                f"stage {s['stage']} ({s['image_size']} px, batch {s['per_device_batch']} per "
                f"device) needs {need:.1f} GiB per device ({how}) but a "
                f"{report['accelerator_name']} has {mem['usable']:.1f} GiB usable: lower "
                "the batch, raise the stage's accumulate_steps, set model.remat=True, "
                "mesh.fsdp=True, or shard the head over more devices (mesh.model)"
            )
    return None


def run_dry(
    config,
    workdir: str,
    *,
    config_name: str,
    as_json: bool,
    compile: bool = False,
    calibrate_host: bool = False,
) -> int:
    """Prints the plan; returns 0, or 2 (with one line on stderr) when it won't fit.
    Hosts that fall behind are flagged in the table, not an error: the run works,
    slower."""
    import sys

    try:
        report = plan_run(
            config,
            workdir,
            config_name=config_name,
            compile=compile,
            calibrate_host=calibrate_host,
        )
    except DryRunError as e:
        print(f"dry run: {e}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(report) if as_json else format_plan(report), flush=True)
    except BrokenPipeError:  # `... --dry_run | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    problem = misfit_message(report)
    if problem:
        print(f"dry run: {problem}", file=sys.stderr)
        return 2
    return 0

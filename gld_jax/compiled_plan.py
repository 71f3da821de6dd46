"""`--dry_run --compile`: XLA:TPU's own figures for every stage of a config.

For each stage, the trainer's own step (`train.stage_step.make_stage_step`:
same graphdef, optimizer, micro-batching, shardings and donation) is built from
an abstract model, lowered with abstract inputs placed on a mesh of the target
slice's devices (`train.aot`), and compiled by libtpu's XLA:TPU compiler; so
is the eval-mode embedding step at the final stage's size and the eval batch.
Nothing is allocated: the 203,094-class head exists only as a shape.

Per stage it reports XLA's argument / output / alias / temporary bytes per
device and the peak they imply, FLOPs and bytes accessed per device, a roofline
step time (a lower bound), the compile time, and the largest per-device batch
that would fit in one pass, extrapolated linearly from the compiled
temporaries (argument bytes do not grow with the batch; the temporaries do, in
proportion to the images a device holds at once).
"""

from __future__ import annotations

import dataclasses
import gc
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models.landmark import build_model, padded_num_classes
from gld_jax.models.layers import tracing_for
from gld_jax.retrieval.extract import make_embed_step
from gld_jax.train import aot, traffic
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.stage_step import concrete_rng_state, make_stage_step
from gld_jax.train.stages import StagePlan
from gld_jax.train.state import split_model

log = logging.getLogger(__name__)

TOP_TRAFFIC = 6  # instructions listed per stage


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _abstract_model(config, num_classes: int):
    model_config = config.model.copy_and_resolve_references()
    with model_config.unlocked():
        model_config.init_from = ""  # weights do not change shapes; nothing is read
    return nnx.eval_shape(lambda: build_model(model_config, num_classes, seed=config.seed))


def _stage_figures(config, plan: StagePlan, mesh) -> tuple[aot.CompiledFigures, int, list[dict]]:
    """(figures, micro-batches, largest traffic) of one stage's train step."""
    model = _abstract_model(config, plan.num_classes)
    stage = make_stage_step(
        config, plan, model, mesh, run_key=jax.random.key(config.seed), platform="tpu"
    )
    rows = mesh_lib.batch_sharding(mesh)
    size = plan.image_size
    batch = {
        "image": jax.ShapeDtypeStruct((plan.batch_size, size, size, 3), jnp.uint8, sharding=rows),
        "label": jax.ShapeDtypeStruct((plan.batch_size,), jnp.int32, sharding=rows),
    }
    margins = jax.ShapeDtypeStruct(
        (padded_num_classes(plan.num_classes),), jnp.float32, sharding=mesh_lib.replicated(mesh)
    )
    with tracing_for("tpu"):
        lowered = stage.step.lower(_abstract(stage.state, stage.shardings), batch, margins)
    compiled, figures = aot.compile_figures(lowered, loop_trips=stage.accumulate_steps)
    ops = traffic.hlo_traffic(compiled.as_text())
    where = {
        "top_traffic": traffic.top_traffic(ops, TOP_TRAFFIC),
        "by_layer": traffic.layer_table(ops, TOP_TRAFFIC),
        "tile_padding_gb": traffic.tile_padding_bytes(ops) / 1e9,
    }
    return figures, stage.accumulate_steps, where


def _embed_figures(config, plan: StagePlan, mesh, global_batch: int) -> aot.CompiledFigures:
    model = _abstract_model(config, plan.num_classes)
    model.eval()
    graphdef, params, stats, rng_state = split_model(model)
    p_sh = mesh_lib.tree_shardings(params, mesh)
    s_sh = mesh_lib.tree_shardings(stats, mesh)
    step = make_embed_step(
        graphdef=graphdef,
        rng_state=concrete_rng_state(rng_state),
        mesh=mesh,
        params_sharding=p_sh,
        stats_sharding=s_sh,
    )
    size = plan.image_size
    images = jax.ShapeDtypeStruct(
        (global_batch, size, size, 3), jnp.uint8, sharding=mesh_lib.batch_sharding(mesh)
    )
    with tracing_for("tpu"):
        lowered = step.lower(_abstract(params, p_sh), _abstract(stats, s_sh), images)
    return aot.compile_figures(lowered)[1]


def _release_compiler_memory() -> None:
    # A B7 stage's compile holds ~19 GB of host memory; without this the next
    # stage's compile would start on top of what the last one kept cached.
    jax.clear_caches()
    gc.collect()


@dataclasses.dataclass(frozen=True)
class Target:
    """What the compiled figures are measured against, per device."""

    memory_bytes: float  # usable HBM (the dry run's budget)
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes_per_second: float


def largest_batch(figures: aot.CompiledFigures, micro_batch: int, budget: float) -> int:
    """Per-device images one pass could hold within `budget` bytes, by linear
    extrapolation of the temporaries from `micro_batch` images (0 when even the
    arguments do not fit)."""
    fixed = figures.peak_bytes - figures.temp_bytes
    per_image = figures.temp_bytes / max(micro_batch, 1)
    if budget <= fixed or per_image <= 0:
        return 0
    return int((budget - fixed) // per_image)


def figures_dict(f: aot.CompiledFigures, target: Target) -> dict:
    gib = 2.0**30
    return {
        "argument_gib": f.argument_bytes / gib,
        "output_gib": f.output_bytes / gib,
        "alias_gib": f.alias_bytes / gib,
        "temp_gib": f.temp_bytes / gib,
        "peak_gib": f.peak_bytes / gib,
        "tflops": f.flops / 1e12,
        "gb_accessed": f.bytes_accessed / 1e9,
        "roofline_seconds": f.roofline_seconds(target.peak_flops, target.hbm_bytes_per_second),
        "compile_seconds": f.compile_seconds,
        "loop_trips": f.loop_trips,
        "fits": f.peak_bytes <= target.memory_bytes,
    }


def compile_plan(
    config, plans: list[StagePlan], *, num_devices: int, mesh_shape: tuple[int, int], target: Target
) -> dict:
    """The compiled figures of every stage and of the embedding step.

    Returns {"topology", "hosts", "stages": [per-stage dict], "embed": dict}.
    Raises:
      aot.TopologyError: a target that cannot be compiled for (one line).
    """
    topology, devices = aot.resolve_target_devices(config.target, num_devices)
    mesh = mesh_lib.make_mesh(*mesh_shape, devices=devices)
    hosts = len({d.process_index for d in devices})
    stages = []
    for plan in plans:
        log.info("compiling stage %d (%d px) for %s", plan.index, plan.image_size, topology)
        figures, accumulate, where = _stage_figures(config, plan, mesh)
        _release_compiler_memory()
        micro = plan.batch_size // (num_devices * accumulate)
        entry = figures_dict(figures, target) | where
        entry["largest_batch_per_device"] = largest_batch(figures, micro, target.memory_bytes)
        entry["step_hours"] = entry["roofline_seconds"] * plan.steps / 3600
        stages.append(entry)
    last = plans[-1]
    local_devices = len(devices) // hosts
    per_host = max(local_devices, (config.eval.batch_size // local_devices) * local_devices)
    log.info("compiling the embedding step (%d px) for %s", last.image_size, topology)
    embed = figures_dict(_embed_figures(config, last, mesh, per_host * hosts), target)
    embed.update(image_size=last.image_size, global_batch=per_host * hosts)
    return {"topology": topology, "hosts": hosts, "stages": stages, "embed": embed}

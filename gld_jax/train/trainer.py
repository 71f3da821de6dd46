"""The training loop over progressive stages.

Sections: plan -> model -> per stage (head, optimizer, shard, resume, input,
loop with logging / NaN check / checkpoints, validation). Everything a resumed
run needs is derived from the latest checkpoint's global step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gld_jax.config.defaults import training_folds
from gld_jax.data import manifest as manifest_lib
from gld_jax.data.batches import BatchSource
from gld_jax.losses import dynamic_margins
from gld_jax.models.landmark import LandmarkModel, SubCenterHead, build_model, padded_num_classes
from gld_jax.train import faults, progress
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.checkpoint import Checkpointer
from gld_jax.train.optim import applied_learning_rate
from gld_jax.train.preemption import PreemptionWatcher, TrainingPreempted
from gld_jax.train.stage_step import make_stage_step
from gld_jax.train.stages import StagePlan, locate, plan_stages
from gld_jax.train.state import eval_params, state_from_tree, state_to_tree, update_model
from gld_jax.train.watchdog import StepWatchdog, run_watchdog
from gld_jax.utils.progress import progress_bar
from gld_jax.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Loss or gradients became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass(kw_only=True)
class TrainResult:
    """What `train` leaves: the model (eval-mode weights of the last stage run
    or restored), the stage plans, and this call's progress."""

    model: LandmarkModel
    plans: list[StagePlan]
    # One {method: GAP} per stage trained in this run (see validate_fn).
    validation: list[dict[str, float]]
    steps_run: int
    train_seconds: float
    global_step: int  # global step reached
    complete: bool  # every stage finished
    history: list[dict] = dataclasses.field(default_factory=list)  # logged metrics

    @property
    def validation_gap(self) -> list[float]:
        """The first method's GAP per stage (nan when validation was skipped)."""
        return [next(iter(v.values()), float("nan")) for v in self.validation]


def stage_label_info(
    tfrecord_dir: str, config, manifest: manifest_lib.Manifest | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Classes and training images (held-out fold excluded) per label set, from
    `manifest` when the caller has read it already."""
    m = manifest or manifest_lib.read_manifest(tfrecord_dir)
    folds = training_folds(config)
    num_classes = {name: len(m.landmark_ids(name)) for name in m.label_sets}
    num_train = {
        name: m.num_examples("train", label_set=name, folds=folds) for name in m.label_sets
    }
    return num_classes, num_train


def _new_head(model: LandmarkModel, num_classes: int, seed: int) -> None:
    model.head = SubCenterHead(
        num_classes, model.sub_centers, model.embedding_dim, rngs=nnx.Rngs(params=seed)
    )


def _padded_margins(config, class_counts) -> np.ndarray:
    """float32 [padded classes] margins; padding classes (masked out of the loss)
    get the smallest margin."""
    margins = np.asarray(
        dynamic_margins(
            np.asarray(class_counts),
            margin_min=config.loss.margin_min,
            margin_range=config.loss.margin_range,
            power=config.loss.margin_power,
        ),
        np.float32,
    )
    padded = np.full(padded_num_classes(len(margins)), config.loss.margin_min, np.float32)
    padded[: len(margins)] = margins
    return padded


def _to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every stage of one `train` call shares."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    plans: list[StagePlan]
    manifest: manifest_lib.Manifest
    batches: BatchSource
    writer: SummaryWriter
    ckpt: Checkpointer
    preemption: PreemptionWatcher
    watchdog: StepWatchdog
    validate_fn: Callable | None
    stop_after_steps: int | None


def train(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    tfrecord_dir: str,
    mesh: Mesh,
    batches: BatchSource,
    validate_fn: Callable | None = None,
    stop_after_steps: int | None = None,
    write_summaries: bool = True,
) -> TrainResult:
    """Trains every stage of `config` not yet done in `workdir`.

    Args:
      tfrecord_dir: the converted data; only its manifest is read here (the
        stage plans, class counts for the margins).
      batches: the input stream, `batches(plan, skip_batches)` -> this
        process's numpy batches of a stage (gld_jax.data.batches.host_batches).
      validate_fn: optional `f(model, plan) -> {method: GAP}` called after each stage.
      stop_after_steps: stop (after checkpointing) once this many steps ran in
        this call; used by tests and to split long jobs.
      write_summaries: False opens no TensorBoard writer (a restore that trains
        nothing leaves no empty event file in the run).
    """
    manifest = manifest_lib.read_manifest(tfrecord_dir)
    num_classes, num_train = stage_label_info(tfrecord_dir, config, manifest)
    plans = plan_stages(config.stages, num_classes=num_classes, num_train=num_train)
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as cleanup:
        writer = SummaryWriter(
            os.path.join(workdir, "tensorboard"), enabled=is_main and write_summaries
        )
        cleanup.callback(writer.close)
        ckpt_dir = config.checkpoint_dir or os.path.join(workdir, "checkpoints")
        ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
        cleanup.callback(ckpt.close)  # waits for a pending async save, also on errors
        progress.begin(ckpt.directory)
        preemption = PreemptionWatcher()
        cleanup.callback(preemption.close)
        watchdog = run_watchdog(config.train.watchdog_s)
        cleanup.callback(watchdog.close)
        run = _Run(
            config=config,
            workdir=workdir,
            mesh=mesh,
            plans=plans,
            manifest=manifest,
            batches=batches,
            writer=writer,
            ckpt=ckpt,
            preemption=preemption,
            watchdog=watchdog,
            validate_fn=validate_fn,
            stop_after_steps=stop_after_steps,
        )
        return _train_stages(run)


def _train_stages(run: _Run) -> TrainResult:
    config, workdir, mesh, plans = run.config, run.workdir, run.mesh, run.plans
    ckpt, writer, preemption, watchdog = run.ckpt, run.writer, run.preemption, run.watchdog
    validate_fn, stop_after_steps = run.validate_fn, run.stop_after_steps
    is_main = jax.process_index() == 0

    # ---- where are we? ---------------------------------------------------
    latest = ckpt.latest_step()
    start_stage, start_done = (0, 0) if latest is None else locate(latest, plans)
    if latest is not None:
        meta = ckpt.restore_meta(latest)
        if (
            meta.get("num_classes") != plans[start_stage].num_classes
            or meta.get("head_rows") != padded_num_classes(plans[start_stage].num_classes)
            or meta.get("backbone") != config.model.backbone
        ):
            raise ValueError(
                f"the checkpoint at step {latest} in {workdir} was made by a different config "
                f"({meta.get('backbone')}, {meta.get('num_classes')} classes); "
                "use a new --workdir"
            )
        log.info("resuming from step %d: stage %d, %d steps done", latest, start_stage, start_done)
        progress.note_step(latest)

    # ---- model ---------------------------------------------------------------
    model = build_model(config.model, plans[start_stage].num_classes, seed=config.seed)
    run_key = jax.random.key(config.seed)
    gaps: list[dict[str, float]] = []
    history: list[dict] = []
    steps_run, t_train = 0, 0.0

    def outcome(*, global_step: int, complete: bool) -> TrainResult:
        return TrainResult(
            model=model,
            plans=plans,
            validation=gaps,
            steps_run=steps_run,
            train_seconds=t_train,
            global_step=global_step,
            complete=complete,
            history=history,
        )

    for plan in plans[start_stage:]:
        resuming = latest is not None and plan.index == start_stage
        done = start_done if resuming else 0
        if not resuming and plan.index > 0 and plan.new_head:
            _new_head(model, plan.num_classes, seed=config.seed + 1000 * plan.index)

        # ---- optimizer, sharded state and the compiled step ----------------------
        stage_step = make_stage_step(config, plan, model, mesh, run_key=run_key)
        schedule, step_fn = stage_step.schedule, stage_step.step
        state = mesh_lib.put_on_mesh(stage_step.state, stage_step.shardings)
        if resuming:
            state = state_from_tree(state, ckpt.restore(latest, state_to_tree(state)))
        if done >= plan.steps:  # this stage finished before the restart
            update_model(model, *jax.device_get((eval_params(state), state.batch_stats)))
            continue
        if stop_after_steps is not None and steps_run >= stop_after_steps:
            # the step budget ran out on a stage boundary (or was 0): stop here
            update_model(model, *jax.device_get((eval_params(state), state.batch_stats)))
            return outcome(global_step=plan.first_step + done, complete=False)

        counts = run.manifest.class_counts(plan.label_set)
        margins = jax.device_put(_padded_margins(config, counts), mesh_lib.replicated(mesh))

        # ---- input ------------------------------------------------------------
        batches = run.batches(plan, done)

        # ---- loop -------------------------------------------------------------------
        bar = progress_bar(
            total=plan.steps,
            initial=done,
            desc=f"stage {plan.index} {plan.image_size}px",
            enabled=is_main,
        )
        last_t, last_step = time.perf_counter(), done
        stage_t0 = last_t
        watchdog.pause()  # the stage's first step compiles
        previous = None
        for step in range(done, plan.steps):
            batch = _to_global(next(batches), mesh)
            state, metrics = step_fn(state, batch, margins)
            if previous is not None:
                # One step in flight: the watchdog hears of each step when it has
                # finished, while the next one is already queued.
                jax.block_until_ready(previous)
                progress.note_step(plan.first_step + step)
                watchdog.step_done()
            previous = metrics
            steps_run += 1
            step_done = step + 1
            preempted = preemption.requested(step_done)
            stop_now = stop_after_steps is not None and steps_run >= stop_after_steps
            end = step_done == plan.steps or stop_now or preempted
            log_now = end or step_done % config.log_every_steps == 0
            save_now = end or step_done % config.checkpoint_every_steps == 0
            if log_now or save_now:
                # Checked before every save: non-finite parameters make every
                # later loss non-finite, so no poisoned state is ever written.
                metrics = jax.device_get(metrics)
                if not all(math.isfinite(float(v)) for v in metrics.values()):
                    raise TrainingDiverged(
                        f"non-finite loss/gradients at stage {plan.index} step {step_done} "
                        f"(loss={float(metrics['loss'])}); last good checkpoint kept"
                    )
            if log_now:
                now = time.perf_counter()
                rate = (step_done - last_step) * plan.batch_size / max(now - last_t, 1e-9)
                last_t, last_step = now, step_done
                scalars = {k: float(v) for k, v in metrics.items()}
                history.append({"step": plan.first_step + step_done, **scalars})
                scalars["learning_rate"] = applied_learning_rate(schedule, step_done)
                scalars["images_per_second"] = rate
                writer.scalars(
                    plan.first_step + step_done, scalars, prefix=f"train/stage{plan.index}"
                )
                bar.set_postfix(
                    loss=f"{scalars['loss']:.3f}",
                    acc=f"{scalars['accuracy']:.2f}",
                    img_s=f"{rate:.0f}",
                )
            bar.update(1)
            if save_now:
                _save(ckpt, plan, step_done, state, config)
            faults.after_step(plan.first_step + step_done, ckpt.wait)
            if preempted:
                bar.close()
                raise TrainingPreempted(
                    f"SIGTERM: checkpoint saved at step {plan.first_step + step_done}; "
                    "rerun the same command to resume"
                )
            if stop_now:
                break
        bar.close()
        watchdog.pause()  # validation and the next stage's compile are not steps
        progress.note_step(plan.first_step + step_done)
        t_train += time.perf_counter() - stage_t0
        update_model(model, *jax.device_get((eval_params(state), state.batch_stats)))
        if step_done < plan.steps:  # stopped early on request
            return outcome(global_step=plan.first_step + step_done, complete=False)
        if validate_fn is not None:
            result = validate_fn(model, plan)
            gaps.append({k: float(v) for k, v in result.items()})
            writer.scalars(
                plan.last_step,
                {f"gap_{k}": v for k, v in gaps[-1].items()},
                prefix=f"val/stage{plan.index}",
            )
            for method, gap in gaps[-1].items():
                log.info("stage %d validation GAP (%s) %.4f", plan.index, method, gap)

    return outcome(global_step=plans[-1].last_step, complete=True)


class RunNotFinished(ValueError):
    """restore_trained_model found no finished run; str() is one line."""


def _no_batches(plan, skip_batches: int):
    raise AssertionError("restoring a model reads no training data")


def restore_trained_model(
    config: ml_collections.ConfigDict, *, workdir: str, tfrecord_dir: str, mesh: Mesh
) -> TrainResult:
    """The finished run of `config` in `workdir`, restored from its last checkpoint
    (nothing is trained and no training data is read).

    Raises:
      RunNotFinished: the workdir's checkpoints stop before the last stage's end.
    """
    result = train(
        config,
        workdir=workdir,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
        batches=_no_batches,
        stop_after_steps=0,
        write_summaries=False,
    )
    if not result.complete:
        raise RunNotFinished(
            f"{workdir} holds no finished run (step {result.global_step} of "
            f"{result.plans[-1].last_step}); train it first"
        )
    return result


def _save(ckpt: Checkpointer, plan: StagePlan, step_done: int, state, config) -> None:
    global_step = plan.first_step + step_done
    meta = {
        "stage": plan.index,
        "stage_step": step_done,
        "global_step": global_step,
        "num_classes": plan.num_classes,
        "head_rows": padded_num_classes(plan.num_classes),
        "label_set": plan.label_set,
        "image_size": plan.image_size,
        "backbone": config.model.backbone,
    }
    ckpt.save(global_step, state_to_tree(state), meta)

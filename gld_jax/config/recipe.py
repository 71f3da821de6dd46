"""The GLR2020 3rd-place recipe as a config: one function, six models.

Numbers (arXiv 2010.05350 and the team's published training commands, read
2026-11-27): stage 0 trains at 256 px for 10 epochs on all 203,094 classes of
train.csv; stages 1 and 2 start a new head on the 81,313 classes of
train_clean.csv at the model's medium and final sizes. Sub-center ArcFace with
K=3, s=80 and class-size margins in [0.05, 0.5]; GeM; a 512-d neck. Adam
without weight decay; the learning rate warms up for one epoch to 10x the
command's `--init-lr` (1e-4 for stages 0-1, 1e-5..5e-5 for the last stage),
then follows a cosine.

What we change, and why:
- Batches are global and divisible by the target's devices; the peak learning
  rate is the recipe's scaled linearly by our batch / the recipe's batch (8 GPUs
  times its per-GPU batch), so other slice sizes scale the same way (see
  `scaled`).
- The recipe's medium stage runs the first N epochs of a longer cosine (e.g. 13
  of 40); ours is a full cosine over the N epochs, which ends lower.
- Compute in bfloat16 (parameters float32): TPUs run bf16 at full rate.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from gld_jax.config.defaults import base_config, stage

RECIPE_GPUS = 8  # the recipe's batch sizes are per GPU on 8 V100s


@dataclasses.dataclass(frozen=True)
class RecipeStage:
    """One stage as the recipe ran it and as we run it on the target."""

    image_size: int
    epochs: float
    recipe_batch_per_gpu: int
    recipe_peak_lr: float  # 10 x the command's --init-lr (the warmup multiplier)
    batch_size: int  # ours, global
    accumulate_steps: int = 1  # micro-batches per update: only where one pass does not fit


def scaled(s: RecipeStage) -> float:
    """Peak learning rate for our batch: linear in batch size from the recipe's."""
    return s.recipe_peak_lr * s.batch_size / (s.recipe_batch_per_gpu * RECIPE_GPUS)


def recipe_config(
    backbone: str,
    stages: tuple[RecipeStage, RecipeStage, RecipeStage],
    *,
    fold: int,
    remat: bool = False,
    mfu: float = 0.05,
) -> ml_collections.ConfigDict:
    """A full GLDv2 run of one ensemble member for a TPU v3-32 slice.

    Scaling to another slice: keep the per-device batch (batch_size / devices)
    and scale `batch_size` with the device count, or keep the batch and let
    the learning rate stay; `target` and `mesh.model` say where it runs.

    `mfu` only feeds the dry run's time estimate. EfficientNets are bound by
    memory traffic, not FLOPs: their bf16 train step reached 2.7% of an H200's
    peak (B5 at 456 px, BENCHMARKS.md), so 5% is the default; nothing has been
    measured on a TPU yet, so recalibrate from a first run's steps/s.
    """
    c = base_config()
    c.model.backbone = backbone
    c.model.dtype = "bfloat16"
    c.model.remat = remat
    c.model.drop_path_rate = 0.2
    c.loss.scale = 80.0
    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.0  # the recipe's plain Adam
    # Micro-batching is per stage (RecipeStage.accumulate_steps), set from
    # XLA:TPU's compiled memory figures (`--dry_run --compile`): one pass
    # wherever the stage's batch fits 90% of a v3 core's 16 GiB.
    c.optimizer.accumulate_steps = 1
    c.fold = fold
    c.folds = 5
    c.val_every = 15
    c.eval.embedding_dtype = "float16"
    c.eval.batch_size = 256
    # GLDv2 images are ~800 px on the long side; keep the bytes, decode with DCT.
    c.input.dct_scaling = True
    # Seeded order: a run resumed after a preemption neither replays nor skips
    # images (False is faster on few host cores, but resumes approximately).
    c.input.deterministic = True
    c.shuffle_buffer = 16_384
    c.convert.num_shards = 1024
    # v3-32: 32 TensorCores on 4 hosts. The 203,094-class head (1.25 GB, 3.7 GB
    # with Adam) is split over 8 devices; the backbone is data-parallel over all 32.
    c.target.accelerator = "tpu_v3"
    c.target.num_devices = 32
    c.target.mfu = mfu
    c.mesh.data = -1
    c.mesh.model = 8
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    labels = ("full", "clean", "clean")
    c.stages = [
        stage(
            image_size=s.image_size,
            epochs=s.epochs,
            batch_size=s.batch_size,
            learning_rate=scaled(s),
            label_set=label_set,
            new_head=i < 2,
            warmup_epochs=min(1.0, s.epochs / 10),
            accumulate_steps=s.accumulate_steps,
        )
        for i, (s, label_set) in enumerate(zip(stages, labels, strict=True))
    ]
    return c

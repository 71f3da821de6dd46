"""efficientnet_b7: one member of the GLR2020 recipe's ensemble, for a TPU v3-32 slice.

    python -m gld_jax.main --config configs/effb7.py --dry_run
    python -m gld_jax.main --config configs/effb7.py \
        --config.tfrecord_dir=gs://BUCKET/gldv2_tfrecords \
        --workdir gs://BUCKET/runs/effb7_fold0 --mode train
    (on a pod: scripts/tpu/train.sh configs/effb7.py; README "Train the ensemble on a TPU pod")

Stages (px / epochs): 256, 512, 672 / 10, 13, 1: all 203,094 classes, then a new
head on the 81,313 clean classes. Held-out fold 0; the recipe held out fold 0 for this model, and
`--config.fold=k` trains any of the five. Recipe commands: b7ns: 256 px batch
42 x 6 GPUs; 512 px 16 x 8 (13 of 40 epochs); 672 px 10 x 8, init-lr 5e-5.
Batch and learning-rate scaling: gld_jax/config/recipe.py.
"""

from gld_jax.config.recipe import RecipeStage, recipe_config


def get_config():
    stages = (
        RecipeStage(256, 10, recipe_batch_per_gpu=31, recipe_peak_lr=0.001, batch_size=256),
        RecipeStage(512, 13, recipe_batch_per_gpu=16, recipe_peak_lr=0.001, batch_size=128),
        RecipeStage(672, 1, recipe_batch_per_gpu=10, recipe_peak_lr=0.0005, batch_size=64),
    )
    return recipe_config("efficientnet_b7", stages, fold=0)

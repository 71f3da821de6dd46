"""efficientnet_b5: one member of the GLR2020 recipe's ensemble, for a TPU v3-32 slice.

    python -m gld_jax.main --config configs/effb5.py --dry_run
    python -m gld_jax.main --config configs/effb5.py \
        --config.tfrecord_dir=gs://BUCKET/gldv2_tfrecords \
        --workdir gs://BUCKET/runs/effb5_fold0 --mode train
    (on a pod: scripts/tpu/train.sh configs/effb5.py; README "Train the ensemble on a TPU pod")

Stages (px / epochs): 256, 576, 768 / 10, 16, 1: all 203,094 classes, then a new
head on the 81,313 clean classes. Held-out fold 0; the recipe held out fold 2 for this model, and
`--config.fold=k` trains any of the five. Recipe commands: b5ns: 256 px 32 x 8;
576 px 24 x 8; 768 px 13 x 8, init-lr 3e-5.
Batch and learning-rate scaling: gld_jax/config/recipe.py.
"""

from gld_jax.config.recipe import RecipeStage, recipe_config


def get_config():
    stages = (
        RecipeStage(256, 10, recipe_batch_per_gpu=32, recipe_peak_lr=0.001, batch_size=256),
        RecipeStage(576, 16, recipe_batch_per_gpu=24, recipe_peak_lr=0.001, batch_size=128),
        RecipeStage(768, 1, recipe_batch_per_gpu=13, recipe_peak_lr=0.0003, batch_size=64),
    )
    return recipe_config("efficientnet_b5", stages, fold=0)

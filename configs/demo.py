"""Demo: the whole recipe, small, on a synthetic GLDv2-like set, on 2 CPU cores.

    python -m gld_jax.main --config configs/demo.py --workdir runs/demo
    (or: make demo)

A 4-block EfficientNet-B0 from scratch, GeM, 512-d neck, Sub-center ArcFace (K=3, class-size
margins), two progressive stages (64 px on the full label set, then a new head
on the clean set at 96 px), ScaNN retrieval blended with the head's scores (the
recipe's submission), and GAP on the test split for every prediction mode.
"""

from gld_jax.config import base_config, stage


def get_config():
    c = base_config()
    c.synthetic.enabled = True
    c.synthetic.num_classes = 60
    c.convert.num_shards = 4
    # The 4-block B0 (every block kind, a quarter of the depth): from scratch in
    # a few hundred steps the 16-block B0 learns far less (README, "Confidences
    # that rank": test GAP 0.16 top-1 against 0.5 here, same steps).
    c.model.backbone = "efficientnet_b0_shallow"
    c.model.drop_path_rate = 0.1
    # From-scratch training on few classes: the recipe's s=80 (tuned for 200k
    # classes and ImageNet weights) saturates the softmax at once here.
    c.loss.scale = 30.0
    c.optimizer.weight_decay = 1e-4
    c.stages = [
        stage(
            image_size=64,
            epochs=6,
            batch_size=32,
            learning_rate=2e-3,
            label_set="full",
            warmup_epochs=0.5,
        ),
        stage(
            image_size=96,
            epochs=3,
            batch_size=32,
            learning_rate=1e-3,
            label_set="clean",
            new_head=True,
            warmup_epochs=0.25,
        ),
    ]
    c.val_every = 3  # few held-out images in the small set: validate on every 3rd
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.eval.batch_size = 64
    # Report both validations (the recipe's head one and retrieval), and the
    # ladder's re-rank rows with the Public test non-landmarks as the
    # non-landmark set (so the re-rank is judged on Private).
    c.eval.validation = "both"
    c.eval.nonlandmark_usage = "Public"
    return c

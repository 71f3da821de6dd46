"""A tiny synthetic dataset and run config shared by the tests and the multi-host worker."""

from gld_jax.config import base_config, stage

# generate_gldv2_like arguments of the small data tests: 8 classes, 64x48 images.
TINY_DATA = dict(
    num_classes=8,
    min_images=2,
    max_images=20,
    num_test=24,
    num_index=10,
    image_size=(64, 48),
    show_progress=False,
)


def tiny_config(data_dir):
    """8 synthetic classes, 32-40 px, batch 8, two stages (full, then clean), a 4-block B0."""
    c = base_config()
    c.data_dir = str(data_dir)
    c.synthetic.enabled = True
    c.synthetic.num_classes = 8
    c.synthetic.max_images = 20
    c.synthetic.num_test = 20
    c.synthetic.image_width, c.synthetic.image_height = 64, 48
    c.convert.num_shards = 2
    c.model.backbone = "efficientnet_b0_shallow"  # 4 blocks: compiles in a fraction of B0's time
    c.model.embedding_dim = 32
    c.loss.scale = 30.0
    c.stages = [
        stage(image_size=32, epochs=0.5, batch_size=8, learning_rate=1e-3),
        stage(image_size=40, epochs=0.3, batch_size=8, learning_rate=1e-3, label_set="clean"),
    ]
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1000
    c.eval.validate = False
    return c

"""A tiny run config shared by the trainer tests and the multi-host worker."""

from gld_jax.config import base_config, stage


def tiny_config(data_dir):
    """8 synthetic classes, 32-40 px, batch 8, two stages (full, then clean)."""
    c = base_config()
    c.data_dir = str(data_dir)
    c.synthetic.enabled = True
    c.synthetic.num_classes = 8
    c.synthetic.max_images = 20
    c.synthetic.num_test = 20
    c.synthetic.image_width, c.synthetic.image_height = 64, 48
    c.convert.num_shards = 2
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

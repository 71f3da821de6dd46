"""The run of tests/test_host_faults.py's two-process `gld_jax.main` runs:
tests/tiny.py's synthetic set (generated into the workdir) and 4-block B0, one
stage of 8 steps at 32 px, a checkpoint every 2 steps."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny import tiny_config  # noqa: E402

from gld_jax.config import stage  # noqa: E402


def get_config():
    c = tiny_config("")  # data in <workdir>/data
    c.stages = [stage(image_size=32, epochs=1.4, batch_size=8, learning_rate=1e-3)]
    c.checkpoint_every_steps = 2
    return c

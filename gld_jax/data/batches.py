"""The training batch stream a trainer is handed: this process's rows of each
global batch of a stage, as numpy arrays, from the tf.data pipeline.

The trainer never builds it (it stays free of TensorFlow); the caller
(gld_jax.pipeline, tests, tools) passes `host_batches(config, tfrecord_dir)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np

from gld_jax.config.defaults import training_folds

Batch = dict[str, np.ndarray]
# (stage plan, batches already consumed) -> this process's batches from there on.
# The plan needs image_size, batch_size (global), label_set and index.
BatchSource = Callable[[object, int], Iterator[Batch]]


def host_batches(config, tfrecord_dir: str) -> BatchSource:
    """The config's training stream over `tfrecord_dir`'s shards.

    Each stage's stream is a deterministic function of (seed, stage), so
    skipping the batches a checkpoint already consumed resumes without
    repeating or losing data. With `input.augment_on` resolving to "device"
    the host leaves the flip, warp and cutout to the train step.
    """
    from gld_jax.data.augment_config import augments_on_device

    host_geometric = not augments_on_device(config, jax.default_backend())

    def batches(plan, skip_batches: int) -> Iterator[Batch]:
        from gld_jax.data import input_pipeline  # TensorFlow only when a stream starts

        pi, pc = jax.process_index(), jax.process_count()
        local = plan.batch_size // pc
        whole = config.data_sharding == "global"
        ds = input_pipeline.train_dataset(
            tfrecord_dir,
            image_size=plan.image_size,
            batch_size=plan.batch_size if whole else local,
            label_set=plan.label_set,
            seed=config.seed * 1000 + plan.index,
            skip_batches=skip_batches,
            process_index=0 if whole else pi,
            process_count=1 if whole else pc,
            options=input_pipeline.TrainOptions(
                folds=training_folds(config),
                augment=config.augment,
                host_geometric=host_geometric,
                shuffle_buffer=config.shuffle_buffer,
                deterministic=config.input.deterministic,
                dct_scaling=config.input.dct_scaling,
                sampling=config.input.sampling,
            ),
        )
        for batch in ds.as_numpy_iterator():
            yield (
                {k: v[pi * local : (pi + 1) * local] for k, v in batch.items()} if whole else batch
            )

    return batches

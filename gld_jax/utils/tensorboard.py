"""TensorBoard scalars: tensorboardX for local logdirs (no TensorFlow needed on
the train host), TensorFlow's own writer for gs:// (tensorboardX would need
google-cloud-storage there, which is not among our pins)."""

from __future__ import annotations

from gld_jax.utils import fs


class SummaryWriter:
    def __init__(self, logdir: str, *, enabled: bool = True):
        self._writer = self._tf = None
        if not enabled:
            return
        if fs.is_remote(logdir):
            import tensorflow as tf

            self._tf = tf
            self._writer = tf.summary.create_file_writer(logdir)
        else:
            from tensorboardX import SummaryWriter as _Writer

            self._writer = _Writer(logdir)

    def scalars(self, step: int, values: dict[str, float], *, prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            tag = f"{prefix}/{name}" if prefix else name
            if self._tf is not None:
                with self._writer.as_default():
                    self._tf.summary.scalar(tag, float(value), step=step)
            else:
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()

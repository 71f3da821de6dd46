"""TensorBoard scalars (tensorboardX: no TensorFlow needed on the train host)."""

from __future__ import annotations


class SummaryWriter:
    def __init__(self, logdir: str, *, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter as _Writer

            self._writer = _Writer(logdir)

    def scalars(self, step: int, values: dict[str, float], *, prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()

"""nnx variables that are cheap to update under a trace, and Rngs built from them.

Tracing a deep network updates thousands of BatchNorm statistics and RNG
counters; flax's own update path makes each one cost the length of the trace so
far. These subclasses keep the values and semantics and drop that cost.
"""

from __future__ import annotations

import jax
from flax import nnx


class _CheapUpdateUnderTrace:
    """Mixin for nnx Variables: a whole-array update ``v[...] = tracer`` skips
    flax's sharding probe.

    flax 0.12's ``Variable.__setitem__`` compares ``value.sharding`` with the old
    value's; on a tracer that attribute raises, and jax first builds the error text
    by walking every equation traced so far. Each BatchNorm statistics update (and
    each RNG counter bump) then costs O(trace length), and tracing a whole network
    is quadratic: EfficientNet-B7's ``--dry_run`` (configs/effb7.py) took 53 s, 6 s
    without it. A traced value replaces the array, as flax does when the probe
    matches; concrete values keep flax's path.
    """

    def __setitem__(self, key, value) -> None:
        if key is Ellipsis and isinstance(value, jax.core.Tracer):
            self.set_value(value)
        else:
            super().__setitem__(key, value)


class TracedUpdateBatchStat(_CheapUpdateUnderTrace, nnx.BatchStat):
    """``nnx.BatchStat`` that is cheap to update under a trace (see the mixin)."""


class TracedUpdateRngCount(_CheapUpdateUnderTrace, nnx.RngCount):
    """``nnx.RngCount`` that is cheap to bump under a trace (see the mixin)."""


def with_traceable_counter(stream: nnx.RngStream) -> nnx.RngStream:
    """Swaps `stream`'s counter for a ``TracedUpdateRngCount`` (same value) and
    returns the stream: same keys, cheap to draw from under a trace."""
    stream.count = TracedUpdateRngCount(stream.count.get_value(), tag=stream.tag)
    return stream


def traceable_rngs(*args, **kwargs) -> nnx.Rngs:
    """``nnx.Rngs(*args, **kwargs)`` whose counters are ``TracedUpdateRngCount``.

    For building a model under ``nnx.eval_shape`` or a trace, where every
    parameter initialiser bumps a counter: ResNeSt-200's abstract build takes 14 s
    with plain ``nnx.Rngs``. Same keys, same values.
    """
    rngs = nnx.Rngs(*args, **kwargs)
    for _, stream in rngs.items():
        with_traceable_counter(stream)
    return rngs

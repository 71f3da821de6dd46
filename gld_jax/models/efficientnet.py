"""EfficientNet B0-B7 (Tan & Le 2019) in Flax NNX, equal to Keras 3 ``keras.applications``.

Same block table, width/depth rounding, SE on the block's input filters, swish,
BatchNorm (momentum 0.99, eps 1e-3), TF "SAME" padding (Keras ``correct_pad`` for
stride 2 is the same thing) and stochastic depth growing linearly over blocks.
Submodule names follow the Keras layer names (``stem_conv``, ``blocks[i].dwconv``,
``top_bn``...) so ``keras_import`` can map weights by name.

The backbone ends at the top 1x1 conv + BN + swish (Keras ``include_top=False,
pooling=None``); the classifier dropout of the release belongs to the head.

Modes: modules are built in train mode (BN uses batch stats, drop path active).
``model.eval()`` switches every BatchNorm to running averages and every DropPath
off; ``model.train()`` switches back (or use ``nnx.view(model,
use_running_average=..., deterministic=...)`` for a non-mutating view).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models import lane_dense
from gld_jax.models.conv import trace_backend
from gld_jax.models.layers import (
    BatchNorm,
    Conv2d,
    ConvImpl,
    DepthwiseConv2d,
    DropPath,
    batch_norm,
)

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
DEPTH_DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One stage of MBConv blocks, before width/depth scaling (B0 numbers)."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float = 0.25
    id_skip: bool = True


# DEFAULT_BLOCKS_ARGS of the TF release / keras.applications.efficientnet.
BASE_BLOCKS: tuple[BlockArgs, ...] = (
    BlockArgs(kernel_size=3, repeats=1, filters_in=32, filters_out=16, expand_ratio=1, strides=1),
    BlockArgs(kernel_size=3, repeats=2, filters_in=16, filters_out=24, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=5, repeats=2, filters_in=24, filters_out=40, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=3, repeats=3, filters_in=40, filters_out=80, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=5, repeats=3, filters_in=80, filters_out=112, expand_ratio=6, strides=1),
    BlockArgs(kernel_size=5, repeats=4, filters_in=112, filters_out=192, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=3, repeats=1, filters_in=192, filters_out=320, expand_ratio=6, strides=1),
)

# B0's first three stages with 1, 2 and 1 blocks: every block kind (no expansion,
# expansion, stride 2, identity skip, SE) in 4 blocks instead of 16, at 1/8 of
# the input's resolution. Tracing and compiling the full B0 dominates a small
# run's time; this table keeps smoke runs and the trainer tests quick.
SHALLOW_BLOCKS: tuple[BlockArgs, ...] = tuple(
    dataclasses.replace(a, repeats=r) for a, r in zip(BASE_BLOCKS[:3], (1, 2, 1), strict=True)
)

# (width coefficient, depth coefficient, default resolution, head dropout), as Keras.
_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def efficientnet_variants() -> dict[str, tuple[float, float, int, float]]:
    """{"b0".."b7": (width, depth, default resolution px, head dropout rate)}."""
    return dict(_VARIANTS)


def canonical_variant(variant: str) -> str:
    """'B3', 'efficientnet_b3', 'efficientnet-b3' -> 'b3'; ValueError if unknown."""
    v = variant.lower().replace("-", "_").removeprefix("efficientnet_").removeprefix("efficientnet")
    if v not in _VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; known: {sorted(_VARIANTS)}")
    return v


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor``, never < 90%."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks per stage scaled by ``depth``, rounded up."""
    return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One concrete MBConv block after scaling; ``name`` is the Keras prefix, e.g. 'block2b'."""

    name: str
    filters_in: int
    filters_out: int
    kernel_size: int
    strides: int
    expand_ratio: int
    se_ratio: float
    id_skip: bool
    drop_rate: float


def block_specs(
    width: float,
    depth: float,
    drop_path_rate: float,
    blocks_args: Sequence[BlockArgs] = BASE_BLOCKS,
) -> list[BlockSpec]:
    """Expand the stage table into blocks; drop rate = drop_path_rate * index / n_blocks."""
    n_total = sum(round_repeats(a.repeats, depth) for a in blocks_args)
    specs, b = [], 0
    for i, a in enumerate(blocks_args):
        if a.repeats <= 0:
            raise ValueError(f"stage {i} has repeats={a.repeats}; must be > 0")
        f_in, f_out = round_filters(a.filters_in, width), round_filters(a.filters_out, width)
        for j in range(round_repeats(a.repeats, depth)):
            specs.append(
                BlockSpec(
                    name=f"block{i + 1}{chr(j + 97)}",
                    filters_in=f_in if j == 0 else f_out,
                    filters_out=f_out,
                    kernel_size=a.kernel_size,
                    strides=a.strides if j == 0 else 1,
                    expand_ratio=a.expand_ratio,
                    se_ratio=a.se_ratio,
                    id_skip=a.id_skip,
                    drop_rate=drop_path_rate * b / n_total,
                )
            )
            b += 1
    return specs


def _bn(features: int, dtype, rngs: nnx.Rngs) -> BatchNorm:
    # Keras' constants; layers.BatchNorm's hand-written CPU gradient is on.
    return batch_norm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


class MBConvBlock(nnx.Module):
    """Inverted residual block: [expand 1x1] -> depthwise kxk -> SE -> project 1x1 [+ skip]."""

    def __init__(
        self, spec: BlockSpec, *, dtype=jnp.float32, conv_impl: ConvImpl = "auto", rngs: nnx.Rngs
    ):
        filters = spec.filters_in * spec.expand_ratio
        conv = dict(dtype=dtype, impl=conv_impl, rngs=rngs)
        if spec.expand_ratio != 1:
            self.expand_conv = Conv2d(spec.filters_in, filters, 1, **conv)
            self.expand_bn = _bn(filters, dtype, rngs)
        else:
            self.expand_conv = None
            self.expand_bn = None
        self.dwconv = DepthwiseConv2d(filters, spec.kernel_size, strides=spec.strides, **conv)
        self.bn = _bn(filters, dtype, rngs)
        if 0 < spec.se_ratio <= 1:
            se_filters = max(1, int(spec.filters_in * spec.se_ratio))
            self.se_reduce = Conv2d(filters, se_filters, 1, use_bias=True, **conv)
            self.se_expand = Conv2d(se_filters, filters, 1, use_bias=True, **conv)
        else:
            self.se_reduce = None
            self.se_expand = None
        self.project_conv = Conv2d(filters, spec.filters_out, 1, **conv)
        self.project_bn = _bn(spec.filters_out, dtype, rngs)
        self.has_skip = spec.id_skip and spec.strides == 1 and spec.filters_in == spec.filters_out
        # Keras creates no dropout layer for rate 0 (the first block).
        if self.has_skip and spec.drop_rate > 0:
            self.drop_path = DropPath(spec.drop_rate, rngs=rngs)
        else:
            self.drop_path = None

    def __call__(self, inputs: jax.Array, fold: int = 1) -> jax.Array:
        """[N, H, W, Cin] -> [N, H/s, W/s, Cout] in the compute dtype; fold > 1:
        lane-dense [N, H, W/fold, fold * C] in and out (models/lane_dense.py,
        BatchNorm in train mode)."""
        # Named scopes put the layer in each op's name in XLA's compiled program
        # (the dry run's list of the step's largest traffic reads them).
        f = fold
        x = inputs
        if self.expand_conv is not None:
            with jax.named_scope("expand"):
                x = jax.nn.swish(self.expand_bn(self._pointwise(self.expand_conv, x, f), fold=f))
        with jax.named_scope("dwconv"):
            x = jax.nn.swish(self.bn(self._depthwise(x, f), fold=f))
        if self.se_reduce is not None:
            with jax.named_scope("se"):
                se = jax.nn.swish(self.se_reduce(lane_dense.spatial_mean(x, f)))
                x = x * lane_dense.per_lane(jax.nn.sigmoid(self.se_expand(se)), f)
        with jax.named_scope("project"):
            x = self.project_bn(self._pointwise(self.project_conv, x, f), fold=f)
            if self.has_skip:
                if self.drop_path is not None:
                    x = self.drop_path(x)
                x = x + inputs
        return x

    def foldable(self) -> bool:
        """Whether `lane_dense.depthwise` can run this block's depthwise conv."""
        return self.dwconv.kernel_size[1] == 3 and self.dwconv.strides[0] in (1, 2)

    @staticmethod
    def _pointwise(conv: Conv2d, x: jax.Array, f: int) -> jax.Array:
        if f == 1:
            return conv(x)
        kernel = conv.kernel[...].astype(conv.dtype)
        return lane_dense.pointwise(x.astype(conv.dtype), kernel, f)

    def _depthwise(self, x: jax.Array, f: int) -> jax.Array:
        if f == 1:
            return self.dwconv(x)
        dtype = self.dwconv.dtype
        kernel = self.dwconv.kernel[...].astype(dtype)
        return lane_dense.depthwise(x.astype(dtype), kernel, f, self.dwconv.strides[0])


@nnx.remat
def _remat_block(block: MBConvBlock, x: jax.Array) -> jax.Array:
    # Recompute the block's activations in the backward pass instead of storing them.
    return block(x)


# The stages whose blocks run lane-dense where the backend pads channels to 128
# lanes: the widest activations with the fewest channels (models/lane_dense.py).
LANE_DENSE_STAGES = ("block1", "block2")


class EfficientNet(nnx.Module):
    """EfficientNet backbone: normalised images [N,H,W,3] -> features [N,h,w,feature_dim].

    h, w = ceil(H / 32), ceil(W / 32). ``feature_dim`` = round_filters(1280)
    (B0 1280, B3 1536, B7 2560). Rng streams: 'params' for init and 'dropout'
    for drop path (both fall back to 'default', so ``nnx.Rngs(seed)`` is enough).
    """

    # Where the first two stages' blocks run lane-dense: XLA:TPU (effb3 on a
    # v3-32, compiled: BENCHMARKS.md, "Train-step traffic on a TPU").
    lane_dense_backends: tuple[str, ...] = ("tpu",)

    def __init__(
        self,
        variant: str,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        drop_path_rate: float = 0.2,
        remat: bool = False,
        blocks_args: Sequence[BlockArgs] = BASE_BLOCKS,
        conv_impl: ConvImpl = "auto",
    ):
        """Args: variant 'b0'..'b7' (or 'efficientnet_b0'...); dtype is the compute
        dtype (params stay float32); blocks_args replaces the B0 stage table
        (tests use shallow tables; the variant's width/depth still apply);
        conv_impl forces one ``conv2d`` form everywhere (benchmarks)."""
        self.variant = canonical_variant(variant)
        width, depth, resolution, _ = _VARIANTS[self.variant]
        self.default_resolution = resolution
        self.dtype = dtype
        self.remat = remat
        self.drop_path_rate = drop_path_rate
        specs = block_specs(width, depth, drop_path_rate, blocks_args)
        stem = round_filters(32, width)
        conv = dict(dtype=dtype, impl=conv_impl, rngs=rngs)
        self.stem_conv = Conv2d(3, stem, 3, strides=2, **conv)
        self.stem_bn = _bn(stem, dtype, rngs)
        self.blocks = nnx.List(
            [MBConvBlock(s, dtype=dtype, conv_impl=conv_impl, rngs=rngs) for s in specs]
        )
        self.block_names = tuple(s.name for s in specs)
        self.feature_dim = round_filters(1280, width)
        self.top_conv = Conv2d(specs[-1].filters_out, self.feature_dim, 1, **conv)
        self.top_bn = _bn(self.feature_dim, dtype, rngs)

    def _lane_fold(self, stem_width: int) -> int:
        """The fold of the lane-dense blocks (0: none) for a stem output this wide:
        on lane_dense_backends, in train mode, without remat, when every block of
        the first two stages can run folded (kernel width 3) and each stride-2
        block gets an even number of columns per lane group."""
        if (
            trace_backend() not in self.lane_dense_backends
            or self.remat
            or self.stem_bn.use_running_average
        ):
            return 0
        f, columns = lane_dense.FOLD, stem_width
        if columns % f:
            return 0
        columns //= f
        for name, block in zip(self.block_names, self.blocks, strict=True):
            if not name.startswith(LANE_DENSE_STAGES):
                break
            if not block.foldable() or (block.dwconv.strides[0] == 2 and columns % 2):
                return 0
            columns //= block.dwconv.strides[0]
        return f

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, H, W, 3] normalised float -> [N, ceil(H/32), ceil(W/32), feature_dim] float32."""
        with jax.named_scope("stem"):
            x = jax.nn.swish(self.stem_bn(self.stem_conv(x)))
        fold = self._lane_fold(x.shape[2])
        if fold:
            x = lane_dense.fold(x, fold)
        for name, block in zip(self.block_names, self.blocks, strict=True):
            if fold and not name.startswith(LANE_DENSE_STAGES):
                x, fold = lane_dense.unfold(x, fold), 0
            with jax.named_scope(name):
                if fold:
                    x = block(x, fold=fold)
                else:
                    x = _remat_block(block, x) if self.remat else block(x)
        if fold:  # a table whose blocks all belong to the first two stages
            x = lane_dense.unfold(x, fold)
        with jax.named_scope("top"):
            x = jax.nn.swish(self.top_bn(self.top_conv(x)))
        return x.astype(jnp.float32)

"""ResNeSt-50/101/200 (Zhang et al. 2020) in Flax NNX, equal to timm's
``resnest50d`` / ``resnest101e`` / ``resnest200e``.

The 'd'/'e' ResNet-D tricks of those names: a deep stem (three 3x3 convs of
widths w, w, 2w; w = 32 for 50d, 64 for 101e/200e) then BN, ReLU and a 3x3/2 max
pool; bottlenecks whose 3x3 conv is a split-attention conv with radix 2; "avd"
(the stride of a downsampling block moves from the 3x3 conv to a 3x3/s average
pool after it, zero padding counted); "avg down" (the projection shortcut is a
2x2/2 average pool, ceil mode, padding not counted, then a 1x1 conv + BN).
PyTorch padding (explicit, symmetric), BatchNorm momentum 0.1 in torch terms
(0.9 here) and eps 1e-5.

Stochastic depth: rate ``drop_path_rate * i / (n_blocks - 1)`` for block i, as
timm's schedule, applied to the residual branch. (timm 1.0.31's ResNeSt block
applies its DropPath to the block input, which only reaches the output through
a projection shortcut; ours is the usual stochastic depth. Eval mode is equal.)

Modes: built in train mode; ``model.eval()`` / ``model.train()`` switch BN
statistics and drop path, as for EfficientNet.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from gld_jax.models.layers import BatchNorm, Conv2d, ConvImpl, DropPath, batch_norm, chunked_normal

BN_MOMENTUM = 0.9  # torch BatchNorm2d momentum 0.1: new = 0.9 * old + 0.1 * batch
BN_EPSILON = 1e-5
EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class ResNeStArgs:
    """Architecture of one ResNeSt variant (timm's ResNet kwargs of that name).

    layers: bottleneck blocks per stage; stem_width: w of the deep stem;
    channels: bottleneck widths ("planes") per stage, outputs are 4x;
    base_width/cardinality: group width = planes * base_width / 64 * cardinality;
    radix: splits of the split-attention conv; default_resolution: pixels.
    """

    layers: tuple[int, ...]
    stem_width: int
    default_resolution: int
    channels: tuple[int, ...] = (64, 128, 256, 512)
    base_width: int = 64
    cardinality: int = 1
    radix: int = 2


RESNEST_VARIANTS: dict[str, ResNeStArgs] = {
    # Resolutions: timm's pretrained_cfg input_size of resnest50d / 101e / 200e.
    "resnest50": ResNeStArgs(layers=(3, 4, 6, 3), stem_width=32, default_resolution=224),
    "resnest101": ResNeStArgs(layers=(3, 4, 23, 3), stem_width=64, default_resolution=256),
    "resnest200": ResNeStArgs(layers=(3, 24, 36, 3), stem_width=64, default_resolution=320),
}

TIMM_NAMES = {"resnest50": "resnest50d", "resnest101": "resnest101e", "resnest200": "resnest200e"}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of ``divisor`` >= min_value, never below 90% of v (timm's rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return int(new)


def _he_fan_out(key, shape, dtype=jnp.float32):
    # timm's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
    kh, kw, _, cout = shape
    return chunked_normal(key, shape, dtype, stddev=(2.0 / (kh * kw * cout)) ** 0.5)


def _bn(features: int, dtype, rngs: nnx.Rngs) -> BatchNorm:
    # torch's constants; autodiff of the statistics, as validated against timm (the
    # closed form leaves rounding noise on gradients that are exactly zero in timm).
    return batch_norm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        rngs=rngs,
        hand_written_grad=False,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, 2, padding=1): [N,H,W,C] -> [N, floor((H-1)/2)+1, ..., C]."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    """torch AvgPool2d(3, stride, padding=1) (zero padding counted: always / 9)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    s = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pads)
    return s / jnp.asarray(9, x.dtype)


def avg_pool_2x2_ceil(x: jax.Array) -> jax.Array:
    """torch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False):
    [N,H,W,C] -> [N, ceil(H/2), ceil(W/2), C]; edge windows average what they cover."""
    h, w = x.shape[1:3]
    pads = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    s = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
    ones = jnp.ones((1, h, w, 1), x.dtype)
    n = lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)
    return s / n


class SplitAttention(nnx.Module):
    """Split-attention 3x3 conv (timm ``SplitAttn``, cardinality 1).

    conv: [N,H,W,C] -> [N,H',W',radix*Cout] (groups = radix) -> BN -> ReLU; the
    radix splits are summed, pooled and passed through fc1 (1x1+bias) -> BN -> ReLU
    -> fc2 (1x1+bias) -> softmax over the radix (sigmoid for radix 1); the output
    is the attention-weighted sum of the splits, [N,H',W',Cout].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        radix: int = 2,
        dtype=jnp.float32,
        conv_impl: ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        self.radix = radix
        self.out_features = out_features
        attn = make_divisible(in_features * radix * 0.25, 8, min_value=32)
        conv = dict(dtype=dtype, impl=conv_impl, rngs=rngs)
        self.conv = Conv2d(
            in_features,
            out_features * radix,
            3,
            strides=strides,
            padding=((1, 1), (1, 1)),
            groups=radix,
            kernel_init=_he_fan_out,
            **conv,
        )
        self.bn0 = _bn(out_features * radix, dtype, rngs)
        self.fc1 = Conv2d(out_features, attn, 1, use_bias=True, kernel_init=_he_fan_out, **conv)
        self.bn1 = _bn(attn, dtype, rngs)
        self.fc2 = Conv2d(
            attn, out_features * radix, 1, use_bias=True, kernel_init=_he_fan_out, **conv
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """[N,H,W,Cin] -> [N,H/s,W/s,Cout]."""
        x = jax.nn.relu(self.bn0(self.conv(x)))
        n, h, w, _ = x.shape
        # torch splits channels radix-major: channel r * Cout + c.
        splits = x.reshape(n, h, w, self.radix, self.out_features)
        gap = jnp.mean(jnp.sum(splits, axis=3) if self.radix > 1 else x, axis=(1, 2), keepdims=True)
        a = self.fc2(jax.nn.relu(self.bn1(self.fc1(gap))))  # [N,1,1,radix*Cout]
        if self.radix > 1:
            a = jax.nn.softmax(a.reshape(n, 1, 1, self.radix, self.out_features), axis=3)
            return jnp.sum(splits * a, axis=3)
        return x * jax.nn.sigmoid(a)


class ResNeStBottleneck(nnx.Module):
    """1x1 -> split-attention 3x3 [-> 3x3/s avg pool (avd)] -> 1x1 (4x) + shortcut, ReLU."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        strides: int = 1,
        downsample: bool = False,
        radix: int = 2,
        base_width: int = 64,
        drop_rate: float = 0.0,
        dtype=jnp.float32,
        conv_impl: ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        width = int(planes * (base_width / 64.0))
        out = planes * EXPANSION
        conv = dict(dtype=dtype, impl=conv_impl, kernel_init=_he_fan_out, rngs=rngs)
        # avd: the block's stride is taken by an average pool after the 3x3 conv.
        self.avd_stride = strides if strides > 1 else 0
        self.conv1 = Conv2d(in_features, width, 1, **conv)
        self.bn1 = _bn(width, dtype, rngs)
        self.conv2 = SplitAttention(
            width, width, strides=1, radix=radix, dtype=dtype, conv_impl=conv_impl, rngs=rngs
        )
        self.conv3 = Conv2d(width, out, 1, **conv)
        self.bn3 = _bn(out, dtype, rngs)
        self.down_stride = strides
        if downsample:
            self.downsample_conv = Conv2d(in_features, out, 1, **conv)
            self.downsample_bn = _bn(out, dtype, rngs)
        else:
            self.downsample_conv = None
            self.downsample_bn = None
        self.drop_path = DropPath(drop_rate, rngs=rngs) if drop_rate > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """[N,H,W,Cin] -> [N,ceil(H/s),ceil(W/s),4*planes]."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.avd_stride:
            out = avg_pool_3x3(out, self.avd_stride)
        out = self.bn3(self.conv3(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        shortcut = x
        if self.downsample_conv is not None:
            if self.down_stride > 1:
                shortcut = avg_pool_2x2_ceil(shortcut)
            shortcut = self.downsample_bn(self.downsample_conv(shortcut))
        return jax.nn.relu(out + shortcut)


@nnx.remat
def _remat_block(block: ResNeStBottleneck, x: jax.Array) -> jax.Array:
    # Recompute the block's activations in the backward pass instead of storing them.
    return block(x)


def canonical_resnest(name: str) -> str:
    """'resnest101', 'resnest101e', 'ResNeSt-101' -> 'resnest101'; ValueError if unknown."""
    n = name.lower().replace("-", "").replace("_", "")
    for ours, timm_name in TIMM_NAMES.items():
        if n in (ours, timm_name):
            return ours
    raise ValueError(f"unknown ResNeSt variant {name!r}; known: {sorted(RESNEST_VARIANTS)}")


class ResNeSt(nnx.Module):
    """ResNeSt backbone: normalised images [N,H,W,3] -> features [N,h,w,2048] float32.

    h = ceil(H / 32) for the sizes the stride-2 layers see (stem conv and max
    pool: floor((H-1)/2)+1 each; later stages ceil(H/2)). ``feature_dim`` =
    4 * channels[-1] (2048). Rng streams as EfficientNet: 'params', 'dropout'.
    """

    def __init__(
        self,
        variant: str,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        drop_path_rate: float = 0.0,
        remat: bool = False,
        conv_impl: ConvImpl = "auto",
        args: ResNeStArgs | None = None,
    ):
        """Args: variant 'resnest50'/'resnest101'/'resnest200' (timm names too);
        dtype is the compute dtype (params stay float32); args replaces the
        variant's architecture (tests build reduced-depth/width ones)."""
        self.variant = canonical_resnest(variant)
        a = args or RESNEST_VARIANTS[self.variant]
        if a.cardinality != 1:
            raise NotImplementedError("only cardinality 1 (every recipe variant) is built")
        if any(n <= 0 for n in a.layers):
            raise ValueError(f"every stage needs >= 1 block, got {a.layers}")
        if len(a.layers) != len(a.channels):
            raise ValueError(f"layers {a.layers} and channels {a.channels} differ in length")
        self.args = a
        self.default_resolution = a.default_resolution
        self.dtype = dtype
        self.remat = remat
        self.drop_path_rate = drop_path_rate
        conv = dict(dtype=dtype, impl=conv_impl, kernel_init=_he_fan_out, rngs=rngs)
        w, pad1 = a.stem_width, ((1, 1), (1, 1))
        self.stem_conv1 = Conv2d(3, w, 3, strides=2, padding=pad1, **conv)
        self.stem_bn1 = _bn(w, dtype, rngs)
        self.stem_conv2 = Conv2d(w, w, 3, padding=pad1, **conv)
        self.stem_bn2 = _bn(w, dtype, rngs)
        self.stem_conv3 = Conv2d(w, 2 * w, 3, padding=pad1, **conv)
        self.stem_bn3 = _bn(2 * w, dtype, rngs)

        n_total, b = sum(a.layers), 0
        in_features = 2 * w
        stages = []
        for i, (planes, repeats) in enumerate(zip(a.channels, a.layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(repeats):
                rate = drop_path_rate * b / max(n_total - 1, 1)
                first = j == 0
                blocks.append(
                    ResNeStBottleneck(
                        in_features,
                        planes,
                        strides=stride if first else 1,
                        downsample=first and (stride != 1 or in_features != planes * EXPANSION),
                        radix=a.radix,
                        base_width=a.base_width,
                        drop_rate=rate,
                        dtype=dtype,
                        conv_impl=conv_impl,
                        rngs=rngs,
                    )
                )
                in_features = planes * EXPANSION
                b += 1
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.feature_dim = in_features

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, H, W, 3] normalised float -> [N, h, w, feature_dim] float32."""
        # Named scopes put the layer in each op's name in XLA's compiled program.
        with jax.named_scope("stem"):
            x = jax.nn.relu(self.stem_bn1(self.stem_conv1(x)))
            x = jax.nn.relu(self.stem_bn2(self.stem_conv2(x)))
            x = jax.nn.relu(self.stem_bn3(self.stem_conv3(x)))
            x = max_pool_3x3_s2(x)
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                with jax.named_scope(f"layer{i + 1}_{j}"):
                    x = _remat_block(block, x) if self.remat else block(x)
        return x.astype(jnp.float32)

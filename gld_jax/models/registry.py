"""Backbone registry: one table from names to constructors and default resolutions.

Add a backbone by adding a ``BackboneInfo`` row to ``BACKBONES``;
its constructor takes ``(rngs=, dtype=, drop_path_rate=, remat=, conv_impl=)`` and returns a
module with a ``feature_dim`` attribute mapping [N,H,W,3] -> [N,h,w,feature_dim].
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from gld_jax.models.efficientnet import SHALLOW_BLOCKS, EfficientNet, efficientnet_variants
from gld_jax.models.layers import ConvImpl
from gld_jax.models.resnest import RESNEST_VARIANTS, ResNeSt


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """name: registry key; constructor: builds the module; default_resolution: pixels."""

    name: str
    constructor: Callable[..., nnx.Module]
    default_resolution: int


def _efficientnet_rows() -> dict[str, BackboneInfo]:
    rows = {}
    for variant, (_, _, resolution, _) in efficientnet_variants().items():
        name = f"efficientnet_{variant}"
        rows[name] = BackboneInfo(name, functools.partial(EfficientNet, variant), resolution)
    # Not a recipe backbone: a 4-block B0 for smoke runs and tests (SHALLOW_BLOCKS).
    shallow = functools.partial(EfficientNet, "b0", blocks_args=SHALLOW_BLOCKS)
    rows["efficientnet_b0_shallow"] = BackboneInfo("efficientnet_b0_shallow", shallow, 224)
    return rows


def _resnest_rows() -> dict[str, BackboneInfo]:
    return {
        name: BackboneInfo(name, functools.partial(ResNeSt, name), a.default_resolution)
        for name, a in RESNEST_VARIANTS.items()
    }


BACKBONES: dict[str, BackboneInfo] = {**_efficientnet_rows(), **_resnest_rows()}


def backbone_names() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(BACKBONES)


def create_backbone(
    name: str,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    drop_path_rate: float = 0.2,
    remat: bool = False,
    conv_impl: ConvImpl = "auto",
) -> tuple[nnx.Module, int]:
    """Build a registered backbone; returns (module, feature_dim).

    ``dtype`` is the compute dtype (params stay float32); ``conv_impl`` forces one
    ``layers.conv2d`` form ("auto" picks per backend; "lax" compiles faster on CPU
    but runs ~4x slower there).

    Raises:
      ValueError naming the known backbones if ``name`` is not registered.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {backbone_names()}")
    module = BACKBONES[name].constructor(
        rngs=rngs, dtype=dtype, drop_path_rate=drop_path_rate, remat=remat, conv_impl=conv_impl
    )
    return module, module.feature_dim

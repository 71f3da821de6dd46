"""Copy timm/PyTorch state dicts into our EfficientNet and ResNeSt, all-or-nothing.

Key tables (timm name -> our variable):
- ``tf_efficientnet_b*``: conv_stem, bn1, blocks.{stage}.{i}.{conv_pw, bn1, conv_dw,
  bn2, se.conv_reduce, se.conv_expand, conv_pwl, bn3} (a no-expand first-stage
  block: conv_dw, bn1, se.*, conv_pw, bn2), conv_head, bn2.
- ``resnest50d/101e/200e``: conv1.{0,3,6} + conv1.{1,4}, bn1 (deep stem),
  layer{s}.{i}.{conv1, bn1, conv2.{conv, bn0, fc1, bn1, fc2}, conv3, bn3,
  downsample.{1,2}}.

Conv weights go OIHW -> HWIO; BN weight/bias/running_mean/running_var ->
scale/bias/mean/var. ``num_batches_tracked`` and the classifier (``fc.*``,
``classifier.*``) are skipped. Any other unmatched key, missing key or shape
mismatch is an error listing all of them, raised before anything is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from gld_jax.models.assign import Targets, assign_weights
from gld_jax.models.efficientnet import EfficientNet
from gld_jax.models.layers import Conv2d
from gld_jax.models.resnest import ResNeSt

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
# Keys every timm state dict may carry that hold no backbone weights.
_SKIPPED_SUFFIXES = (".num_batches_tracked",)
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def _module_targets(prefix: str, module: Any) -> Targets:
    if isinstance(module, nnx.BatchNorm):
        return {f"{prefix}.{k}": (getattr(module, ours), None) for k, ours in _BN.items()}
    if isinstance(module, Conv2d):
        out: Targets = {f"{prefix}.weight": (module.kernel, _oihw_to_hwio)}
        if module.bias is not None:
            out[f"{prefix}.bias"] = (module.bias, None)
        return out
    raise TypeError(f"no timm mapping for {prefix}: {type(module).__name__}")


def _efficientnet_targets(model: EfficientNet) -> Targets:
    t: Targets = {}
    t.update(_module_targets("conv_stem", model.stem_conv))
    t.update(_module_targets("bn1", model.stem_bn))
    t.update(_module_targets("conv_head", model.top_conv))
    t.update(_module_targets("bn2", model.top_bn))
    for name, block in zip(model.block_names, model.blocks, strict=True):
        stage, index = int(name[5:-1]) - 1, ord(name[-1]) - ord("a")  # 'block2b' -> 1, 1
        p = f"blocks.{stage}.{index}"
        if block.expand_conv is None:  # timm DepthwiseSeparableConv
            parts = {
                "conv_dw": block.dwconv,
                "bn1": block.bn,
                "conv_pw": block.project_conv,
                "bn2": block.project_bn,
            }
        else:  # timm InvertedResidual
            parts = {
                "conv_pw": block.expand_conv,
                "bn1": block.expand_bn,
                "conv_dw": block.dwconv,
                "bn2": block.bn,
                "conv_pwl": block.project_conv,
                "bn3": block.project_bn,
            }
        if block.se_reduce is not None:
            parts["se.conv_reduce"] = block.se_reduce
            parts["se.conv_expand"] = block.se_expand
        for sub, module in parts.items():
            t.update(_module_targets(f"{p}.{sub}", module))
    return t


def _resnest_targets(model: ResNeSt) -> Targets:
    t: Targets = {}
    stem = {
        "conv1.0": model.stem_conv1,
        "conv1.1": model.stem_bn1,
        "conv1.3": model.stem_conv2,
        "conv1.4": model.stem_bn2,
        "conv1.6": model.stem_conv3,
        "bn1": model.stem_bn3,
    }
    for key, module in stem.items():
        t.update(_module_targets(key, module))
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage):
            p = f"layer{s + 1}.{i}"
            parts = {
                "conv1": block.conv1,
                "bn1": block.bn1,
                "conv2.conv": block.conv2.conv,
                "conv2.bn0": block.conv2.bn0,
                "conv2.fc1": block.conv2.fc1,
                "conv2.bn1": block.conv2.bn1,
                "conv2.fc2": block.conv2.fc2,
                "conv3": block.conv3,
                "bn3": block.bn3,
            }
            if block.downsample_conv is not None:
                parts["downsample.1"] = block.downsample_conv
                parts["downsample.2"] = block.downsample_bn
            for sub, module in parts.items():
                t.update(_module_targets(f"{p}.{sub}", module))
    return t


def timm_weight_targets(model: nnx.Module) -> Targets:
    """Every weight of ``model`` under its timm state-dict key, with its converter."""
    if isinstance(model, EfficientNet):
        return _efficientnet_targets(model)
    if isinstance(model, ResNeSt):
        return _resnest_targets(model)
    raise TypeError(f"no timm key table for {type(model).__name__}")


def backbone_state_dict(state_dict: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """(the backbone's keys, the skipped keys: BN counters and the classifier)."""
    kept, skipped = {}, []
    for k, v in state_dict.items():
        if k.endswith(_SKIPPED_SUFFIXES) or k.startswith(_CLASSIFIER_PREFIXES):
            skipped.append(k)
        else:
            kept[k] = v
    return kept, sorted(skipped)


def load_timm_state_dict(model: nnx.Module, state_dict: dict[str, np.ndarray]) -> list[str]:
    """Overwrite ``model``'s params and BN statistics from a timm state dict, in place.

    Args:
      model: our EfficientNet (from ``tf_efficientnet_b*``) or ResNeSt (from
        ``resnest50d/101e/200e``) of the same architecture.
      state_dict: {timm key: array in torch layout}.
    Returns:
      The skipped keys (``num_batches_tracked``, classifier).
    Raises:
      ValueError listing missing, unexpected and mis-shaped keys; ``model`` is untouched.
    """
    kept, skipped = backbone_state_dict(state_dict)
    what = f"{type(model).__name__} {getattr(model, 'variant', '')}".strip()
    assign_weights(timm_weight_targets(model), kept, what)
    return skipped

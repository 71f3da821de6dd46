"""The summary CLI: counts from the oracles' measurements, FLOPs from hand arithmetic."""

import json

import pytest

from gld_jax.models.backbone_stats import backbone_summary, main


def test_efficientnet_b0_summary(capsys):
    assert main(["--model", "efficientnet_b0"]) == 0
    s = json.loads(capsys.readouterr().out.strip())
    # Keras 3 EfficientNetB0(include_top=False) trainable weights (tests/test_efficientnet.py).
    assert s["params"] == 4_007_548 and s["feature_dim"] == 1280
    assert s["default_resolution"] == s["image_size"] == 224
    assert s["feature_shape"] == [1, 7, 7, 1280]
    # torch.utils.flop_counter on timm tf_efficientnet_b0 at 224 px: 0.3845 GMACs (convs
    # and matmuls; measured with torch 2.13 / timm 1.0.31, 2026-11-27; the paper says
    # 0.39 B). XLA also counts BN, activations and SE: a few percent above.
    assert 0.3845 <= s["gmacs"] <= 0.3845 * 1.08
    assert s["gflops"] == pytest.approx(2 * s["gmacs"], abs=2e-3)


def test_resnest101_summary_at_recipe_size():
    s = backbone_summary("resnest101", 256)
    assert s["params"] == 46_226_016  # timm resnest101e, num_classes=0
    assert s["default_resolution"] == 256 and s["feature_shape"] == [1, 8, 8, 2048]
    # torch.utils.flop_counter on timm resnest101e at 256 px: 13.319 GMACs (measured as
    # above). It counts every kernel tap; XLA skips the taps that land on zero padding
    # (a 3x3 pad-1 conv on 56x56: 225.7M vs 231.2M MACs, -2.4%, more on 8x8 maps), so
    # ours may sit a few percent below.
    assert 13.319 * 0.95 <= s["gmacs"] <= 13.319 * 1.02


def test_flops_scale_with_pixels():
    """Conv cost is proportional to H*W: 2x the side, ~4x the multiply-adds."""
    a, b = backbone_summary("efficientnet_b0", 128), backbone_summary("efficientnet_b0", 256)
    assert b["gmacs"] / a["gmacs"] == pytest.approx(4.0, rel=0.02)


def test_user_errors_are_one_line(capsys):
    assert main(["--model", "vit_b16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("summary: error: unknown model 'vit_b16'") and "Traceback" not in err
    assert main(["--model", "resnest50", "--image_size", "16"]) == 2

"""Prints the max differences behind the backbone equivalence tests.

    .venv/bin/python scripts/bench/equivalence.py

Runs the same cases as tests/test_efficientnet.py (Keras 3, random BN stats),
tests/test_import_weights.py and tests/test_resnest.py (committed timm fixtures),
in eval mode and float32, and prints for each the max |ours - reference| and the
feature scale max |reference| (the tests require the ratio <= 1e-4).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import test_efficientnet as te  # noqa: E402
import test_import_weights as ti  # noqa: E402
import test_resnest as tr  # noqa: E402
from flax import nnx  # noqa: E402

from gld_jax.models.efficientnet import EfficientNet  # noqa: E402
from gld_jax.models.keras_import import load_keras_efficientnet  # noqa: E402
from gld_jax.models.timm_import import load_timm_state_dict  # noqa: E402


def report(name: str, out: np.ndarray, ref: np.ndarray) -> None:
    diff, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"{name}: max |diff| {diff:.2e}, feature scale {scale:.3g}, ratio {diff / scale:.2e}")


def keras_cases() -> None:
    keras = te._keras()
    b0 = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(72, 57, 3))
    te._randomize_keras_bn(b0, seed=0)
    x = np.random.default_rng(1).normal(size=(2, 72, 57, 3)).astype(np.float32)
    ref = np.asarray(te._after_preprocessing(keras, b0)(x, training=False))
    ours = EfficientNet("b0", rngs=nnx.Rngs(0))
    load_keras_efficientnet(ours, b0)
    ours.eval()
    report("EfficientNet-B0 vs Keras 3", np.asarray(te._forward(ours, jnp.asarray(x))), ref)

    b3 = te._keras_generic(keras, 1.2, 1.4, te.SHALLOW, (40, 33, 3))
    te._randomize_keras_bn(b3, seed=3)
    x = np.random.default_rng(4).normal(size=(2, 40, 33, 3)).astype(np.float32)
    ref = np.asarray(te._after_preprocessing(keras, b3)(x, training=False))
    ours = EfficientNet("b3", blocks_args=te.SHALLOW, rngs=nnx.Rngs(0))
    load_keras_efficientnet(ours, b3)
    ours.eval()
    out = np.asarray(te._forward(ours, jnp.asarray(x)))
    report("EfficientNet-B3 (3 stages) vs Keras 3", out, ref)


def timm_cases() -> None:
    f = np.load(os.path.join(ti.FIXTURES, "timm_tf_efficientnet_b0_reduced.npz"))
    fixture = {k: f[k] for k in f.files}
    ours = EfficientNet("b0", blocks_args=ti.SHALLOW, rngs=nnx.Rngs(0))
    sd = {k.removeprefix("sd/"): v for k, v in fixture.items() if k.startswith("sd/")}
    load_timm_state_dict(ours, sd)
    ours.eval()
    out = np.asarray(ti._forward(ours, jnp.asarray(fixture["input"])))
    report("tf_efficientnet_b0 (3 stages) vs timm", out, fixture["eval_out"])

    f = np.load(os.path.join(tr.FIXTURES, "timm_resnest_reduced.npz"))
    fixture = {k: f[k] for k in f.files}
    ours = tr._reduced_from_timm(fixture)
    ours.eval()
    out = np.asarray(tr._forward(ours, jnp.asarray(fixture["input"])))
    report("ResNeSt-50 (reduced depth) vs timm", out, fixture["eval_out"])


if __name__ == "__main__":
    keras_cases()
    timm_cases()

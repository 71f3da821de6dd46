"""Weight import: torch-free readers, timm and Keras key tables, the CLI and init_from."""

import dataclasses
import json
import os
import pickle
import re
import struct
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gld_jax.config import base_config
from gld_jax.config.validate import ConfigError, validate_config
from gld_jax.models.efficientnet import BASE_BLOCKS, EfficientNet
from gld_jax.models.import_weights import (
    load_backbone_checkpoint,
    load_source_into,
    main,
    save_backbone_checkpoint,
)
from gld_jax.models.landmark import build_model
from gld_jax.models.timm_import import load_timm_state_dict, timm_weight_targets
from gld_jax.models.weight_files import WeightFileError, read_torch_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SHALLOW = tuple(
    dataclasses.replace(a, repeats=r) for a, r in zip(BASE_BLOCKS[:3], (1, 2, 1), strict=True)
)


def _forward(model, x):
    return nnx.jit(lambda m, x: m(x))(model, x)


def _weights(model):
    return [
        np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    ]


@pytest.mark.parametrize("name", ["torch_state_dict.pth", "torch_state_dict.safetensors"])
def test_readers_match_torch(name):
    """Fixtures written by torch.save / safetensors; expected values from torch itself."""
    expected = np.load(os.path.join(FIXTURES, "torch_state_dict_expected.npz"))
    sd = read_torch_state_dict(os.path.join(FIXTURES, name))  # .pth: unwraps 'state_dict'
    assert sorted(sd) == sorted(k for k in expected.files if k != "versions")
    for k, v in sd.items():
        ref = expected[k]
        assert v.shape == ref.shape, k
        np.testing.assert_array_equal(np.asarray(v, ref.dtype), ref, err_msg=k)
    assert sd["half"].dtype == np.float16 and sd["ids"].dtype == np.int64
    assert sd["counter"].shape == () and int(sd["counter"]) == 7


def test_pth_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(os.system))  # GLOBAL posix.system
    with pytest.raises(WeightFileError, match="refusing to unpickle"):
        read_torch_state_dict(str(path))


@pytest.fixture(scope="module")
def timm_b0():
    f = np.load(os.path.join(FIXTURES, "timm_tf_efficientnet_b0_reduced.npz"))
    return {k: f[k] for k in f.files}


def test_tf_efficientnet_b0_forward_matches_timm(timm_b0):
    model = EfficientNet("b0", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    sd = {k.removeprefix("sd/"): v for k, v in timm_b0.items() if k.startswith("sd/")}
    load_timm_state_dict(model, sd)
    model.eval()
    out = np.asarray(_forward(model, jnp.asarray(timm_b0["input"])))
    ref = timm_b0["eval_out"]
    assert out.shape == ref.shape == (2, 6, 5, 1280)  # 41x34 at stride 8: ceil -> 6x5
    assert np.abs(ref).max() > 1.0
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_timm_import_lists_every_problem_and_writes_nothing(timm_b0):
    sd = {k.removeprefix("sd/"): v for k, v in timm_b0.items() if k.startswith("sd/")}
    del sd["bn1.running_var"]
    sd["blocks.9.0.conv_pw.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["conv_head.weight"] = sd["conv_head.weight"][:-1]
    sd["classifier.weight"] = np.zeros((10, 1280), np.float32)  # skipped, not an error
    model = EfficientNet("b0", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    before = _weights(model)
    with pytest.raises(ValueError) as err:
        load_timm_state_dict(model, sd)
    msg = str(err.value)
    assert "missing in source (1): ['bn1.running_var']" in msg
    assert "unexpected in source (1): ['blocks.9.0.conv_pw.weight']" in msg
    assert "conv_head.weight: source (1279, 40, 1, 1)" in msg
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A shallow Keras 3 EfficientNet saved as legacy .h5 and as .keras, plus its output."""
    keras = pytest.importorskip("keras")
    from keras.src.applications.efficientnet import EfficientNet as KerasEfficientNet

    km = KerasEfficientNet(
        1.0,
        1.0,
        224,
        blocks_args=[dataclasses.asdict(b) for b in SHALLOW],
        include_top=False,
        weights=None,
        input_shape=(36, 36, 3),
    )
    rng = np.random.default_rng(0)
    for layer in km.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                    rng.normal(0, 0.2, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )
    d = tmp_path_factory.mktemp("keras")
    km.save(str(d / "b0.keras"))
    km.save_weights(str(d / "b0.weights.h5"))  # Keras 3 layout: refused with a clear error
    km.save(str(d / "b0.h5"))  # legacy HDF5
    x = rng.normal(size=(2, 36, 36, 3)).astype(np.float32)
    tail = keras.Model(km.get_layer("stem_conv_pad").input, km.output)
    return d, x, np.asarray(tail(x, training=False))


@pytest.mark.parametrize("name", ["b0.keras", "b0.h5"])
def test_keras_files_load_and_match_keras(keras_files, name):
    d, x, ref = keras_files
    model = EfficientNet("b0", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    report = load_source_into(model, str(d / name))
    assert report["format"] == "keras"
    # Keras numbers auto-named layers per process ("normalization_1" once another
    # test built a Normalization layer), so match the prefix, not the exact name
    assert any(re.match(r"normalization(_\d+)?/", k) for k in report["skipped"])
    model.eval()
    out = np.asarray(_forward(model, jnp.asarray(x)))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_keras3_weights_h5_is_refused_clearly(keras_files):
    d, _, _ = keras_files
    model = EfficientNet("b0", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    with pytest.raises(WeightFileError, match="not a legacy Keras HDF5"):
        load_source_into(model, str(d / "b0.weights.h5"))


def _write_safetensors(path, tensors):
    """The format by its spec: u64 header length, JSON header, raw little-endian data."""
    header, offset, blobs = {}, 0, []
    for k, v in tensors.items():
        v = np.ascontiguousarray(v, np.float32)
        header[k] = {
            "dtype": "F32",
            "shape": list(v.shape),
            "data_offsets": [offset, offset + v.nbytes],
        }
        offset += v.nbytes
        blobs.append(v.tobytes())
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _as_timm_state_dict(model):
    """Our weights under timm keys in torch layout (HWIO -> OIHW), plus timm's extras."""
    sd = {}
    for key, (var, convert) in timm_weight_targets(model).items():
        value = np.asarray(var[...])
        sd[key] = np.transpose(value, (3, 2, 0, 1)) if convert is not None else value
    sd["bn1.num_batches_tracked"] = np.zeros((), np.float32)
    sd["classifier.weight"] = np.zeros((1000, 1280), np.float32)
    return sd


def test_cli_writes_checkpoint_that_build_model_starts_from(tmp_path, capsys):
    src_model = EfficientNet("b0", rngs=nnx.Rngs(7))  # different seed from build_model's
    src = tmp_path / "tf_efficientnet_b0.safetensors"
    _write_safetensors(src, _as_timm_state_dict(src_model))
    out = tmp_path / "weights"
    assert main(["--model", "efficientnet_b0", "--source", str(src), "--output", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["params"] == 4_007_548 and line["feature_dim"] == 1280
    assert line["skipped"] == 2  # the BN counter and the classifier

    cfg = base_config().model
    cfg.init_from = str(out)
    model = build_model(cfg, num_classes=5, seed=0)
    ref = nnx.state(src_model, nnx.Any(nnx.Param, nnx.BatchStat))
    got = nnx.state(model.backbone, nnx.Any(nnx.Param, nnx.BatchStat))
    for (p, a), (q, b) in zip(nnx.to_flat_state(ref), nnx.to_flat_state(got), strict=True):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))

    config = base_config()
    config.synthetic.enabled = True
    config.model.init_from = str(out)
    validate_config(config, num_devices=8)
    config.model.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="model.init_from"):
        validate_config(config, num_devices=8)


def test_checkpoint_for_other_shapes_is_refused(tmp_path):
    small = EfficientNet("b0", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    save_backbone_checkpoint(small, str(tmp_path / "ck"), {"model": "efficientnet_b0"})
    target = EfficientNet("b0", blocks_args=SHALLOW[:2], rngs=nnx.Rngs(1))
    # Widen one kernel of the target so a shape mismatch is reported too.
    target.top_conv.kernel = nnx.Param(jnp.zeros((1, 1, 24, 1280)))
    before = _weights(target)
    with pytest.raises(ValueError) as err:
        load_backbone_checkpoint(target, str(tmp_path / "ck"), model_name="efficientnet_b0")
    msg = str(err.value)
    assert "params: unexpected (13)" in msg and "blocks.3.dwconv.kernel" in msg
    assert "top_conv.kernel: checkpoint (1, 1, 40, 1280), model (1, 1, 24, 1280)" in msg
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(target), strict=True))
    with pytest.raises(ValueError, match="holds 'efficientnet_b0' weights, not 'resnest50'"):
        load_backbone_checkpoint(target, str(tmp_path / "ck"), model_name="resnest50")


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert (
        main(
            [
                "--model",
                "efficientnet_b0",
                "--source",
                str(tmp_path / "x.pth"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("import_weights: error:") and "no such file" in err
    assert "Traceback" not in err
    assert main(["--model", "resnet9", "--source", "x", "--output", "o"]) == 2
    assert "unknown model 'resnet9'" in capsys.readouterr().err


def test_init_from_key_defaults_to_empty():
    assert base_config().model.init_from == ""
    assert isinstance(base_config().model, ml_collections.ConfigDict)

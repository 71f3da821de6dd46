"""Argument handling and configs of scripts/experiments/subcenter_noise.py (no training)."""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "scripts",
    "experiments",
    "subcenter_noise.py",
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("subcenter_noise_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults(bench):
    args = bench.parse_args([])
    assert args.workdir == "runs/subcenter_noise"
    assert args.seeds == [0] and args.data_seed == 0
    assert (args.label_noise, args.nonlandmark_noise) == (0.15, 0.15)
    assert args.threshold_degrees == 75.0 and not args.quick and not args.no_retrain
    assert bench.noise_pct(args, True) == 30 and bench.noise_pct(args, False) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--label_noise", "0.7", "--nonlandmark_noise", "0.4"],  # sum > 1
        ["--label_noise", "0", "--nonlandmark_noise", "0"],  # nothing noisy
        ["--label_noise", "-0.1"],
        ["--seeds", "0", "0"],
        ["--seeds", "-1"],
        ["--threshold_degrees", "0"],
        ["--num_classes", "1"],
        ["--bogus"],
    ],
)
def test_bad_arguments_exit_2(bench, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_variant_names(bench):
    assert bench.variant_name(1, 0, 0, False) == "k1_noise0_seed0"
    assert bench.variant_name(3, 30, 2, True) == "k3_noise30_seed2_quick"
    assert bench.variant_name(3, 30, 0, False, 75.0) == "k3_noise30_drop75_seed0"
    assert bench.variant_name(3, 30, 0, False, 72.5) == "k3_noise30_drop72.5_seed0"


def test_variants_share_data_and_train_on_the_full_label_set(bench, tmp_path):
    args = bench.parse_args(["--workdir", str(tmp_path), "--seeds", "0", "1"])
    k1 = bench.base_variant(args, k=1, noisy=True, seed=1)
    k3 = bench.base_variant(args, k=3, noisy=True, seed=0)
    clean = bench.base_variant(args, k=3, noisy=False, seed=0)
    assert k1["data_dir"] == k3["data_dir"] != clean["data_dir"]
    assert k1["tfrecord_dir"] == k3["tfrecord_dir"]
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(k1))
    c = bench.get_config(str(path))
    assert c.model.sub_centers == 1 and c.seed == 1
    assert (c.synthetic.label_noise, c.synthetic.nonlandmark_noise) == (0.15, 0.15)
    assert c.synthetic.num_test == 1000
    assert [s.label_set for s in c.stages] == ["full", "full"]
    assert [bool(s.new_head) for s in c.stages] == [True, False]
    assert [s.epochs for s in c.stages] == [6.0, 3.0]
    quick = bench.base_variant(bench.parse_args(["--quick"]), k=3, noisy=False, seed=0)
    assert sum(s["epochs"] for s in quick["stages"]) < 2
    assert bench.build_config(clean).synthetic.label_noise == 0.0


def test_get_config_needs_a_variant(bench):
    with pytest.raises(ValueError, match="variant"):
        bench.get_config()

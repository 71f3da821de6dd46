"""`python -m gld_jax.main --config configs/X.py --dry_run`: the recipe's six
configs plan the recipe's stages and fit a v3-32; a plan that does not fit, or
a bad target, stops with one line. Abstract shapes only: nothing is compiled."""

import json
import math
import os
import subprocess
import sys

import pytest

from gld_jax.data.host_feed import RECORDED_RATES
from gld_jax.dry_run import GLDV2_COUNTS, format_plan, misfit_message, plan_run, run_dry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The recipe (arXiv 2010.05350 and the team's published training commands): image
# sizes / epochs per model.
RECIPE = {
    "effb7": ("efficientnet_b7", (256, 512, 672), (10, 13, 1)),
    "effb6": ("efficientnet_b6", (256, 512, 768), (10, 17, 1)),
    "effb5": ("efficientnet_b5", (256, 576, 768), (10, 16, 1)),
    "effb4": ("efficientnet_b4", (256, 704, 768), (10, 16, 1)),
    "effb3": ("efficientnet_b3", (256, 544, 1024), (10, 18, 1)),
    "resnest101": ("resnest101", (256, 576, 768), (10, 16, 1)),
}


def _load(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_recipe_config_plans_the_recipe_and_fits_a_v3_32(name, tmp_path):
    backbone, sizes, epochs = RECIPE[name]
    config = _load(name)
    report = plan_run(config, str(tmp_path), config_name=name)
    assert report["backbone"] == backbone
    assert report["fits"], misfit_message(report)
    assert (report["accelerator"], report["num_devices"], report["hosts"]) == ("tpu_v3", 32, 4)
    stages = report["stages"]
    assert tuple(s["image_size"] for s in stages) == sizes
    assert tuple(s["epochs"] for s in stages) == epochs
    assert [s["classes"] for s in stages] == [203_094, 81_313, 81_313]
    held_in = (config.folds - 1) / config.folds
    for s in stages:
        images = round(GLDV2_COUNTS[s["label_set"]][1] * held_in)
        assert s["images"] == images
        assert s["steps"] == math.ceil(s["epochs"] * images / s["global_batch"])
        assert s["global_batch"] % 32 == 0
        assert s["learning_rate"]["peak"] > 0
        mem = s["memory_gib_per_device"]
        parts = ("params", "grads", "optimizer", "ema", "activations")
        assert mem["total"] == pytest.approx(sum(mem[k] for k in parts))
        assert mem["activations"] > 0 and s["tflops_per_step"] > 0 and s["hours"] > 0
        # The recipe's head validation: every 15th image of the held-out fold
        # (GLDv2's label set / 5), a forward pass, a sliver of the stage's time.
        held_out = round(images / (config.folds - 1))
        assert s["validation"]["method"] == "head"
        assert s["validation"]["images"] == math.ceil(held_out / config.val_every)
        assert 0 < s["validation"]["hours"] < 0.01 * s["hours"]
        # Host feed: the devices' images/s per host from the step-time estimate,
        # over a core's recorded rate at this size with the flip/warp/cutout on
        # the host (augment_on=auto on a TPU target), against 0.75 of 96 vCPUs.
        f = s["host_feed"]
        chips = s["global_batch"] / (s["hours"] * 3600 / s["steps"]) / 4
        assert f["chips_images_per_s"] == pytest.approx(chips)
        assert f["cores_needed"] == pytest.approx(chips / f["core_images_per_s"])
        assert (f["host_vcpus"], f["cores_available"]) == (96, 72)
        assert f["core_images_per_s"] == RECORDED_RATES[(1024, s["image_size"], True)]
        assert f["keeps_up"] == (f["cores_needed"] <= 72)
    assert report["host_feed"]["augment_on"] == "host"  # auto on a TPU target
    # The 203,094 x 3 x 512 head is split over the 8-way model axis: a device
    # holds 1/8 of it. Head params in stage 0 = padded classes x K x D.
    assert stages[0]["params"]["head"] == 203_264 * 3 * 512
    head_gib = 4 * stages[0]["params"]["head"] / 8 / 2**30
    emb_gib = 4 * stages[0]["params"]["embedder"] / 2**30
    assert stages[0]["memory_gib_per_device"]["params"] == pytest.approx(head_gib + emb_gib)
    # Different folds per model, as the recipe trained them.
    assert config.fold in range(5)
    text = format_plan(report)
    assert "host feed per host (4 hosts; augmentations on the host" in text


def test_plan_that_does_not_fit_fails_with_one_line(tmp_path, capsys):
    config = _load("effb7")
    config.optimizer.accumulate_steps = 1
    config.stages[1].batch_size = 512  # 16 images of 512 px per v3 core
    assert run_dry(config, str(tmp_path), config_name="effb7", as_json=False) == 2
    out, err = capsys.readouterr()
    assert "DOES NOT FIT" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dry run: stage 1 (512 px")
    assert "GiB per device" in lines[0]


def test_bad_target_and_synthetic_without_manifest_are_one_line_errors(tmp_path, capsys):
    config = _load("effb3")
    config.target.accelerator = "tpu_v9"
    assert run_dry(config, str(tmp_path), config_name="x", as_json=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "target.accelerator: unknown 'tpu_v9'" in err[0]

    demo = _load("demo")
    assert run_dry(demo, str(tmp_path), config_name="demo", as_json=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest" in err[0]


def test_main_dry_run_json_is_one_object_and_builds_nothing(tmp_path):
    workdir = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gld_jax.main",
            "--config",
            "configs/effb3.py",
            "--dry_run",
            "--json",
            "--workdir",
            str(workdir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["backbone"] == "efficientnet_b3" and report["fits"] is True
    assert [s["image_size"] for s in report["stages"]] == [256, 544, 1024]
    assert not workdir.exists()  # a dry run writes nothing


def test_activation_estimate_matches_xla_compiled_memory_analysis():
    """The dry run's activations (traced residuals x ACTIVATION_OVERHEAD) against
    what XLA actually allocates for the same backward pass: the temporaries of
    the compiled program (EfficientNet-B0 + neck, 128 px, batch 8, XLA:CPU)."""
    from gld_jax.dry_run import ACTIVATION_OVERHEAD, compiled_activation_bytes, embedder_costs

    n, size = 8, 128
    _, fwd = embedder_costs("efficientnet_b0", 512, "float32", False)
    estimate = fwd.at(size, n)[1] * ACTIVATION_OVERHEAD
    temp = compiled_activation_bytes("efficientnet_b0", size, n)
    assert 0.8 <= estimate / temp <= 1.25, (estimate / 2**20, temp / 2**20)


def _figures(peak_gib: float, temp_gib: float):
    from gld_jax.train.aot import CompiledFigures

    gib = 2**30
    return CompiledFigures(
        argument_bytes=int((peak_gib - temp_gib) * gib),
        output_bytes=0,
        alias_bytes=0,
        temp_bytes=int(temp_gib * gib),
        flops=6.15e12,  # 0.1 s at a v3 core's 61.5 TFLOP/s
        bytes_accessed=90e9,  # 0.2 s at its 450 GB/s: the bound
        compile_seconds=1.0,
    )


def test_compiled_figures_decide_fits_and_report_the_roofline(tmp_path, monkeypatch, capsys):
    """With --compile, XLA's peak (not the estimate) decides "fits"; the plan
    carries the roofline and the largest batch. compile_plan itself is replaced
    by canned figures here (tests/test_tpu_compile.py compiles for real)."""
    import gld_jax.compiled_plan as cp

    def fake_compile_plan(config, plans, *, num_devices, mesh_shape, target):
        stages = []
        for plan in plans:
            # stage 1 does not fit a 16 GiB core; the others do
            f = _figures(15.5 if plan.index == 1 else 6.0, 4.0)
            entry = cp.figures_dict(f, target)
            micro = plan.batch_size // num_devices
            entry["largest_batch_per_device"] = cp.largest_batch(f, micro, target.memory_bytes)
            entry["step_hours"] = entry["roofline_seconds"] * plan.steps / 3600
            if plan.index == 0:  # where the bytes go, as compiled_plan lists them
                entry["top_traffic"] = [
                    {"layer": "stem", "pass": "forward", "op": "fusion", "gb": 0.75}
                ]
                entry["by_layer"] = [
                    {"layer": "stem", "gb": 1.5, "padding_gb": 1.25},
                    {"layer": "optimizer", "gb": 0.5, "padding_gb": 0.0},
                ]
            stages.append(entry)
        embed = cp.figures_dict(_figures(2.0, 1.0), target)
        embed.update(image_size=plans[-1].image_size, global_batch=256)
        return {"topology": "v3:4x4", "hosts": 4, "stages": stages, "embed": embed}

    monkeypatch.setattr(cp, "compile_plan", fake_compile_plan)
    config = _load("effb7")
    report = plan_run(config, str(tmp_path), config_name="effb7", compile=True)
    s0, s1, _ = report["stages"]
    assert s0["fits"] and not s1["fits"] and not report["fits"]
    assert s0["compiled"]["roofline_seconds"] == pytest.approx(0.2)
    # stage 0: 8 images per device use 4 GiB of temporaries; 14.4 GiB usable
    # minus 2 GiB of arguments leaves room for 24 images
    assert s0["compiled"]["largest_batch_per_device"] == 24
    assert report["roofline_hours"] == pytest.approx(
        sum(s["steps"] for s in report["stages"]) * 0.2 / 3600
    )
    assert "compiled for the TPU" in misfit_message(report)

    assert run_dry(config, str(tmp_path), config_name="effb7", as_json=False, compile=True) == 2
    out, err = capsys.readouterr()
    assert "compiled for v3:4x4 by XLA:TPU" in out and "training at the roofline" in out
    assert "stage 0's largest traffic (operands + result, GB):\n     0.75  forward  stem" in out
    by_layer = "stage 0's traffic by layer (GB, of it tile padding): "
    assert by_layer + "stem 1.50 (1.25), optimizer 0.50 (0.00)" in out
    assert err.count("\n") == 1 and "15.5 GiB per device (compiled for the TPU)" in err


def test_largest_batch_extrapolates_temporaries_linearly():
    from gld_jax.compiled_plan import largest_batch

    f = _figures(peak_gib=6.0, temp_gib=4.0)  # 2 GiB fixed, 0.5 GiB per image at 8 images
    assert largest_batch(f, 8, 14.0 * 2**30) == 24
    assert largest_batch(f, 8, 1.0 * 2**30) == 0  # even the arguments do not fit


def test_compile_for_a_gpu_target_is_one_line(tmp_path, capsys):
    config = _load("effb3")
    config.target.accelerator = "h100"
    config.target.num_devices = 32
    assert run_dry(config, str(tmp_path), config_name="x", as_json=False, compile=True) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be compiled without the device" in err[0]


def test_hosts_that_fall_behind_are_flagged_with_the_fix(tmp_path, capsys):
    """effb3 at 50% MFU on a v3-32: 26,000 images/s per host at 256 px is more
    than 72 cores decode and warp; the row says so and names the fixes, and the
    dry run still succeeds (a host-bound run is slow, not broken)."""
    config = _load("effb3")
    config.target.mfu = 0.5
    config.input.augment_on = "host"
    report = plan_run(config, str(tmp_path), config_name="effb3")
    stage0 = report["stages"][0]["host_feed"]
    assert not stage0["keeps_up"]
    assert stage0["core_images_per_s"] == RECORDED_RATES[(1024, 256, True)]
    # On a TPU, device augmentation comes last: its gathers are dear there.
    assert stage0["fix"].startswith("a smaller --max_side at conversion")
    assert "input.augment_on=device (its gathers are dear on a TPU" in stage0["fix"]
    assert stage0["host_images_per_s"] == pytest.approx(72 * stage0["core_images_per_s"])
    assert run_dry(config, str(tmp_path), config_name="effb3", as_json=False) == 0
    out = capsys.readouterr().out
    assert "HOSTS FALL BEHIND: a smaller --max_side" in out
    # Moving the augmentations to the TPU: the host's per-image work shrinks to the
    # decode, crop and resize, and the fix no longer suggests it.
    config.input.augment_on = "device"
    moved = plan_run(config, str(tmp_path), config_name="effb3")["stages"][0]["host_feed"]
    assert moved["core_images_per_s"] == RECORDED_RATES[(1024, 256, False)]
    assert moved["cores_needed"] < stage0["cores_needed"]
    assert "augment_on" not in moved.get("fix", "")


def test_calibration_measures_this_machine():
    from gld_jax.data import host_feed

    rate, source = host_feed.per_core_rate(64, 128, True, measure=True)
    assert source == "measured" and rate > 1.0
    rate, source = host_feed.per_core_rate(600, 1024, False, measure=False)
    assert source.startswith("recorded (1024 px sources at 576 px")
    assert rate == pytest.approx(RECORDED_RATES[(1024, 576, False)] * (576 / 600) ** 2)

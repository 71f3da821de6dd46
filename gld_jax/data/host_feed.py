"""Can the hosts keep the chips fed? Per-core decode rates and the cores a stage needs.

A host core runs the tf.data pipeline's per-image work: decode (DCT-scaled
where the source is at least twice the stage's side), crop, resize and, with
`input.augment_on=host`, the flip / shift-scale-rotate / cutout. The dry run
compares what the chips consume per host (from its step-time estimate) with
what that host's cores deliver, at each stage's image size.

Per-core rates come from `calibrate` (our own augmentation functions, one TF
thread, photo-like JPEGs made in memory) or, without calibration, from
`RECORDED_RATES`, measured the same way on the development machine.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
from PIL import Image

# vCPUs of one host, from the vendors' machine-type tables: Cloud TPU VMs
# (v3: 96 per 8-TensorCore host; v4: 240 per 4 chips; v5e ct5lp-hightpu-8t:
# 224; v5p: 208 per 4 chips; v6e ct6e-standard-8t: 180) and 8-GPU Google Cloud
# machines (a3-highgpu-8g H100: 208; a3-ultragpu-8g H200: 224; a2-ultragpu-8g
# A100 80GB: 96).
HOST_VCPUS = {
    "tpu_v3": 96,
    "tpu_v4": 240,
    "tpu_v5e": 224,
    "tpu_v5p": 208,
    "tpu_v6e": 180,
    "h100": 208,
    "h200": 224,
    "a100": 96,
}
# The share of a host's vCPUs the input pipeline may take: the training loop,
# the runtime's threads, checkpoint writes and the OS keep the rest (a stated
# allowance, not a measurement).
PIPELINE_SHARE = 0.75

# Images/s one core delivers: (source side px, stage side px, geometric on host)
# -> rate. Measured with `python -m gld_jax.data.host_feed` (calibrate over 8
# photo-like q90 JPEGs, DCT scaling on, one TF thread) on the development
# machine (2 vCPUs, x86-64, idle), 2026-12-01.
RECORDED_RATES: dict[tuple[int, int, bool], float] = {
    (1024, 256, True): 79.1,
    (1024, 256, False): 121.1,
    (1024, 512, True): 31.6,
    (1024, 512, False): 79.4,
    (1024, 544, True): 24.6,
    (1024, 544, False): 71.2,
    (1024, 576, True): 23.9,
    (1024, 576, False): 68.1,
    (1024, 672, True): 18.6,
    (1024, 672, False): 50.7,
    (1024, 704, True): 17.0,
    (1024, 704, False): 51.0,
    (1024, 768, True): 15.4,
    (1024, 768, False): 46.4,
    (1024, 1024, True): 9.5,
    (1024, 1024, False): 35.1,
    (768, 256, True): 78.2,
    (768, 256, False): 148.8,
    (768, 512, True): 27.9,
    (768, 512, False): 92.2,
    (768, 544, True): 27.8,
    (768, 544, False): 82.7,
    (768, 576, True): 24.1,
    (768, 576, False): 74.2,
    (768, 672, True): 20.5,
    (768, 672, False): 62.8,
    (768, 704, True): 19.0,
    (768, 704, False): 65.5,
    (768, 768, True): 16.4,
    (768, 768, False): 68.6,
    (512, 256, True): 95.7,
    (512, 256, False): 247.1,
    (512, 512, True): 33.5,
    (512, 512, False): 142.2,
}
RECORDED_MACHINE = "the development machine (2-vCPU x86-64), 2026-12-01"
CALIBRATION_SIDES = (256, 512, 544, 576, 672, 704, 768, 1024)


def photo_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """JPEG bytes of one photo-like RGB image of width x height pixels.

    A smooth random scene (a 40x30 random image upsampled bicubically) plus
    sensor-like noise: its JPEG size and decode cost are close to a real photo's
    (100-200 kB at 800x600, q90), unlike flat drawings, which decode unrealistically fast.
    """
    small = Image.fromarray((rng.uniform(size=(30, 40, 3)) * 255).astype(np.uint8))
    big = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    big += rng.standard_normal(size=big.shape, dtype=np.float32) * 6.0
    buf = io.BytesIO()
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def calibrate(
    image_size: int,
    *,
    source_side: int = 1024,
    geometric: bool = True,
    seconds: float = 1.0,
    num_sources: int = 8,
    sources: list[bytes] | None = None,
) -> float:
    """Images/s of one core for the host's share of the training input at `image_size`.

    The work is `augment.augment_train_image` (the recipe's random crop, the
    DCT-scaled decode, the resize and, with `geometric`, the flip,
    shift-scale-rotate and cutout) on `num_sources` square JPEGs of
    `source_side` px, in a single TF thread, after one warm-up pass, repeated
    for at least `seconds`; or on the given square JPEG `sources` of that side
    (e.g. what the converter stored).
    """
    import tensorflow as tf

    from gld_jax.data import augment

    if sources is None:
        rng = np.random.default_rng(0)
        sources = [photo_jpeg(rng, source_side, source_side) for _ in range(num_sources)]
    num_sources = len(sources)
    side = tf.constant(source_side, tf.int32)

    def prepare(encoded: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([tf.constant(0, tf.int64), i])
        return augment.augment_train_image(
            encoded, side, side, seed, image_size, dct_scaling=True, geometric=geometric
        )

    ds = tf.data.Dataset.from_tensor_slices(sources).repeat()
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(2**62)).map(prepare).batch(num_sources)
    # One thread, so the rate is per core whatever the machine: tf.data on a host
    # runs one such map per core.
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    it = iter(ds.with_options(options))
    next(it)  # warm-up: graph building, first decodes
    done, start = 0, time.perf_counter()
    while True:
        next(it)
        done += num_sources
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


@dataclasses.dataclass(frozen=True)
class HostFeed:
    """One stage's feed check. Rates in images/s; cores as counts."""

    chips_images_per_s: float  # what one host's devices consume
    core_images_per_s: float  # what one host core delivers at this stage's size
    rate_source: str  # "measured" (here) or "recorded" (RECORDED_MACHINE)
    cores_needed: float
    cores_available: float  # PIPELINE_SHARE of the host's vCPUs
    host_vcpus: int

    @property
    def keeps_up(self) -> bool:
        return self.cores_needed <= self.cores_available

    @property
    def host_images_per_s(self) -> float:
        """What the host's pipeline share delivers: the stage's rate when it falls behind."""
        return self.cores_available * self.core_images_per_s


def per_core_rate(
    image_size: int, source_side: int, geometric: bool, *, measure: bool
) -> tuple[float, str]:
    """(images/s per core, where the figure comes from) for one stage size.

    Recorded figures are looked up at the nearest recorded stage size of the
    same source side and placement and scaled by pixel count (resize and warp
    costs grow with the output's area; the DCT-scaled decode stays the same or
    shrinks), a stated approximation; `measure=True` calibrates here instead.
    """
    if measure:
        return calibrate(image_size, source_side=source_side, geometric=geometric), "measured"
    keys = [k for k in RECORDED_RATES if k[0] == source_side and k[2] == geometric]
    if not keys:
        keys = [k for k in RECORDED_RATES if k[2] == geometric]
    if not keys:
        raise KeyError("no recorded host rates; run the dry run with --calibrate_host")
    key = min(keys, key=lambda k: (abs(k[0] - source_side), abs(k[1] - image_size)))
    rate = RECORDED_RATES[key]
    if key[1] != image_size:
        rate *= (key[1] / image_size) ** 2 if image_size > key[1] else 1.0
    note = "recorded"
    if key[:2] != (source_side, image_size):
        note += f" ({key[0]} px sources at {key[1]} px, scaled)"
    return rate, note


def host_feed(
    *,
    global_batch: int,
    step_seconds: float,
    hosts: int,
    accelerator: str,
    core_rate: tuple[float, str],
) -> HostFeed:
    """The feed check for a stage: images/s per host the devices take, against
    the cores that takes at `core_rate` and the host's PIPELINE_SHARE of vCPUs."""
    vcpus = HOST_VCPUS[accelerator]
    chips = global_batch / step_seconds / hosts
    rate, source = core_rate
    return HostFeed(chips, rate, source, chips / rate, PIPELINE_SHARE * vcpus, vcpus)


def feed_fix(
    feed: HostFeed, *, augment_on_device: bool, dct_scaling: bool, tpu: bool = False
) -> str:
    """The remedies, most effective first, for a stage whose hosts fall behind.
    On a TPU the device warp's gathers are dear, so it comes last there, with
    the way to check its cost."""
    fixes = []
    device = "input.augment_on=device"
    if not augment_on_device and not tpu:
        fixes.append(device)
    if not dct_scaling:
        fixes.append("input.dct_scaling=True")
    fixes.append("a smaller --max_side at conversion (the decode is the host's main cost)")
    if not augment_on_device and tpu:
        fixes.append(f"{device} (its gathers are dear on a TPU: check --dry_run --compile)")
    return (
        ", ".join(fixes)
        + f"; else the stage runs at the hosts' {feed.host_images_per_s:,.0f} images/s per host"
    )


def main() -> None:
    """Prints RECORDED_RATES entries measured on this machine, one per line."""
    from gld_jax.utils.cli import quiet_tensorflow

    quiet_tensorflow()
    for source in (1024, 768, 512):
        for size in CALIBRATION_SIDES:
            if size > source:
                continue
            for geometric in (True, False):
                rate = calibrate(size, source_side=source, geometric=geometric, seconds=2.0)
                print(f"    ({source}, {size}, {geometric}): {rate:.1f},", flush=True)


if __name__ == "__main__":
    main()

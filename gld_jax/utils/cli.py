"""absl flag parsing for the command-line tools: a bad flag or config key is
one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

from absl import flags


def parse_flags(argv: list[str]) -> None:
    try:
        flags.FLAGS(argv)
    except (
        flags.Error,
        AttributeError,
        KeyError,
        ValueError,
        TypeError,
        FileNotFoundError,
        OSError,
        SyntaxError,
    ) as e:
        msg = str(e).strip().strip('"').strip("'")
        raise SystemExit(f"error: {msg}") from None
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is None:
        raise SystemExit("error: --config is required, e.g. --config configs/demo.py")


def cpu_only_when_no_accelerator() -> None:
    """Keeps jax on the CPU where libtpu is installed but no accelerator exists.

    The dev set installs libtpu (to compile for TPU slices from any machine);
    jax then probes for TPU chips at start-up and libtpu prints several lines
    about TPU_* variables a user cannot act on. TPU VMs expose /dev/accel* or
    /dev/vfio/*, GPU hosts /dev/nvidia*; with none of them and JAX_PLATFORMS
    unset, jax is told to use the CPU. Call before jax initialises a backend.
    """
    import glob
    import importlib.util
    import os

    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if any(glob.glob(p) for p in ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    import sys

    if "jax" in sys.modules:  # imported already (a config file's imports): not yet started
        sys.modules["jax"].config.update("jax_platforms", "cpu")

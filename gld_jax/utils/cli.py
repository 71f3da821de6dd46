"""What every command-line tool shares: absl flag parsing where a bad flag or
config key is one line on stderr and exit code 2, not a traceback; and a quiet
TensorFlow start-up."""

from __future__ import annotations

import argparse
import os
import sys

from absl import flags

EXIT_USAGE = 2


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's start-up chatter (oneDNN notes, CPU-feature guard) off the
    terminal; call at the top of a tool's main, before anything imports TF."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), not its usage block."""

    def error(self, message: str):
        _fail(f"{message} (see --help)")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _one_line(err: BaseException) -> str:
    # absl wraps the cause's repr: quotes and newlines arrive escaped.
    msg = str(err).strip()
    if len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
        msg = msg[1:-1]
    msg = msg.replace("\\n", "\n").replace("\\'", "'")
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _config_path(argv: list[str]) -> str | None:
    """The file of --config FILE / --config=FILE (ml_collections allows FILE:ARGS)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
    return None


def parse_flags(argv: list[str]) -> None:
    """Parses absl flags; a bad flag, config key or config file is one line on
    stderr and exit code 2."""
    path = _config_path(argv)
    if path is not None and "config" in flags.FLAGS and not os.path.isfile(path):
        # ml_collections defers this error to the first use of the config.
        _fail(f"--config {path}: no such file")
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
        _fail(_one_line(e))
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is None:
        _fail("--config is required, e.g. --config configs/demo.py")


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


def user_errors() -> tuple[type[BaseException], ...]:
    """What a tool catches as a user's mistake rather than a bug: a bad value
    (ValueError) or a missing, forbidden or vanished path, local or gs://."""
    from gld_jax.utils import fs

    return (ValueError, *fs.path_errors())


def print_user_error(err: BaseException) -> int:
    """Prints `err` as one line on stderr; returns the usage exit code."""
    from gld_jax.utils import fs

    line = str(err) if isinstance(err, ValueError) else fs.error_line(err)
    print(f"error: {line}", file=sys.stderr)
    return EXIT_USAGE

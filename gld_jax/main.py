"""gld-jax entry point.

    python -m gld_jax.main --config configs/demo.py --workdir runs/demo
    python -m gld_jax.main --config configs/effb7.py --workdir gs://bucket/runs/effb7 \
        --config.fold=1 --mode train
    python -m gld_jax.main --config configs/effb7.py --dry_run [--compile] [--json]

Modes: `all` (default) = data -> train -> embed -> evaluate; or one of `train`,
`embed`, `evaluate`. Every mode resumes from what the workdir already holds.
`--dry_run` runs nothing: it prints each stage's plan, memory and time on
`config.target` (gld_jax.dry_run) and exits 2 when a stage will not fit; with
`--compile` every stage is compiled for the target TPU slice first and XLA's own
figures decide (gld_jax.compiled_plan).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

from absl import flags
from ml_collections import config_flags

from gld_jax.utils.cli import cpu_only_when_no_accelerator, parse_flags, quiet_tensorflow
from gld_jax.utils.compile_cache import enable_compilation_cache
from gld_jax.utils.progress import end_bars

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://...).")
_MODE = flags.DEFINE_enum(
    "mode",
    "all",
    ["all", "train", "embed", "evaluate"],
    "all: train, embed and evaluate; train: train (and validate) only; embed: train what "
    "is left, then embed the index and test images; evaluate: predict from saved embeddings.",
)
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop (checkpointed) after this many train steps in this call."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the plan (steps, memory, time on config.target) and exit."
)
_JSON = flags.DEFINE_bool("json", False, "With --dry_run: print the plan as one JSON object.")
_COMPILE = flags.DEFINE_bool(
    "compile",
    False,
    "With --dry_run: also compile every stage for config.target's TPU slice (needs libtpu; "
    "minutes per stage) and report XLA's own memory and cost figures.",
)
_CALIBRATE_HOST = flags.DEFINE_bool(
    "calibrate_host",
    False,
    "With --dry_run: measure this machine's per-core decode/augment rate at each stage's "
    "size (a few seconds per stage) instead of using the recorded figures.",
)

log = logging.getLogger("gld_jax")

EXIT_USAGE = 2
EXIT_DIVERGED = 3
# EX_TEMPFAIL, "try again": preempted (checkpoint saved on SIGTERM), a lost host,
# a stalled step; rerunning the same command resumes from the last checkpoint.
EXIT_PREEMPTED = 75


def _default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    cpu_only_when_no_accelerator()
    parse_flags(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "orbax", "jax._src", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_tensorflow()

    import jax

    from gld_jax.config import ConfigError, validate_distributed
    from gld_jax.train import peers
    from gld_jax.train.distributed import maybe_initialize_distributed

    config = _CONFIG.value
    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or _default_workdir(config_path)
    from gld_jax.utils import fs

    path_keys = ("data_dir", "tfrecord_dir", "checkpoint_dir")
    problem = fs.unsupported_scheme(workdir, "--workdir") or next(
        filter(None, (fs.unsupported_scheme(config[k], k) for k in path_keys)), None
    )
    if problem:  # before anything is written: never a folder named 'file:' in the cwd
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if _DRY_RUN.value:
        from gld_jax.dry_run import run_dry

        return run_dry(
            config,
            workdir,
            config_name=config_path,
            as_json=_JSON.value,
            compile=_COMPILE.value,
            calibrate_host=_CALIBRATE_HOST.value,
        )
    try:
        validate_distributed(config)  # its timeouts go to the runtime before anything else
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        multi = maybe_initialize_distributed(config.distributed)
    except Exception as e:  # the hosts never met: a missing host, a wrong address
        code = EXIT_PREEMPTED if isinstance(e, jax.errors.JaxRuntimeError) else EXIT_USAGE
        print(f"error: the hosts could not connect: {' '.join(str(e).split())}", file=sys.stderr)
        return code
    enable_compilation_cache(workdir)
    try:
        code, line, summary = _run_checked(config, workdir)
    except Exception as e:
        if not multi:
            raise
        # A failure nobody foresaw: its traceback here, and the run stops on
        # every process instead of leaving them in a collective.
        traceback.print_exc()
        code, line = 1, f"error: process {jax.process_index()} failed: {_one_line(e)}"
    if code:
        if multi:
            peers.stop_run(code, line)  # the same line and code on every process
        end_bars()
        print(line, file=sys.stderr)
        return code
    if summary.get("ladder"):
        from gld_jax.pipeline import ladder_table

        print(
            ladder_table(
                summary["ladder"],
                config.eval.nonlandmark_usage,
                summary.get("rerank_skipped", ""),
            )
        )
    print(json.dumps(summary))
    return 0  # several processes: each says it is done at exit (peers.finish_run)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _run_checked(config, workdir: str) -> tuple[int, str, dict | None]:
    """Validates, runs, and maps the foreseen failures to (exit code, one line);
    (0, "", summary) when the run ends well."""
    import jax

    from gld_jax.config import ConfigError, validate_config
    from gld_jax.data.prepare import path_problem
    from gld_jax.train import peers
    from gld_jax.train.distributed import SharedStepFailed
    from gld_jax.train.preemption import TrainingPreempted
    from gld_jax.train.trainer import TrainingDiverged
    from gld_jax.utils import fs

    try:
        validate_config(config, num_devices=jax.device_count(), process_count=jax.process_count())
    except ConfigError as e:
        return EXIT_USAGE, f"config error: {e}", None
    problem = path_problem(config, workdir)  # after the config: a bad one writes nothing
    if problem:
        return EXIT_USAGE, f"error: {problem}", None
    try:
        try:
            summary = run(config, workdir, mode=_MODE.value, stop_after_steps=_STOP_AFTER.value)
        except Exception as e:
            peers.verdict_first(e)  # a peer gone: exit 75 and its line from the monitor
            raise
    except TrainingDiverged as e:
        return EXIT_DIVERGED, f"error: {e}", None
    except TrainingPreempted as e:
        return EXIT_PREEMPTED, f"preempted: {e}", None
    except (
        FileNotFoundError,
        NotADirectoryError,
        PermissionError,
        ValueError,
        SharedStepFailed,
    ) as e:
        return EXIT_USAGE, f"error: {e}", None
    except fs.path_errors() as e:
        # A path that went away or lost permission mid-run (a deleted object, an
        # expired grant), a checkpoint that could not be written: the message
        # names it.
        return EXIT_USAGE, f"error: {fs.error_line(e)}", None
    return 0, "", summary


def run(config, workdir: str, *, mode: str = "all", stop_after_steps: int | None = None) -> dict:
    """Runs the requested phases; returns the summary dict printed at the end."""
    from gld_jax.pipeline import run_pipeline

    t0 = time.perf_counter()
    summary = run_pipeline(config, workdir, mode=mode, stop_after_steps=stop_after_steps)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


if __name__ == "__main__":
    sys.exit(main())

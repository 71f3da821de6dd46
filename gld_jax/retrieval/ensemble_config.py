"""`--config configs/ensemble.py` for the evaluation CLI: a config file that names
the runs of an ensemble, turned into the CLI's own flags.

The config is a Python file with `get_config()` returning a ConfigDict with keys
runs_root, fold, runs, weights, mode, num_neighbors, sim_power, head_power,
nonlandmark, solution (see
configs/ensemble.py). `--config.key=value` overrides a key; plain flags given
on the command line win over the config's.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

KEYS = (
    "runs_root",
    "fold",
    "runs",
    "weights",
    "mode",
    "num_neighbors",
    "sim_power",
    "head_power",
    "search",
    "search_dtype",
    "search_recall",
    "nonlandmark",
    "solution",
)


def split_config_args(
    argv: Sequence[str], flag: str = "--config"
) -> tuple[str | None, dict[str, str], list[str]]:
    """(config path, {key: raw value} overrides, the remaining args) of `flag FILE`
    and `flag.KEY=VALUE` arguments."""
    path, overrides, rest = None, {}, []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == flag and i + 1 < len(args):
            path, i = args[i + 1], i + 2
            continue
        if arg.startswith(f"{flag}="):
            path = arg.split("=", 1)[1]
        elif arg.startswith(f"{flag}."):
            key, sep, value = arg[len(flag) + 1 :].partition("=")
            if not sep:
                if i + 1 >= len(args):
                    raise ValueError(f"{arg} needs a value ({flag}.{key}=VALUE)")
                value, i = args[i + 1], i + 1
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    if overrides and path is None:
        raise ValueError(f"{flag}.KEY=VALUE needs {flag} FILE")
    return path, overrides, rest


def load_ensemble_config(
    path: str, overrides: dict[str, str], flag: str = "--config"
) -> ml_collections.ConfigDict:
    """Loads `path`'s get_config() and applies overrides, typed like the defaults;
    errors name `flag`, the command-line flag the file came from."""
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path!r}: no such file")
    spec = importlib.util.spec_from_file_location("ensemble_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    unknown = sorted(set(config.keys()) - set(KEYS))
    if unknown:
        raise ValueError(f"{flag} {path}: unknown keys {unknown}; known: {list(KEYS)}")
    for key, raw in overrides.items():
        if key not in config:
            raise ValueError(f"{flag}.{key}: unknown key; known: {', '.join(KEYS)}")
        default = config[key]
        if isinstance(default, str):
            value = raw
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(f"{flag}.{key}={raw}: not a {type(default).__name__}") from None
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value = list(value)
        elif type(value) is not type(default) and not (
            isinstance(default, float) and isinstance(value, int)
        ):
            raise ValueError(f"{flag}.{key}={raw}: expected a {type(default).__name__}")
        config[key] = value
    if len(config.weights) != len(config.runs):
        raise ValueError(f"{len(config.weights)} weights for {len(config.runs)} runs")
    return config


def run_dir(config: ml_collections.ConfigDict, name: str) -> str:
    """<runs_root>/<name>_fold<k>, or <name>_all for fold -1 (scripts/tpu's names)."""
    suffix = "all" if config.fold < 0 else f"fold{config.fold}"
    return os.path.join(config.runs_root, f"{name}_{suffix}")


def config_to_args(config: ml_collections.ConfigDict) -> list[str]:
    """The evaluation CLI's flags for an ensemble config."""
    dirs = [os.path.join(run_dir(config, n), "embeddings") for n in config.runs]
    args = ["--index", *(os.path.join(d, "train") for d in dirs)]
    args += ["--queries", *(os.path.join(d, "test") for d in dirs)]
    args += ["--weights", *(str(w) for w in config.weights)]
    args += ["--mode", config.mode, "--num_neighbors", str(config.num_neighbors)]
    for key in ("sim_power", "head_power", "search", "search_dtype", "search_recall"):
        if key in config:
            args += [f"--{key}", str(config[key])]
    if config.nonlandmark:
        args += ["--nonlandmark", *(os.path.join(d, config.nonlandmark) for d in dirs)]
    if config.solution:
        args += ["--solution", config.solution]
    return args

"""The config a run was made with, kept in its workdir as `config.json`.

A run writes it when it starts, so the tools that use a trained run later
(`python -m gld_jax.recognize`, `python -m gld_jax.export`) need only
`--workdir`. JSON loses one distinction the schema relies on: a list of
ConfigDicts (`stages`) comes back as a list of dicts, so lists are walked and
their dicts turned back into ConfigDicts.
"""

from __future__ import annotations

import json
import os

import ml_collections

from gld_jax.utils import fs

RUN_CONFIG = "config.json"


def run_config_path(workdir: str) -> str:
    return os.path.join(workdir, RUN_CONFIG)


def save_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config` to <workdir>/config.json (atomically; replaces an older one,
    so the file names the config of the run's latest invocation)."""
    fs.makedirs(workdir)
    fs.write_atomic(run_config_path(workdir), config.to_json_best_effort(indent=1, sort_keys=True))


def _restore(value):
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _restore(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config in <workdir>/config.json.

    Raises:
      FileNotFoundError: the workdir has no config.json (a run made before the
        file existed, or not a run).
      ValueError: the file is not a JSON object.
    """
    path = run_config_path(workdir)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = json.loads(fs.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a config (a JSON object)")
    return _restore(data)

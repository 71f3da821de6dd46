"""A finished run opened for use: its config, eval-mode model, embedding step
and photo preprocessing (what `recognize` and `export` share).

Everything is found from the workdir: the config in `config.json` (or a config
file, for a run made before runs kept theirs), the checkpoints, the converted
data's manifest (the head's landmark ids and the conversion's options). What is
missing is one line (:class:`RunProblem`), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from gld_jax.config.run_config import load_run_config
from gld_jax.data import manifest as manifest_lib
from gld_jax.data.prepare import resolve_dirs
from gld_jax.retrieval.ensemble_config import load_ensemble_config, run_dir, split_config_args
from gld_jax.utils import fs

log = logging.getLogger(__name__)


class RunProblem(ValueError):
    """The workdir holds no usable finished run; str() is one line naming what is missing."""


@dataclasses.dataclass
class RunFiles:
    """Where a run's parts are, checked to exist (:func:`find_run`); nothing restored."""

    workdir: str
    config: ml_collections.ConfigDict
    data_dir: str
    tfrecord_dir: str
    checkpoint_dir: str

    @property
    def embeddings_dir(self) -> str:
        return os.path.join(self.workdir, "embeddings")


@dataclasses.dataclass
class TrainedRun:
    """One finished run, restored. `model` holds the final stage's eval weights;
    `image_size` is that stage's size (the eval preprocessing's)."""

    files: RunFiles
    model: object  # gld_jax.models.landmark.LandmarkModel
    mesh: object  # jax.sharding.Mesh
    image_size: int
    label_set: str
    manifest: manifest_lib.Manifest
    _embedder: object = dataclasses.field(default=None, init=False, repr=False)

    @property
    def workdir(self) -> str:
        return self.files.workdir

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.files.config

    @property
    def tfrecord_dir(self) -> str:
        return self.files.tfrecord_dir

    def head_landmark_ids(self) -> np.ndarray:
        """int64 [classes]: the landmark id of each class of the final head."""
        return self.manifest.landmark_ids(self.label_set)

    def encode_options(self):
        """The options the run's data was converted with (tfrecords_tools.images.EncodeOptions)."""
        from tfrecords_tools.images import DEFAULT_MAX_PIXELS, EncodeOptions

        d = self.manifest.data
        return EncodeOptions(
            max_side=d.get("max_side"),
            jpeg_quality=int(d.get("jpeg_quality", 95)),
            max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )

    def embedder(self):
        """The run's jitted embedding step with the head's top `eval.head_top_k`
        (made once: later calls reuse its compiled step)."""
        from gld_jax.retrieval.extract import Embedder

        if self._embedder is None:
            self._embedder = Embedder(
                self.model,
                self.mesh,
                head_k=self.config.eval.head_top_k,
                head_landmark_ids=self.head_landmark_ids(),
            )
        return self._embedder

    def preprocessor(self):
        """Photo bytes -> uint8 [S, S, 3] as the run's eval pipeline prepares them."""
        from gld_jax.data.photos import PhotoPreprocessor

        return PhotoPreprocessor(
            self.image_size,
            encode_options=self.encode_options(),
            dct_scaling=self.config.input.dct_scaling,
        )


def config_from_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (configs/*.py)."""
    if not os.path.isfile(path):
        raise RunProblem(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location("run_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_of(workdir: str, config_file: str | None) -> ml_collections.ConfigDict:
    if config_file:
        return config_from_file(config_file)
    try:
        return load_run_config(workdir)
    except FileNotFoundError:
        raise RunProblem(
            f"{workdir}: no config.json (not a run, or one made before runs kept their "
            "config): give the run's config file with --config"
        ) from None
    except ValueError as e:
        raise RunProblem(str(e)) from None


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
    # Through etils, as Orbax reads them: gs:// checkpoints may be served by another
    # client than the file layer's.
    from etils import epath

    path = epath.Path(ckpt_dir if fs.is_remote(ckpt_dir) else os.path.abspath(ckpt_dir))
    if not path.exists():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _mesh(config):
    from gld_jax.train.mesh import make_mesh

    try:
        return make_mesh(config.mesh.data, config.mesh.model)
    except ValueError as e:  # trained on a slice, used on a smaller machine
        log.info("the run's mesh does not fit here (%s): all devices on 'data'", e)
        return make_mesh(-1, 1)


def find_run(workdir: str, *, config_file: str | None = None) -> RunFiles:
    """Finds a run's config, converted data and checkpoints (cheap: nothing is read
    beyond the config and a listing).

    Raises:
      RunProblem: no such folder, no config, no converted data (its manifest), no checkpoint.
    """
    if not config_file and not fs.isdir(workdir):
        raise RunProblem(f"{workdir}: no such run folder")
    config = _config_of(workdir, config_file)
    data_dir, tfrecord_dir = resolve_dirs(config, workdir)
    if not manifest_lib.exists(tfrecord_dir):
        raise RunProblem(
            f"{workdir}: no converted data ({manifest_lib.manifest_path(tfrecord_dir)} is "
            "missing; it holds the head's landmark ids)"
        )
    ckpt_dir = config.checkpoint_dir or os.path.join(workdir, "checkpoints")
    if not _checkpoint_steps(ckpt_dir):
        raise RunProblem(f"{workdir}: no checkpoint in {ckpt_dir}: train the run first")
    return RunFiles(workdir, config, data_dir, tfrecord_dir, ckpt_dir)


def open_run(files: RunFiles) -> TrainedRun:
    """Restores a found run's final model (no training, no training data read).

    Raises:
      RunProblem: the checkpoints stop before the last stage's end.
    """
    from gld_jax.train.trainer import RunNotFinished, restore_trained_model

    mesh = _mesh(files.config)
    try:
        result = restore_trained_model(
            files.config, workdir=files.workdir, tfrecord_dir=files.tfrecord_dir, mesh=mesh
        )
    except RunNotFinished as e:
        raise RunProblem(str(e)) from None
    final = result.plans[-1]
    return TrainedRun(
        files=files,
        model=result.model,
        mesh=mesh,
        image_size=final.image_size,
        label_set=final.label_set,
        manifest=manifest_lib.read_manifest(files.tfrecord_dir),
    )


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command-line parser with the flags that name a trained run: `--workdir`
    and `--config` (the ensemble's flags are split off by `parse_run_args`)."""
    from gld_jax.utils.cli import OneLineArgumentParser

    p = OneLineArgumentParser(
        prog=prog,
        description=description,
        epilog="--ensemble FILE [--ensemble.KEY=VALUE ...] in place of --workdir: an "
        "ensemble config (configs/ensemble.py) naming the runs, their weights and mode.",
    )
    p.add_argument("--workdir", help="the trained run's folder (local or gs://)")
    p.add_argument(
        "--config",
        help="the run's config file, for a run made before runs kept their config.json",
    )
    return p


def parse_run_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parses a command that takes `--workdir RUN [--config FILE]` or `--ensemble
    FILE [--ensemble.KEY=VALUE ...]`: the ensemble's flags are split off first
    (`args.ensemble`, `args.ensemble_overrides`). Usage errors exit 2 in one line."""
    try:
        ensemble, overrides, rest = split_config_args(argv, "--ensemble")
    except ValueError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    args.ensemble, args.ensemble_overrides = ensemble, overrides
    return args


def runs_problem(args: argparse.Namespace) -> str | None:
    """One line when `parse_run_args`'s args name no run, or both kinds."""
    if bool(args.workdir) == bool(args.ensemble):
        return "give --workdir RUN or --ensemble FILE (one of them)"
    if args.config and not args.workdir:
        return "--config goes with --workdir (an ensemble's runs keep their config.json)"
    return None


def find_runs(
    args: argparse.Namespace,
) -> tuple[list[RunFiles], list[float], ml_collections.ConfigDict | None]:
    """(the runs, their weights, the ensemble config or None) that
    `parse_run_args`'s args name: one run, or an ensemble config's runs
    (<runs_root>/<name>_fold<k>, as configs/ensemble.py names them)."""
    if not args.ensemble:
        return [find_run(args.workdir, config_file=args.config)], [1.0], None
    try:
        config = load_ensemble_config(args.ensemble, args.ensemble_overrides, flag="--ensemble")
    except ValueError as e:
        raise RunProblem(str(e)) from None
    found = [find_run(run_dir(config, name)) for name in config.runs]
    return found, list(config.weights), config


__all__ = [
    "RunFiles",
    "RunProblem",
    "TrainedRun",
    "config_from_file",
    "find_run",
    "find_runs",
    "open_run",
    "parse_run_args",
    "run_parser",
    "runs_problem",
]

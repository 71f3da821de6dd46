"""Makes sure a run's TFRecords exist: synthetic data and conversion on demand.

Both steps are idempotent: the generator keeps a _SUCCESS.json marker and the
converter's manifest.json is written last, so a second run reuses both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from gld_jax.data import manifest
from gld_jax.utils import fs

log = logging.getLogger(__name__)


def resolve_dirs(config, workdir: str) -> tuple[str, str]:
    """(GLDv2 data dir, TFRecord dir) with the workdir defaults filled in."""
    data_dir = config.data_dir or os.path.join(workdir, "data")
    tfrecord_dir = config.tfrecord_dir or os.path.join(workdir, "tfrecords")
    return data_dir, tfrecord_dir


def path_problem(config, workdir: str) -> str | None:
    """One line naming the first configured path a run cannot use (missing,
    not a folder, not writable), before anything runs; None when all are fine."""
    data_dir, tfrecord_dir = resolve_dirs(config, workdir)
    checks = [
        lambda: fs.writable_problem(workdir, "--workdir"),
        lambda: fs.writable_problem(config.checkpoint_dir, "checkpoint_dir"),
    ]
    if not manifest.exists(tfrecord_dir):
        data_check = fs.writable_problem if config.synthetic.enabled else fs.readable_dir_problem
        checks += [
            lambda: fs.writable_problem(tfrecord_dir, "tfrecord_dir"),
            lambda: data_check(data_dir, "data_dir"),
        ]
    # In order, stopping at the first problem: no probe writes after a failure.
    return next(filter(None, (check() for check in checks)), None)


def shared_data_problem(
    seen: Sequence[bool],
    *,
    synthetic: bool,
    tfrecord_dir: str,
    data_dir: str,
    prepared: bool = False,
) -> str | None:
    """What stops a multi-process run from reading one set of TFRecords, in one
    line (the same on every process); None when every process sees the manifest,
    or when none does and process 0 may generate and convert the synthetic set.

    seen: per process, whether it sees `tfrecord_dir`'s manifest.
    prepared: process 0 has just written the data.
    """
    missing = [i for i, s in enumerate(seen) if not s]
    if not missing:
        return None
    n = len(seen)
    if len(missing) < n or prepared:
        who = ", ".join(str(i) for i in missing)
        when = " after process 0 wrote it" if prepared else ", others do"
        return (
            f"process{'es' if len(missing) > 1 else ''} {who} of {n} "
            f"see{'' if len(missing) > 1 else 's'} no manifest.json in {tfrecord_dir}{when}: "
            "every host must read the same folder (tfrecord_dir, default <workdir>/tfrecords), "
            "e.g. on gs://"
        )
    if synthetic:
        return None
    return (
        f"no converted data in {tfrecord_dir}: a multi-host run reads converted TFRecords; "
        f"convert them first: python -m tfrecords_tools.build_gldv2 --data_dir {data_dir} "
        f"--output_dir {tfrecord_dir}"
    )


def prepare_data(config, workdir: str) -> str:
    """Generates (if synthetic) and converts (if no manifest yet); returns the TFRecord dir."""
    data_dir, tfrecord_dir = resolve_dirs(config, workdir)
    if manifest.exists(tfrecord_dir):
        return tfrecord_dir
    if config.synthetic.enabled:
        from gld_jax.data.synthetic import generate_gldv2_like

        s = config.synthetic
        generate_gldv2_like(
            data_dir,
            num_classes=s.num_classes,
            max_images=s.max_images,
            num_test=s.num_test,
            test_nonlandmark_fraction=s.test_nonlandmark_fraction,
            label_noise=s.label_noise,
            nonlandmark_noise=s.nonlandmark_noise,
            image_size=(s.image_width, s.image_height),
            nonlandmark_scenes=s.nonlandmark_scenes,
            seed=config.seed,
        )
    from tfrecords_tools.build_gldv2 import build_gldv2

    log.info("converting %s to TFRecords in %s", data_dir, tfrecord_dir)
    build_gldv2(
        data_dir,
        tfrecord_dir,
        num_shards=config.convert.num_shards,
        folds=config.folds,
        max_side=config.convert.max_side or None,
        num_workers=config.convert.num_workers,
        seed=config.seed,
    )
    return tfrecord_dir

"""Validation of a run's config before any work starts.

Every check raises `ConfigError` naming the key, so `main` can print one clear
line ("config error: stages[1].batch_size: ...") instead of failing minutes into
a run.
"""

from __future__ import annotations

import os

import ml_collections

from gld_jax.config.defaults import (
    AUGMENT_ON,
    BACKBONES,
    SEARCHES,
    resolve_mesh_shape,
    stage_accumulate_steps,
)

MIN_IMAGE_SIZE = 32  # EfficientNet/ResNeSt reduce the input 32x
LABEL_SETS = ("full", "clean")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "sgd")
# gld_jax.retrieval.evaluate.MODES (config sits below retrieval, so the list is
# repeated here; tests/test_config.py checks the two agree).
PREDICTIONS = ("top1", "knn_vote", "nonlandmark_rerank", "head", "blend", "blend_rerank")
VALIDATIONS = ("head", "retrieval", "both")
INDEX_SETS = ("clean", "clean_classes_full", "full")
USAGES = ("", "Public", "Private")


class ConfigError(ValueError):
    """A config value that cannot work; str() is 'key: reason'."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(key, reason)


def validate_config(
    config: ml_collections.ConfigDict,
    *,
    num_devices: int,
    process_count: int = 1,
    check_data: bool = True,
) -> None:
    """Raises ConfigError for the first bad key; returns None when all is well.

    check_data=False skips the data-location checks (the dry run plans a run
    whose data may not be reachable from where it is planned).
    """
    from gld_jax.utils.fs import unsupported_scheme

    paths = {
        "data_dir": config.data_dir,
        "tfrecord_dir": config.tfrecord_dir,
        "model.init_from": config.model.get("init_from", ""),
    }
    for key, path in paths.items():
        problem = unsupported_scheme(path, key)
        if problem:
            raise ConfigError(key, problem.split(": ", 1)[1])

    names = BACKBONES
    _check(
        config.model.backbone in names,
        "model.backbone",
        f"unknown model {config.model.backbone!r}; known: {', '.join(names)}",
    )
    _check(config.model.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
    _check(config.model.embedding_dim > 0, "model.embedding_dim", "must be positive")
    _check(config.model.sub_centers >= 1, "model.sub_centers", "must be >= 1")
    _check(
        config.model.neck_activation in ("swish", "prelu", "none"),
        "model.neck_activation",
        "must be 'swish', 'prelu' or 'none'",
    )
    _check(0.0 <= config.model.bn_momentum < 1.0, "model.bn_momentum", "must be in [0, 1)")
    _check(0.0 <= config.model.drop_path_rate < 1.0, "model.drop_path_rate", "must be in [0, 1)")
    _check(
        config.model.get("conv_impl", "auto") in ("auto", "lax"),
        "model.conv_impl",
        "must be 'auto' or 'lax'",
    )
    init_from = config.model.get("init_from", "")
    if init_from:
        _check(
            _exists(os.path.join(init_from, "import.json")),
            "model.init_from",
            f"{init_from!r} is not a folder written by python -m gld_jax.models.import_weights",
        )
    _check(config.loss.scale > 0, "loss.scale", "must be positive")
    _check(
        config.loss.margin_min >= 0 and config.loss.margin_range >= 0,
        "loss.margin_min",
        "margins must be non-negative",
    )
    _check(config.optimizer.name in OPTIMIZERS, "optimizer.name", f"must be one of {OPTIMIZERS}")
    _check(
        config.eval.prediction in PREDICTIONS, "eval.prediction", f"must be one of {PREDICTIONS}"
    )
    _check(config.eval.batch_size > 0, "eval.batch_size", "must be positive")
    _check(
        config.eval.validation in VALIDATIONS,
        "eval.validation",
        f"must be one of {VALIDATIONS}",
    )
    _check(config.eval.index in INDEX_SETS, "eval.index", f"must be one of {INDEX_SETS}")
    _check(config.eval.head_top_k >= 1, "eval.head_top_k", "must be >= 1")
    _check(
        config.eval.sim_power >= 0 and config.eval.head_power >= 0,
        "eval.sim_power",
        "the blend's exponents must be >= 0",
    )
    _check(
        config.eval.nonlandmark_usage in USAGES,
        "eval.nonlandmark_usage",
        f"must be one of {USAGES}",
    )
    _check(
        config.eval.prediction not in ("nonlandmark_rerank", "blend_rerank")
        or bool(config.eval.nonlandmark_usage),
        "eval.prediction",
        f"{config.eval.prediction} needs a non-landmark set: set eval.nonlandmark_usage",
    )
    _check(
        config.eval.get("embedding_dtype", "float32") in ("float16", "float32"),
        "eval.embedding_dtype",
        "must be 'float16' or 'float32'",
    )

    if check_data and not config.synthetic.enabled:
        _check(
            bool(config.data_dir) or bool(config.tfrecord_dir),
            "data_dir",
            "set data_dir (a GLDv2 folder) or tfrecord_dir, or enable synthetic data",
        )
        if config.tfrecord_dir:
            manifest = os.path.join(config.tfrecord_dir, "manifest.json")
            _check(
                _exists(manifest), "tfrecord_dir", f"no manifest.json in {config.tfrecord_dir!r}"
            )
        else:
            _check(
                _exists(config.data_dir),
                "data_dir",
                f"data directory {config.data_dir!r} does not exist",
            )

    _check(
        config.data_sharding in ("process", "global"),
        "data_sharding",
        "must be 'process' or 'global'",
    )
    _check(
        config.input.sampling in ("uniform", "sqrt", "balanced"),
        "input.sampling",
        "must be 'uniform', 'sqrt' or 'balanced'",
    )
    _check(
        config.eval.search in SEARCHES,
        "eval.search",
        f"must be one of {', '.join(repr(a) for a in SEARCHES)}",
    )
    _check(
        config.eval.search_dtype in ("float32", "bfloat16"),
        "eval.search_dtype",
        "must be 'float32' or 'bfloat16'",
    )
    _check(0 < config.eval.search_recall <= 1, "eval.search_recall", "must be in (0, 1]")
    _check(
        config.input.augment_on in AUGMENT_ON,
        "input.augment_on",
        f"must be one of {', '.join(repr(a) for a in AUGMENT_ON)}",
    )
    _check(0 < config.target.mfu <= 1, "target.mfu", "must be in (0, 1]")
    _check(config.target.num_devices >= 0, "target.num_devices", "must be >= 0")
    _check(config.folds >= 2, "folds", "must be >= 2")
    _check(-1 <= config.fold < config.folds, "fold", f"must be -1 or in [0, {config.folds})")
    _check(config.val_every >= 1, "val_every", "must be >= 1")
    _check(config.train.watchdog_s >= 0, "train.watchdog_s", "must be >= 0 (0: automatic)")
    validate_distributed(config)

    try:
        data, model = resolve_mesh_shape(config.mesh.data, config.mesh.model, num_devices)
    except ValueError as e:
        raise ConfigError("mesh", str(e)) from None
    devices = data * model  # the batch is split over every device (train.mesh)

    stages = list(config.stages)
    _check(len(stages) > 0, "stages", "at least one stage is needed")
    previous_label_set = None
    for i, s in enumerate(stages):
        key = f"stages[{i}]"
        _check(
            s.image_size >= MIN_IMAGE_SIZE,
            f"{key}.image_size",
            f"must be >= {MIN_IMAGE_SIZE} pixels (got {s.image_size})",
        )
        _check(s.epochs > 0, f"{key}.epochs", "must be positive")
        _check(s.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(
            s.batch_size % devices == 0,
            f"{key}.batch_size",
            f"{s.batch_size} is not divisible by the {devices} devices of the mesh",
        )
        _check(
            s.batch_size % process_count == 0,
            f"{key}.batch_size",
            f"{s.batch_size} is not divisible by the {process_count} processes",
        )
        accumulate = stage_accumulate_steps(config, i)
        _check(
            s.get("accumulate_steps", 0) >= 0 and accumulate >= 1,
            f"{key}.accumulate_steps",
            "must be >= 1, or 0 for optimizer.accumulate_steps (itself >= 1)",
        )
        _check(
            s.batch_size % (devices * accumulate) == 0,
            f"{key}.batch_size",
            f"{s.batch_size} does not split into {accumulate} micro-batches over {devices} devices",
        )
        _check(s.learning_rate > 0, f"{key}.learning_rate", "must be positive")
        _check(s.label_set in LABEL_SETS, f"{key}.label_set", f"must be one of {LABEL_SETS}")
        _check(0 <= s.warmup_epochs <= s.epochs, f"{key}.warmup_epochs", "must be in [0, epochs]")
        if previous_label_set is not None and s.label_set != previous_label_set:
            _check(
                s.new_head,
                f"{key}.new_head",
                "must be true when the label set changes (the classes differ)",
            )
        if i == 0:
            _check(s.new_head, f"{key}.new_head", "the first stage always starts a new head")
        previous_label_set = s.label_set


def validate_distributed(config: ml_collections.ConfigDict) -> None:
    """The multi-host timeouts; checked before the hosts connect (main), since
    they are handed to jax.distributed.initialize."""
    d = config.distributed
    # Below 2 s a busy host (a long compile, a TensorFlow import) can miss its beats.
    _check(d.heartbeat_timeout_s >= 2, "distributed.heartbeat_timeout_s", "must be >= 2 seconds")
    for key in ("initialization_timeout_s", "shutdown_timeout_s", "data_wait_s"):
        _check(d[key] > 0, f"distributed.{key}", "must be positive (seconds)")


def _exists(path: str) -> bool:
    if "://" in path:  # gs:// and friends: leave it to the reader (TF gfile)
        return True
    return os.path.exists(path)

"""Config schema (`base_config`, `stage`) and validation (`validate_config`)."""

from gld_jax.config.defaults import base_config, stage, stage_accumulate_steps
from gld_jax.config.validate import ConfigError, validate_config, validate_distributed

__all__ = [
    "ConfigError",
    "base_config",
    "stage",
    "stage_accumulate_steps",
    "validate_config",
    "validate_distributed",
]

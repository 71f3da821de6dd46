"""Config schema (`base_config`, `stage`) and validation (`validate_config`)."""

from gld_jax.config.defaults import base_config, stage
from gld_jax.config.validate import ConfigError, validate_config

__all__ = ["ConfigError", "base_config", "stage", "validate_config"]

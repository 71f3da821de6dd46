"""gld-jax backbone names -> the timm models of the same architecture (the
peers of the train-step benchmarks); importable without torch or jax."""

TIMM_NAMES = {f"efficientnet_b{i}": f"tf_efficientnet_b{i}" for i in range(8)}
TIMM_NAMES.update(resnest50="resnest50d", resnest101="resnest101e", resnest200="resnest200e")

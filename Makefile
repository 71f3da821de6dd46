# The two commands of the README: `make demo` and `make test`. Both build (or
# repair) the virtualenv from the pinned requirements first: scripts/venv.sh
# picks a supported Python (PYTHON=... to choose one) and rebuilds a .venv made
# by another version or left half-installed.
PYTHON ?=
# GPU=1: the runtime set with JAX's CUDA plugin (requirements-gpu.txt).
GPU ?=
RUNTIME_REQ := requirements$(if $(GPU),-gpu,).txt
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
ENSURE_VENV := PYTHON="$(PYTHON)" sh scripts/venv.sh

.PHONY: demo test lint venv venv-gpu venv-dev clean-venv

venv:
	@$(ENSURE_VENV) $(RUNTIME_REQ)

venv-gpu:
	@$(ENSURE_VENV) requirements-gpu.txt

venv-dev:
	@$(ENSURE_VENV) requirements-dev.txt

demo: venv
	$(PY) -m gld_jax.main --config configs/demo.py --workdir $(WORKDIR)

# Two pytest workers (pytest-xdist), a test file each at a time: the suite's
# long tests are single-threaded compiles, so two cores run two of them. Files
# go out in collection order (tests/conftest.py puts the longest first), not
# xdist's default of the files with the most tests first.
TEST_WORKERS ?= 2

test: venv-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)

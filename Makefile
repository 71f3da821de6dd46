# The two commands of the README: `make demo` and `make test`. Both build (or
# repair) the virtualenv from the pinned requirements first: scripts/venv.sh
# picks a supported Python (PYTHON=... to choose one) and rebuilds a .venv made
# by another version or left half-installed.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
ENSURE_VENV := PYTHON="$(PYTHON)" sh scripts/venv.sh

.PHONY: demo test lint venv venv-dev clean-venv

venv:
	@$(ENSURE_VENV) requirements.txt

venv-dev:
	@$(ENSURE_VENV) requirements-dev.txt

demo: venv
	$(PY) -m gld_jax.main --config configs/demo.py --workdir $(WORKDIR)

test: venv-dev
	$(PY) -m pytest -q

lint: venv-dev
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)

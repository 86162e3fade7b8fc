# Two entry points (see README): `make demo` (main job) and `make test` (whole suite).
# Both create .venv on first use and reuse it afterwards (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nepa-installed

.PHONY: env demo test lint system-deps clean-env

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,seg]" --config-settings editable_mode=compat
	touch $(STAMP)

env: $(STAMP)

# Debian packages the SLURM tests need (real slurmctld/slurmd/slurmdbd, munge, MariaDB).
system-deps:
	bash .ci/install-system-deps

# `python -m` runs the code of this directory (the current one comes first on sys.path), also
# when VENV is shared with another checkout. DEMO_ARGS=--quick: every step at a tiny scale.
demo: env
	$(PY) -m nepactl demo $(DEMO_ARGS)

test: env system-deps
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check nepa nepactl tests benchmarks
	$(VENV)/bin/lint-imports

clean-env:
	rm -rf $(VENV)

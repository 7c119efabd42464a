# Everything installs itself: a virtualenv in .venv with the package in editable mode and its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo dev lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m example_project.demo

dev: $(STAMP)
	mkdir -p .dagster_home
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: $(STAMP)
	$(VENV)/bin/ruff check datapipe_dagster example_project tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.bench_engine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .dagster_home .demo

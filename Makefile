# Everything installs itself: a virtualenv in .venv with the package in editable mode and its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser test demo dev api simulate lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the browser test (Debian's chromium + chromium-driver; a no-op when present).
browser:
	bash .ci/install-browser.sh

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m example_project.demo

dev: $(STAMP)
	mkdir -p .dagster_home
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

api: $(STAMP)
	$(PY) -m example_project.api --port 8000

simulate: $(STAMP)
	$(PY) -m example_project.simulate --events 10000 --users 500 --rate 200/s

lint: $(STAMP)
	$(VENV)/bin/ruff check datapipe_dagster example_project tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.bench_engine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .dagster_home .demo

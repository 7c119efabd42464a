# Everything installs itself: a virtualenv in .venv with the package in editable mode and its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser test test-fast demo dev api simulate workers lint bench bench-scale clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the browser test (Debian's chromium + chromium-driver; a no-op when present).
browser:
	bash .ci/install-browser.sh

# PYTEST_ARGS passes more pytest arguments, e.g. make test PYTEST_ARGS="-k partition -x".
# TEST_WORKERS pytest-xdist processes take tests as they free up (worksteal); 0 runs them in one. Four on
# two cores, because the slowest tests mostly wait on subprocesses (dagster dev, dg, Celery workers, kills):
# 8:13 against 10:28 for two processes and whole files per process, same machine and load.
TEST_WORKERS ?= 4
test: $(STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The quick loop: engine and Dagster unit tests on SQLite, on FAST_WORKERS processes (pytest-xdist).
# Left out (`make test` runs them): tests marked slow (a live `dagster dev`, a browser, the whole demo),
# the PostgreSQL variants, the example/README/docs checks that start Python processes, the reliability
# suite (kills, faults, interleavings, the bad-input matrix) and the `dg` / Celery subprocess tests.
FAST_WORKERS ?= 2
FAST_SKIP := tests/test_readme.py tests/test_docs_links.py tests/test_example_project.py tests/test_dev_seed.py tests/test_seed_notebook.py \
	tests/reliability tests/test_component.py tests/test_scale_celery.py
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -k "not postgres" -n $(FAST_WORKERS) $(addprefix --ignore=,$(FAST_SKIP)) $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m example_project.demo

# `make dev` first seeds .dagster_home (its dagster.yaml copied from example_project/ when missing) and the
# example's data (once: an instance with runs is left alone), then serves them with the sensors on, ticking every 5 s. Override either, e.g.
# make dev DATAPIPE_EXAMPLE_SENSORS_RUNNING=0 DATAPIPE_EXAMPLE_SENSOR_INTERVAL=30
DATAPIPE_EXAMPLE_SENSORS_RUNNING ?= 1
DATAPIPE_EXAMPLE_SENSOR_INTERVAL ?= 5
dev: $(STAMP)
	mkdir -p .dagster_home
	test -f .dagster_home/dagster.yaml || cp example_project/dagster.yaml .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(PY) -m example_project.demo --seed
	DAGSTER_HOME=$(CURDIR)/.dagster_home \
	DATAPIPE_EXAMPLE_SENSORS_RUNNING=$(DATAPIPE_EXAMPLE_SENSORS_RUNNING) \
	DATAPIPE_EXAMPLE_SENSOR_INTERVAL=$(DATAPIPE_EXAMPLE_SENSOR_INTERVAL) \
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

api: $(STAMP)
	$(PY) -m example_project.api --port 8000

simulate: $(STAMP)
	$(PY) -m example_project.simulate --events 10000 --users 500 --rate 200/s

# Two Dagster Celery workers for the example (README "Scaling out"): start `make dev` with
# DATAPIPE_EXAMPLE_CELERY_BROKER set to the same broker (and DATAPIPE_EXAMPLE_FAN_OUT=1 to spread range runs).
CELERY_BROKER ?= redis://127.0.0.1:6379/0
WORKERS ?= 2
workers: $(STAMP)
	mkdir -p .dagster_home
	test -f .dagster_home/dagster.yaml || cp example_project/dagster.yaml .dagster_home/dagster.yaml
	for i in $$(seq 1 $(WORKERS)); do \
	  DAGSTER_HOME=$(CURDIR)/.dagster_home DATAPIPE_EXAMPLE_CELERY_BROKER=$(CELERY_BROKER) \
	  $(VENV)/bin/celery -A dagster_celery.app -b $(CELERY_BROKER) --result-backend $(CELERY_BROKER) \
	    worker --pool=solo --prefetch-multiplier=1 -Q dagster -n w$$i@%h & \
	done; wait

lint: $(STAMP)
	$(VENV)/bin/ruff check datapipe_dagster example_project tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m benchmarks.bench_engine

# The scale benchmark (issue 11), by hand: an hour or more at 10M events. SIZES is EVENTS:USERS pairs.
SIZES ?= 1000000:100000,10000000:1000000
BACKENDS ?= sqlite,postgres
bench-scale: $(STAMP)
	$(PY) -m benchmarks.bench_engine --sizes $(SIZES) --backends $(BACKENDS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .dagster_home .demo

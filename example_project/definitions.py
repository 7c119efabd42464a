"""The Dagster code location of the example (``workspace.yaml`` loads ``defs`` from here).

``defs`` comes from the defs folder, ``example_project/defs/``: ``clicks/defs.yaml`` declares the pipeline
with ``datapipe_dagster.DatapipeComponent``, and ``clicks/user_profiles.py`` beside it holds the
user-written ingestion asset (``dg check defs`` / ``dg list defs`` from the repository root read the
same folder). Importing this module opens no connection and starts nothing: the catalog and DataStore
only *declare* where data lives. Settings come from the environment so the same module serves
``dagster dev``, the daemon, run workers and tests:

- ``DATAPIPE_EXAMPLE_DB``: the data database (SQLite path or SQLAlchemy URL), default ``.demo/example.sqlite``;
- ``DATAPIPE_EXAMPLE_PARTITIONS``: hash buckets per transform key (default 16);
- ``DATAPIPE_EXAMPLE_SENSOR_INTERVAL``: seconds between sensor ticks (default 30, Dagster's floor is 5);
- ``DATAPIPE_EXAMPLE_SENSORS_RUNNING``: ``1`` to start the sensors as running (default: off until turned on);
- ``DATAPIPE_EXAMPLE_AUTOMATION``: ``conditions`` for declarative automation conditions instead of one
  sensor per transform (default ``sensors``);
- ``DATAPIPE_EXAMPLE_FAN_OUT``: ``1`` to run each partition of a range run as its own step;
- ``DATAPIPE_EXAMPLE_MAX_PARTITIONS_PER_RUN``: split backfills and sensor requests into runs of at most N;
- ``DATAPIPE_EXAMPLE_CELERY_BROKER``: a broker URL (e.g. ``redis://127.0.0.1:6379/0``): the asset jobs run
  on Dagster's Celery executor, whose workers (``make workers``) execute the steps;
- ``DATAPIPE_EXAMPLE_EXECUTOR``: ``in_process`` runs the asset jobs' steps in the run's own process
  (default: Dagster's multiprocess executor, one process a step).

``make_definitions`` builds the same definitions in Python on a given store (the demo and tests use it).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import dagster as dg

from datapipe_dagster.dagster import build_definitions
from example_project.catalog import ExampleStore, open_store
from example_project.defs.clicks.user_profiles import GROUP, ProfilesConfig, user_profiles
from example_project.pipeline import make_pipeline

__all__ = ["GROUP", "ProfilesConfig", "datapipe_target", "defs", "make_definitions", "user_profiles"]


def make_definitions(
    store: ExampleStore,
    *,
    partitions: int = 16,
    sensor_interval_seconds: int = 30,
    sensors_running: bool = False,
) -> dg.Definitions:
    """The example's Definitions on ``store``: tables, transforms, sensors, checks, and the ingestion asset
    (what ``defs/clicks/defs.yaml`` declares, for a store chosen in Python)."""
    return build_definitions(
        store.catalog,
        make_pipeline(),
        store.ds,
        partitions=partitions,
        group_name=GROUP,
        sensor_interval_seconds=sensor_interval_seconds,
        sensors_running=sensors_running,
        assets=[user_profiles],
    )


def datapipe_target() -> SimpleNamespace:
    """The example's catalog, pipeline and DataStore for the ``datapipe-dagster`` command line:
    ``datapipe-dagster status example_project.definitions:datapipe_target``."""
    store = open_store()
    return SimpleNamespace(catalog=store.catalog, pipeline=make_pipeline(), datastore=store.ds)


def _with_executor(defs: dg.Definitions) -> dg.Definitions:
    """``defs`` on the Celery executor when ``DATAPIPE_EXAMPLE_CELERY_BROKER`` is set, on the in-process
    executor when ``DATAPIPE_EXAMPLE_EXECUTOR=in_process``, else unchanged (Dagster's default)."""
    broker = os.environ.get("DATAPIPE_EXAMPLE_CELERY_BROKER")
    kind = os.environ.get("DATAPIPE_EXAMPLE_EXECUTOR", "").strip()
    if kind not in ("", "in_process", "multiprocess"):
        raise ValueError(
            f"DATAPIPE_EXAMPLE_EXECUTOR={kind!r}: expected 'in_process' or 'multiprocess' "
            "(DATAPIPE_EXAMPLE_CELERY_BROKER selects Celery)"
        )
    if broker and kind:
        raise ValueError("set DATAPIPE_EXAMPLE_CELERY_BROKER or DATAPIPE_EXAMPLE_EXECUTOR, not both")
    if broker:
        from dagster_celery import celery_executor  # the `celery` extra

        executor = celery_executor.configured({"broker": broker, "backend": broker}, name="celery_example")
    elif kind == "in_process":
        executor = dg.in_process_executor
    else:
        return defs
    return dg.Definitions.merge(defs, dg.Definitions(executor=executor))


defs = _with_executor(dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent))

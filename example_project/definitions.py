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
- ``DATAPIPE_EXAMPLE_SENSORS_RUNNING``: ``1`` to start the sensors as running (default: off until turned on).

``make_definitions`` builds the same definitions in Python on a given store (the demo and tests use it).
"""

from __future__ import annotations

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


defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)

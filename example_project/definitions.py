"""The Dagster code location of the example (``workspace.yaml`` loads ``defs`` from here).

Importing this module opens no connection and starts nothing: the catalog and DataStore only *declare*
where data lives, and ``build_definitions`` computes specs. Settings come from the environment so the
same module serves ``dagster dev``, the daemon, run workers and tests:

- ``DATAPIPE_EXAMPLE_DB``: the data database (SQLite path or SQLAlchemy URL), default ``.demo/example.sqlite``;
- ``DATAPIPE_EXAMPLE_PARTITIONS``: hash buckets per transform key (default 16);
- ``DATAPIPE_EXAMPLE_SENSOR_INTERVAL``: seconds between sensor ticks (default 30, Dagster's floor is 5);
- ``DATAPIPE_EXAMPLE_SENSORS_RUNNING``: ``1`` to start the sensors as running (default: off until turned on).

Besides the pipeline, the location holds ``user_profiles``: a plain Dagster ``@asset`` (an ingestion from a
"CRM export") whose DataFrame goes through the datapipe IO manager, so the table is row-tracked and
``user_report`` recomputes only the users whose profile changed.
"""

# No ``from __future__ import annotations``: Dagster resolves the ``config: ProfilesConfig`` annotation
# at decoration time and cannot read it as a string.
import os
from types import SimpleNamespace

import dagster as dg
import pandas as pd

from datapipe_dagster.dagster import DEFAULT_IO_MANAGER_KEY, build_definitions
from datapipe_dagster.dagster.constants import META_REPLACE
from example_project.catalog import ExampleStore, open_store
from example_project.generate import make_profiles
from example_project.pipeline import make_pipeline

GROUP = "clicks"


class ProfilesConfig(dg.Config):
    """Which CRM export to ingest: the number of users, and a version (a new version upgrades a few plans)."""

    n_users: int = 500
    version: int = 0


@dg.asset(
    key="user_profiles",
    group_name=GROUP,
    io_manager_key=DEFAULT_IO_MANAGER_KEY,
    kinds={"python"},
    metadata={META_REPLACE: True},  # the export is complete: profiles it no longer lists are deleted
    description="Ingests user profiles (a CRM export) through the datapipe IO manager: row-tracked, so "
    "user_report recomputes only users whose profile changed.",
)
def user_profiles(config: ProfilesConfig) -> pd.DataFrame:
    """The CRM export: one row per user with country and plan."""
    return make_profiles(config.n_users, version=config.version)


def make_definitions(
    store: ExampleStore,
    *,
    partitions: int = 16,
    sensor_interval_seconds: int = 30,
    sensors_running: bool = False,
) -> dg.Definitions:
    """The example's Definitions on ``store``: tables, transforms, sensors, checks, and the ingestion asset."""
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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


defs = make_definitions(
    open_store(),
    partitions=_env_int("DATAPIPE_EXAMPLE_PARTITIONS", 16),
    sensor_interval_seconds=_env_int("DATAPIPE_EXAMPLE_SENSOR_INTERVAL", 30),
    sensors_running=os.environ.get("DATAPIPE_EXAMPLE_SENSORS_RUNNING", "") in ("1", "true", "yes"),
)

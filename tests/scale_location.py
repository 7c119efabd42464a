"""A code location for the scale-out tests, importable by run workers and Celery workers.

Configured by environment (workers inherit it): ``DATAPIPE_SCALE_DB`` (the data store URL),
``DATAPIPE_SCALE_PARTITIONS``, ``DATAPIPE_SCALE_BROKER`` (set: the asset jobs run on the Celery executor
with this Redis broker), ``DATAPIPE_SCALE_MULTIPROCESS`` (set: on the multiprocess executor, a process a
step), ``DATAPIPE_SCALE_RENDEZVOUS`` (a folder: each partition step waits, at most 60 s, until two
processes have started one, so a test can show steps running side by side) and
``DATAPIPE_SCALE_CRASH_ONCE`` (a file path: the first process to transform user 7 creates it and dies
at once, as a worker killed mid-step).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd

from datapipe_dagster import DataStore, DBConn
from datapipe_dagster.dagster import build_definitions
from tests.test_dagster_support import make_catalog, seed_pipeline

KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]


def clicks_ip_meeting(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed transform; with a rendezvous folder, first wait for a second process to arrive."""
    crash = os.environ.get("DATAPIPE_SCALE_CRASH_ONCE")
    if crash and (events["user_id"] == 7).any() and not Path(crash).exists():
        Path(crash).touch()
        os._exit(3)
    where = os.environ.get("DATAPIPE_SCALE_RENDEZVOUS")
    if where:
        Path(where, str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(where).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    g = events.assign(click=(events["event_type"] == "click").astype("int64"))
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg[["user_id", "click_count"]], agg[["user_id", "ip"]]


def _executor() -> dg.ExecutorDefinition:
    broker = os.environ.get("DATAPIPE_SCALE_BROKER")
    if os.environ.get("DATAPIPE_SCALE_MULTIPROCESS"):
        return dg.multiprocess_executor.configured({"max_concurrent": 2}, name="multiprocess_scale")
    if not broker:
        # Configured, so it is not build_definitions' default and becomes the location's executor too.
        return dg.in_process_executor.configured({}, name="in_process_scale")
    from dagster_celery import celery_executor

    return celery_executor.configured({"broker": broker, "backend": broker})


def defs() -> dg.Definitions:
    dbconn = DBConn(os.environ["DATAPIPE_SCALE_DB"])
    ds = DataStore(dbconn)
    return build_definitions(
        make_catalog(dbconn),
        seed_pipeline(clicks_ip_meeting),
        ds,
        partitions=int(os.environ.get("DATAPIPE_SCALE_PARTITIONS", "16")),
        fan_out_partitions=True,
        executor=_executor(),
    )


def asset_job() -> dg.JobDefinition:
    """A job of the step's outputs on the code location's default executor (what the UI and
    ``dagster asset materialize`` use), defined by name so that ``reconstructable`` can rebuild it."""
    job = dg.define_asset_job("scale_job", selection=dg.AssetSelection.assets(*KEYS))
    return dg.Definitions.merge(defs(), dg.Definitions(jobs=[job])).resolve_job_def("scale_job")


def execute_partitions(tags: dict[str, str]) -> int:
    """Run ``asset_job`` with ``tags`` (a partition or a range) through ``execute_job`` on the instance
    in ``DAGSTER_HOME``; return the keys processed (one process per call: ``execute_job`` configures
    logging process-wide, so two runs at a time need two processes)."""
    with dg.DagsterInstance.get() as instance:
        with dg.execute_job(dg.reconstructable(asset_job), instance=instance, tags=tags, asset_selection=KEYS) as r:
            if not r.success:
                raise RuntimeError(f"run {r.run_id} with tags {tags} failed")
            mats = [m for m in r.get_asset_materialization_events() if m.asset_key == KEYS[0]]
            return sum(int(m.materialization.metadata["datapipe/keys_processed"].value) for m in mats)

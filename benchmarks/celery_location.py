"""The benchmark workload as a fanned-out code location, importable by Celery workers.

Configured by environment (workers inherit it): ``DATAPIPE_BENCH_DB`` (the data store URL),
``DATAPIPE_BENCH_PARTITIONS`` (default 16) and ``DATAPIPE_BENCH_BROKER`` (set: the asset job runs on
Dagster's Celery executor with this Redis broker; unset: in process).
"""

from __future__ import annotations

import os

import dagster as dg

from benchmarks.workload import build
from datapipe_dagster import DBConn
from datapipe_dagster.dagster import build_definitions

KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]


def _executor() -> dg.ExecutorDefinition:
    broker = os.environ.get("DATAPIPE_BENCH_BROKER")
    if not broker:
        return dg.in_process_executor.configured({}, name="in_process_bench")
    from dagster_celery import celery_executor

    return celery_executor.configured({"broker": broker, "backend": broker})


def asset_job() -> dg.JobDefinition:
    """The transform's outputs as one job on the location's executor (rebuilt by name in each worker)."""
    ds, catalog, pipeline = build(DBConn(os.environ["DATAPIPE_BENCH_DB"]), 1000)
    defs = build_definitions(
        catalog,
        pipeline,
        ds,
        partitions=int(os.environ.get("DATAPIPE_BENCH_PARTITIONS", "16")),
        fan_out_partitions=True,
        executor=_executor(),
    )
    job = dg.define_asset_job("bench_job", selection=dg.AssetSelection.assets(*KEYS))
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("bench_job")

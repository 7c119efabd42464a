"""Driving a code location in one process, the way the daemon would: tick a sensor, execute what it asks.

For tests, benchmarks and demos (no daemon, no webserver): ``tick_sensor`` evaluates a sensor once from a
cursor, ``execute_request`` runs a ``RunRequest`` with ``execute_in_process`` on the same instance, and
``SensorDriver`` keeps each sensor's cursor between ticks like the daemon's instigator state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from datapipe_dagster.errors import DatapipeError


def tick_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, cursor: str | None = None
) -> dg.SensorResult:
    """Evaluate sensor ``name`` once from ``cursor``.

    Raises:
        DatapipeError: the sensor returned something other than a ``SensorResult``.
    """
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, sensor_name=name) as ctx:
        res = defs.resolve_sensor_def(name)(ctx)
    if not isinstance(res, dg.SensorResult):
        raise DatapipeError(f"sensor {name!r} returned {type(res).__name__}, expected a SensorResult")
    return res


def materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: Iterable[dg.AssetKey],
    *,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize ``keys`` in one in-process run (a range of partitions: the range tags in ``tags``)."""
    keys = list(keys)
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    if job is None:
        raise DatapipeError(f"no job can materialize {[k.to_user_string() for k in keys]}")
    return job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=keys,
        tags=tags or {},
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def execute_request(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    req: dg.RunRequest,
    *,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Execute a sensor's run request in process, with its partition, tags and asset selection."""
    return materialize(
        defs,
        instance,
        req.asset_selection or [],
        partition_key=req.partition_key,
        tags=dict(req.tags),
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


@dataclass
class SensorDriver:
    """Ticks sensors and keeps their cursors between ticks, as the daemon's instigator state does."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    cursors: dict[str, str | None] = field(default_factory=dict)

    @property
    def sensor_names(self) -> list[str]:
        return sorted(s.name for s in self.defs.get_repository_def().sensor_defs)

    def tick(self, name: str) -> dg.SensorResult:
        """Evaluate sensor ``name`` once, advancing its cursor."""
        res = tick_sensor(self.defs, self.instance, name, self.cursors.get(name))
        if res.cursor is not None:
            self.cursors[name] = res.cursor
        # The daemon records a tick's observations (source tables that changed): so does the driver,
        # so Dagster's staleness ("Unsynced") reads the same history as under `dagster dev`.
        for ev in res.asset_events:
            self.instance.report_runless_asset_event(ev)
        return res

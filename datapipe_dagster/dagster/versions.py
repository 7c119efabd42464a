"""Data versions that make Dagster's "Unsynced" agree with the engine's stale keys.

Dagster marks a partition stale ("Unsynced") when an upstream partition it depends on has a newer
materialization or observation with a *different* data version than the one it read. So:

- a step's output partition keeps its data version when a run changed none of its rows there, and gets
  the datastore's write sequence (a number no earlier version of it can have) when rows changed;
- a source table partition is observed (data version = the write sequence of the tick) when the sensor
  of the step reading it finds stale keys there, and only then.

A downstream partition is then Unsynced exactly when rows it depends on changed after it last ran.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from datapipe_dagster.compute.result import OutputStats
from datapipe_dagster.dagster import constants as c


def changed(stats: OutputStats) -> bool:
    """Whether a run wrote (inserted, updated or deleted) any row of an output."""
    return stats.inserted + stats.updated + stats.deleted > 0


def previous_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> dg.DataVersion | None:
    """The data version of the latest materialization of ``key`` (in ``partition``), if any."""
    record = instance.get_latest_data_version_record(key, False, partition)
    if record is None:
        return None
    value = (record.event_log_entry.tags or {}).get(c.DATA_VERSION_TAG)
    return dg.DataVersion(value) if value else None


def output_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, stats: OutputStats, seq: int
) -> dg.DataVersion:
    """An output partition's data version after a run: unchanged unless the run wrote rows there."""
    if not changed(stats):
        prev = previous_version(instance, key, partition)
        if prev is not None:
            return prev
    return dg.DataVersion(str(seq))


def never_observed(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> list[dg.AssetKey]:
    """The source assets among ``keys`` that have no observation yet."""
    return [k for k in keys if instance.get_latest_data_version_record(k, True) is None]


def source_observations(keys: list[dg.AssetKey], partitions: list[str], seq: int) -> list[dg.AssetObservation]:
    """Observations of partitioned source tables in ``partitions`` as of write sequence ``seq``."""
    return [
        dg.AssetObservation(
            asset_key=key, partition=p, metadata={c.META_LAST_SEQ: seq}, tags={c.DATA_VERSION_TAG: str(seq)}
        )
        for key in keys
        for p in partitions
    ]


def latest_observation_ids(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> dict[dg.AssetKey, int]:
    """The storage id of the latest observation of each of ``keys`` (those observed at all)."""
    out = {}
    for k in keys:
        record = instance.get_latest_data_version_record(k, True)
        if record is not None:
            out[k] = record.storage_id
    return out


def observable_table(spec: dg.AssetSpec, dt: Any) -> dg.AssetsDefinition:
    """An unpartitioned source table as an observable source asset: its data version is its highest write
    sequence (what its sensor reports when it changes). Dagster reads the current data version of an
    unpartitioned source only from observable assets; the UI's "Observe" runs this function."""

    @dg.multi_observable_source_asset(specs=[spec], name=f"observe_{c.safe_name(dt.name)}")
    def _observe() -> dg.ObserveResult:
        dt.ensure_ready()
        with dt.ds.meta_dbconn.connect() as conn:
            top = dt.meta.max_seq(conn)
        return dg.ObserveResult(asset_key=spec.key, data_version=dg.DataVersion(str(top)), metadata={c.META_LAST_SEQ: top})

    return _observe


def partition_observations(
    sources: dict[str, Any], partitioned: set[str] | frozenset[str], partitions: list[str], seq: int
) -> list[dg.AssetObservation]:
    """Observations of the partitioned source tables in ``partitions`` (data version: the tick's write
    sequence).

    Made only for the partitions holding stale keys that no queued or running run will process: the
    runs requested for them start after the observation and record it as their input, so once they ran
    the partitions are in sync again. A partition the engine has nothing to do for is never observed, so
    Dagster cannot show it Unsynced while the engine says it holds no stale key.
    """
    return source_observations([key for name, (key, _) in sources.items() if name in partitioned], partitions, seq)

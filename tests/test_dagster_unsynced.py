"""Dagster's own "Unsynced" agrees with the engine's stale keys, read through Dagster's stale status
resolver (what the UI shows) on a temporary instance, with sensors ticked and runs executed in process."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from test_dagster_support import build, execute, make_events, materialize, tick

from datapipe_dagster import DBConn
from datapipe_dagster.dagster.partitions import BucketPartitions

N = 4
PARTS = BucketPartitions(N)
KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
SENSOR = "clicks_ip_stale_sensor"


def _sqlite(tmp_path) -> DBConn:
    return DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")


def unsynced(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str]:
    """The partitions of ``key`` Dagster does not show as in sync (STALE or MISSING), with their status."""
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
    )
    out = {}
    for p in PARTS.keys:
        status = resolver.get_status(key, p)
        if status != StaleStatus.FRESH:
            out[p] = status.value
    return out


def sensor_round(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, cursor: str | None
) -> str | None:
    """One tick as the daemon does it: record its observations, then execute its run requests."""
    res = tick(defs, instance, name, cursor)
    for ev in res.asset_events:
        instance.report_runless_asset_event(ev)
    for req in res.run_requests:
        execute(defs, instance, req)
    return res.cursor


def part_of(user: int) -> str:
    return PARTS.stale_partitions(pd.DataFrame({"user_id": [user]}), ["user_id"])[0]


def new_event(user: int, event_id: int) -> pd.DataFrame:
    return pd.DataFrame(
        [{"user_id": user, "event_id": event_id, "event_type": "click", "ip": f"10.0.0.{event_id}"}]
    )


def test_sensor_runs_leave_nothing_unsynced_and_one_event_marks_exactly_its_partition(tmp_path) -> None:
    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    with dg.instance_for_test() as instance:
        cursor = sensor_round(defs, instance, SENSOR, None)
        for key in KEYS:
            assert unsynced(defs, instance, key) == {}
        # The source table is partitioned like the step reading it.
        assert defs.resolve_asset_graph().get(dg.AssetKey("events")).partitions_def == PARTS.definition
        events.store_chunk(new_event(5, 500))
        res = tick(defs, instance, SENSOR, cursor)
        for ev in res.asset_events:
            instance.report_runless_asset_event(ev)
        # Before the run: exactly the partition holding the stale key is Unsynced, on every output.
        for key in KEYS:
            assert unsynced(defs, instance, key) == {part_of(5): "STALE"}
        for req in res.run_requests:
            execute(defs, instance, req)
        for key in KEYS:
            assert unsynced(defs, instance, key) == {}


def test_backfill_first_then_one_event(tmp_path) -> None:
    """A person's backfill before any sensor ran (the source never observed), then one event."""
    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    tags = {
        "dagster/asset_partition_range_start": PARTS.keys[0],
        "dagster/asset_partition_range_end": PARTS.keys[-1],
    }
    with dg.instance_for_test() as instance:
        materialize(defs, instance, KEYS, tags={**tags, "dagster/backfill": "bf1"})
        for key in KEYS:
            assert unsynced(defs, instance, key) == {}
        cursor = sensor_round(defs, instance, SENSOR, None)  # nothing stale: nothing observed, no run
        for key in KEYS:
            assert unsynced(defs, instance, key) == {}
        events.store_chunk(new_event(7, 700))
        res = tick(defs, instance, SENSOR, cursor)
        for ev in res.asset_events:
            instance.report_runless_asset_event(ev)
        for key in KEYS:
            assert unsynced(defs, instance, key) == {part_of(7): "STALE"}
        for req in res.run_requests:
            execute(defs, instance, req)
        # A second backfill recomputes every key and changes nothing: nothing becomes Unsynced.
        materialize(defs, instance, KEYS, tags={**tags, "dagster/backfill": "bf2"})
        for key in KEYS:
            assert unsynced(defs, instance, key) == {}


def report(click_count: pd.DataFrame, ip: pd.DataFrame) -> pd.DataFrame:
    df = click_count.merge(ip, on="user_id", how="outer")
    return df.assign(line=df["ip"].astype(str) + ":" + df["click_count"].astype(str))[["user_id", "line"]]


def events_copy(events: pd.DataFrame) -> pd.DataFrame:
    return events[["user_id", "event_id", "event_type"]]


def _location(tmp_path, extra: str, **kw):
    """The seed location plus a second step: ``report`` (keyed by user_id too, reading clicks_ip's
    outputs) or ``copy`` (keyed by user_id and event_id, reading events: events is then unpartitioned)."""
    import sqlalchemy as sa
    from test_dagster_support import make_catalog, seed_pipeline

    from datapipe_dagster import BatchTransform, DataStore, Pipeline, Table, TableStoreDB
    from datapipe_dagster.dagster import build_definitions

    dbconn = _sqlite(tmp_path)
    ds = DataStore(dbconn)
    catalog = make_catalog(dbconn)
    if extra == "report":
        cols = [sa.Column("user_id", sa.Integer, primary_key=True), sa.Column("line", sa.String)]
        step = BatchTransform(report, ["click_count", "ip"], ["report"])
    else:
        cols = [
            sa.Column("user_id", sa.Integer, primary_key=True),
            sa.Column("event_id", sa.Integer, primary_key=True),
            sa.Column("event_type", sa.String),
        ]
        step = BatchTransform(events_copy, ["events"], ["copy"])
    catalog.add_datatable(extra, Table(TableStoreDB(extra, dbconn, cols)))
    pipeline = Pipeline([*seed_pipeline().steps, step])
    return (
        ds,
        catalog,
        build_definitions(catalog, pipeline, ds, partitions=N, max_upstream_wait_seconds=0, **kw),
    )


@pytest.mark.parametrize("fan_out", [False, True], ids=["one-step", "fan-out"])
def test_downstream_partitions_follow_the_rows_their_upstream_partition_changed(
    tmp_path, fan_out: bool
) -> None:
    ds, catalog, defs = _location(tmp_path, "report", fan_out_partitions=fan_out)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    rep = dg.AssetKey("report")
    with dg.instance_for_test() as instance:
        up = sensor_round(defs, instance, SENSOR, None)
        down = sensor_round(defs, instance, "report_stale_sensor", None)
        for key in [*KEYS, rep]:
            assert unsynced(defs, instance, key) == {}
        events.store_chunk(new_event(3, 300))
        up = sensor_round(defs, instance, SENSOR, up)
        # click_count and ip changed in user 3's partition only: only there is the report Unsynced.
        assert unsynced(defs, instance, rep) == {part_of(3): "STALE"}
        down = sensor_round(defs, instance, "report_stale_sensor", down)
        assert unsynced(defs, instance, rep) == {}
        # A backfill of the upstream step (one range run over every partition) rewrites no row: its
        # partitions keep their data versions, so nothing downstream becomes Unsynced.
        tags = {
            "dagster/asset_partition_range_start": PARTS.keys[0],
            "dagster/asset_partition_range_end": PARTS.keys[-1],
        }
        materialize(defs, instance, KEYS, tags={**tags, "dagster/backfill": "bf"})
        for key in [*KEYS, rep]:
            assert unsynced(defs, instance, key) == {}
        # A range run that changes one partition: each partition carries its own data version.
        events.store_chunk(new_event(9, 900))
        materialize(defs, instance, KEYS, tags={**tags, "dagster/backfill": "bf2"})
        assert unsynced(defs, instance, rep) == {part_of(9): "STALE"}
        assert tick(defs, instance, "report_stale_sensor", down).run_requests


def test_a_source_mapped_to_every_partition_is_back_in_sync_after_the_runs(tmp_path) -> None:
    """``events`` read by steps keyed differently stays unpartitioned: one event marks every partition
    downstream (Dagster's model); the sensor then runs every partition, so all are in sync again."""
    ds, catalog, defs = _location(tmp_path, "copy")
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    node = defs.resolve_asset_graph().get(dg.AssetKey("events"))
    assert node.partitions_def is None and node.is_observable  # Dagster reads its version from observations
    cp = dg.AssetKey("copy")
    with dg.instance_for_test() as instance:
        a = sensor_round(defs, instance, SENSOR, None)
        b = sensor_round(defs, instance, "events_copy_stale_sensor", None)
        for key in [*KEYS, cp]:
            assert unsynced(defs, instance, key) == {}
        events.store_chunk(new_event(3, 300))
        a = sensor_round(defs, instance, SENSOR, a)
        b = sensor_round(defs, instance, "events_copy_stale_sensor", b)
        for key in [*KEYS, cp]:
            assert unsynced(defs, instance, key) == {}


def test_a_partition_a_pending_run_will_process_is_not_observed(tmp_path) -> None:
    """The run in flight may already have read the new rows: observing the partition now could leave it
    Unsynced after that run, with no stale key. The tick observes it once nothing will process it."""
    from test_dagster_truth import _in_flight

    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    with dg.instance_for_test() as instance:
        cursor = sensor_round(defs, instance, SENSOR, None)
        events.store_chunk(pd.concat([new_event(5, 500), new_event(6, 600)]))
        busy = part_of(5)
        run_id = _in_flight(instance, defs, KEYS, **{"dagster/partition": busy})
        res = tick(defs, instance, SENSOR, cursor)
        observed = {ev.partition for ev in res.asset_events}
        assert busy not in observed and observed == {part_of(6)} - {busy}
        instance.delete_run(run_id)
        res = tick(defs, instance, SENSOR, res.cursor)
        assert busy in {ev.partition for ev in res.asset_events}

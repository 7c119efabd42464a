"""The whole loop on real Dagster and real databases (SQLite and PostgreSQL data stores):

store events -> sensor tick -> run requests executed in process -> outputs right -> next tick idle ->
one user's event changes -> exactly one partition requested -> only that user recomputed -> the function
changes -> a backfill of every partition reparses and deletes outputs no longer produced.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pandas.testing as pdt
from test_dagster_support import (
    build,
    clicks_ip_v2,
    execute,
    expected,
    make_events,
    mat_metadata,
    materialize,
    table,
    tick,
)

from datapipe_dagster.dagster.partitions import BucketPartitions

SENSOR = "clicks_ip_stale_sensor"
CHECK = dg.AssetCheckKey(dg.AssetKey("click_count"), "clicks_ip_no_failed_keys")
N = 8


def test_full_loop(dbconn) -> None:
    ds, catalog, defs = build(dbconn, partitions=N)
    events = make_events(20)
    catalog.get_datatable(ds, "events").store_chunk(events)

    with dg.instance_for_test() as instance:
        # First tick: every partition holding a user is requested, in as few runs as ranges allow.
        res = tick(defs, instance, SENSOR, None)
        # The source table (partitioned like the step) is observed in each partition the tick requests
        # (data version = the write sequence of the tick).
        parts = BucketPartitions(N)
        want = set(parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"]))
        assert {(o.asset_key, o.partition) for o in res.asset_events} == {(dg.AssetKey("events"), p) for p in want}
        assert {o.tags["dagster/data_version"] for o in res.asset_events} == {"60"}
        requested: set[str] = set()
        for req in res.run_requests:
            assert req.tags["datapipe/mode"] == "stale"
            if req.partition_key is not None:
                requested.add(req.partition_key)
            else:
                a, b = (
                    req.tags["dagster/asset_partition_range_start"],
                    req.tags["dagster/asset_partition_range_end"],
                )
                requested |= {k for k in parts.keys if a <= k <= b}
            execute(defs, instance, req)
        assert requested == want
        cc, ip = expected(events)
        pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
        pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)

        # Nothing changed: nothing requested (twice: once after the runs' writes, once idle).
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == []
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == [] and "nothing written" in res.skip_reason.skip_message

        # One user's event changes: exactly one partition, and only that user recomputed.
        before = catalog.get_datatable(ds, "ip").get_metadata().set_index("user_id")["update_ts"]
        catalog.get_datatable(ds, "events").store_chunk(
            pd.DataFrame([{"user_id": 3, "event_id": 300, "event_type": "clack", "ip": "333.333.333.333"}])
        )
        res = tick(defs, instance, SENSOR, res.cursor)
        assert len(res.run_requests) == 1
        req = res.run_requests[0]
        assert req.partition_key == parts.stale_partitions(pd.DataFrame({"user_id": [3]}), ["user_id"])[0]
        run = execute(defs, instance, req)
        md = mat_metadata(run, "ip")
        assert len(md) == 1 and md[0]["datapipe/keys_processed"] == 1 and md[0]["datapipe/rows_updated"] == 1
        assert md[0]["datapipe/stale_keys_remaining"] == 0
        after = catalog.get_datatable(ds, "ip").get_metadata().set_index("user_id")["update_ts"]
        changed = sorted(after.index[after != before.reindex(after.index)])
        assert changed == [3]  # the overwritten event is now user 3's last written one (the seed's ip=333...)
        assert table(ds, catalog, "ip").set_index("user_id")["ip"][3] == "333.333.333.333"
        cc = table(ds, catalog, "click_count").set_index("user_id")["click_count"]
        assert cc[3] == 1  # event 300 is no longer a click
        same_run_again = tick(defs, instance, SENSOR, res.cursor)
        assert same_run_again.run_requests == []

        # The function changes: its assets' code version changes, and a backfill of all partitions reparses.
        ds2, catalog2, defs2 = build(dbconn, func=clicks_ip_v2, partitions=N, reparse_on_code_change=True)
        old_v = defs.resolve_assets_def("click_count").code_versions_by_key[dg.AssetKey("click_count")]
        new_v = defs2.resolve_assets_def("click_count").code_versions_by_key[dg.AssetKey("click_count")]
        assert old_v and new_v and old_v != new_v
        # ... the sensor of the new code location asks for it by itself
        res2 = tick(defs2, instance, SENSOR, same_run_again.cursor)
        assert len(res2.run_requests) == 1
        r = res2.run_requests[0]
        assert r.tags["datapipe/mode"] == "reparse"
        assert (
            r.tags["dagster/asset_partition_range_start"],
            r.tags["dagster/asset_partition_range_end"],
        ) == (parts.keys[0], parts.keys[-1])
        # ... and so does a person's backfill (no datapipe tag: a backfill run reparses).
        keys = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
        run = materialize(
            defs2,
            instance,
            keys,
            tags={
                "dagster/backfill": "bf1",
                "dagster/asset_partition_range_start": parts.keys[0],
                "dagster/asset_partition_range_end": parts.keys[-1],
            },
        )
        md = mat_metadata(run, "click_count")
        assert len(md) == N and {m["datapipe/mode"] for m in md} == {"reparse"}
        # Each partition's materialization carries its own counts, not the run's totals.
        assert sorted(m["datapipe/partitions"] for m in md) == parts.keys
        assert sum(m["datapipe/keys_processed"] for m in md) == 20
        assert sum(m["datapipe/rows_deleted"] for m in md) == 1
        assert instance.get_run_by_id(run.run_id).tags["datapipe/summary"].startswith(
            f"partitions {parts.keys[0]}..{parts.keys[-1]}, 20 keys"
        )
        events_now = catalog2.get_datatable(ds2, "events").get_data()
        cc2, ip2 = expected(events_now, clicks_ip_v2)
        got = table(ds2, catalog2, "click_count")
        assert 0 not in set(got["user_id"])
        pdt.assert_frame_equal(got, cc2, check_dtype=False)
        pdt.assert_frame_equal(table(ds2, catalog2, "ip"), ip2, check_dtype=False)
        # After the reparse nothing is stale.
        assert tick(defs2, instance, SENSOR, res2.cursor).run_requests == []


def test_manual_partition_run_reparses_only_that_partition(dbconn) -> None:
    ds, catalog, defs = build(dbconn, partitions=4)
    catalog.get_datatable(ds, "events").store_chunk(make_events(12))
    parts = BucketPartitions(4)
    keys = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
    with dg.instance_for_test() as instance:
        run = materialize(defs, instance, keys, partition_key=parts.keys[1])
        users = sorted(table(ds, catalog, "ip")["user_id"])
        in_part = parts.select(pd.DataFrame({"user_id": range(12)}), ["user_id"], [parts.keys[1]])
        assert users == sorted(in_part["user_id"])
        md = mat_metadata(run, "ip")
        assert md[0]["datapipe/mode"] == "reparse" and md[0]["datapipe/keys_processed"] == len(in_part)
        # Running it again recomputes every key of the partition (reparse), changing nothing.
        md = mat_metadata(materialize(defs, instance, keys, partition_key=parts.keys[1]), "ip")
        assert md[0]["datapipe/keys_processed"] == len(in_part) and md[0]["datapipe/rows_inserted"] == 0
        assert md[0]["datapipe/rows_updated"] == 0


def _boom_on_5(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if (events["user_id"] == 5).any():
        raise ValueError("user 5 is broken")
    g = events.assign(click=(events["event_type"] == "click").astype("int64"))
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg[["user_id", "click_count"]], agg[["user_id", "ip"]]


def test_failed_keys_turn_check_red_then_green(tmp_path) -> None:
    from datapipe_dagster import DBConn

    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    ds, catalog, defs = build(dbconn, func=_boom_on_5, partitions=None)
    events_dt = catalog.get_datatable(ds, "events")
    events_dt.store_chunk(make_events(10))
    with dg.instance_for_test() as instance:
        res = tick(defs, instance, SENSOR, None)
        assert len(res.run_requests) == 1 and res.run_requests[0].partition_key is None
        # Keys failed: the run ends as a failure naming the key, yet the other keys' outputs are committed.
        run = execute(defs, instance, res.run_requests[0], success=False)
        failure = run.failure_data_for_node("clicks_ip")
        assert failure is not None and "user_id=5" in failure.error.message
        assert "user 5 is broken" in failure.error.message
        evs = run.get_asset_check_evaluations()
        # Both outputs carry the check, and both are red.
        assert {e.asset_check_key for e in evs} == {
            CHECK,
            dg.AssetCheckKey(dg.AssetKey("ip"), "clicks_ip_no_failed_keys"),
        }
        assert all(not e.passed for e in evs)
        ev = next(e for e in evs if e.asset_check_key == CHECK)
        assert ev.metadata["datapipe/keys_failed"].value == 1
        assert "user 5 is broken" in ev.metadata["datapipe/first_errors"].value
        md = mat_metadata(run, "click_count")[0]
        assert md["datapipe/keys_failed"] == 1 and md["datapipe/keys_processed"] == 9
        # A failing key is not "stale": it waits for a change of its own rows or of the code.
        assert "user_id=5" in md["datapipe/first_errors"] and md["datapipe/stale_keys_remaining"] == 0
        assert sorted(table(ds, catalog, "click_count")["user_id"]) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
        # The run's own writes moved the sequence, but the failing key is not retried for that ...
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == []
        # ... nor for another user's event: only that user is processed.
        events_dt.store_chunk(pd.DataFrame([{"user_id": 2, "event_id": 299, "event_type": "click", "ip": "x"}]))
        res = tick(defs, instance, SENSOR, res.cursor)
        assert len(res.run_requests) == 1
        run = execute(defs, instance, res.run_requests[0])
        md = mat_metadata(run, "click_count")[0]
        assert md["datapipe/keys_processed"] == 1 and md["datapipe/keys_failed"] == 0
        assert all(not e.passed for e in run.get_asset_check_evaluations())  # user 5 still fails
        assert tick(defs, instance, SENSOR, res.cursor).run_requests == []
        # A new event of the failing user retries it.
        events_dt.store_chunk(pd.DataFrame([{"user_id": 5, "event_id": 599, "event_type": "click", "ip": "y"}]))
        res = tick(defs, instance, SENSOR, res.cursor)
        assert len(res.run_requests) == 1
        run = execute(defs, instance, res.run_requests[0], success=False)
        md = mat_metadata(run, "click_count")[0]
        assert md["datapipe/keys_processed"] == 0 and md["datapipe/keys_failed"] == 1
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == []

        # The fixed function: a new code version, so the sensor retries the failed key (stale mode).
        ds2, catalog2, defs2 = build(dbconn, partitions=None)
        res = tick(defs2, instance, SENSOR, res.cursor)
        assert len(res.run_requests) == 1 and res.run_requests[0].tags["datapipe/mode"] == "stale"
        assert res.run_requests[0].tags["datapipe/retry_failed"] == "true"
        run = execute(defs2, instance, res.run_requests[0])
        evs = run.get_asset_check_evaluations()
        assert len(evs) == 2 and all(e.passed for e in evs)
        assert all(e.metadata["datapipe/keys_failed"].value == 0 for e in evs)
        assert mat_metadata(run, "click_count")[0]["datapipe/keys_processed"] == 1
        assert sorted(table(ds2, catalog2, "click_count")["user_id"]) == list(range(10))


def test_failed_keys_can_leave_the_run_green(tmp_path) -> None:
    """``fail_run_on_failed_keys=False``: the run succeeds, only the checks are red."""
    from datapipe_dagster import DBConn

    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    ds, catalog, defs = build(dbconn, func=_boom_on_5, partitions=None, fail_run_on_failed_keys=False)
    catalog.get_datatable(ds, "events").store_chunk(make_events(10))
    with dg.instance_for_test() as instance:
        (req,) = tick(defs, instance, SENSOR, None).run_requests
        run = execute(defs, instance, req)
        assert all(not e.passed for e in run.get_asset_check_evaluations())


def test_loop_on_postgres_dagster_instance(pg_database, pg_schema_conn) -> None:
    """Dagster's own storage on PostgreSQL (dagster-postgres; the URL uses the psycopg2 driver)."""
    ds, catalog, defs = build(pg_schema_conn, partitions=N)
    catalog.get_datatable(ds, "events").store_chunk(make_events(6))
    assert pg_database.startswith("postgresql+psycopg2://")
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": pg_database}}}) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        res = tick(defs, instance, SENSOR, None)
        for req in res.run_requests:
            execute(defs, instance, req)
        assert tick(defs, instance, SENSOR, res.cursor).run_requests == []
        cc, _ = expected(make_events(6))
        pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
        # The materializations and the check live in PostgreSQL.
        rec = instance.get_latest_materialization_event(dg.AssetKey("click_count"))
        assert rec is not None and rec.asset_materialization.metadata["datapipe/mode"].value == "stale"
        assert len(instance.get_materialized_partitions(dg.AssetKey("ip"))) >= 1


def test_partition_with_a_pending_sensor_run_is_deferred(tmp_path) -> None:
    """A partition whose sensor run is queued or running is not requested again until that run is done."""
    from datapipe_dagster import DBConn

    ds, catalog, defs = build(DBConn(f"sqlite:///{tmp_path / 's.sqlite'}"), partitions=N)
    events = make_events(20)
    catalog.get_datatable(ds, "events").store_chunk(events)
    parts = BucketPartitions(N)
    stale = parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"])
    busy = stale[len(stale) // 2]
    with dg.instance_for_test() as instance:
        pending = dg.DagsterRun(
            job_name="__ASSET_JOB",
            status=dg.DagsterRunStatus.STARTED,
            tags={"datapipe/step": "clicks_ip", "dagster/partition": busy, "datapipe/mode": "stale"},
        )
        instance.add_run(pending)
        res = tick(defs, instance, SENSOR, None)
        covered = set()
        for req in res.run_requests:
            a = req.partition_key or req.tags["dagster/asset_partition_range_start"]
            b = req.partition_key or req.tags["dagster/asset_partition_range_end"]
            covered |= {k for k in parts.keys if a <= k <= b}
            execute(defs, instance, req)
        assert covered == set(stale) - {busy}
        # Still pending: nothing new is requested, and the cursor keeps looking.
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == [] and "wait for a pending run" in res.skip_reason.skip_message
        instance.delete_run(pending.run_id)  # the run went away without processing its keys
        res = tick(defs, instance, SENSOR, res.cursor)
        assert [r.partition_key for r in res.run_requests] == [busy]
        execute(defs, instance, res.run_requests[0])
        assert tick(defs, instance, SENSOR, res.cursor).run_requests == []
    cc, _ = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)

"""What Dagster shows must be exact: run modes, per-partition results of range runs, failing keys named
with their partitions (real Dagster: temporary instances, sensors ticked with ``build_sensor_context``,
runs executed in process)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
from test_dagster_support import build, clicks_ip, execute, make_events, mat_metadata, materialize, tick

from datapipe_dagster import DBConn
from datapipe_dagster.dagster.assets import run_mode
from datapipe_dagster.dagster.partitions import BucketPartitions

SENSOR = "clicks_ip_stale_sensor"
N = 4
KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]


def _sqlite(tmp_path) -> DBConn:
    return DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")


def _boom_on_5(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if (events["user_id"] == 5).any():
        raise ValueError("user 5 is broken")
    return clicks_ip(events)


def _range_tags(parts: BucketPartitions, **extra: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": parts.keys[0],
        "dagster/asset_partition_range_end": parts.keys[-1],
        **extra,
    }


def test_run_mode_reparses_only_for_people_and_backfills() -> None:
    assert run_mode({}) == "reparse"  # a materialization from the UI or the CLI
    assert run_mode({"dagster/backfill": "abc"}) == "reparse"
    assert run_mode({"datapipe/mode": "stale", "dagster/backfill": "abc"}) == "stale"
    assert run_mode({"datapipe/mode": "reparse", "dagster/sensor_name": "s"}) == "reparse"
    assert run_mode({"dagster/sensor_name": "someone_elses_sensor"}) == "stale"
    assert run_mode({"dagster/schedule_name": "nightly"}) == "stale"
    assert run_mode({"dagster/from_automation_condition": "true"}) == "stale"
    # A backfill launched by declarative automation is automation, not a person.
    assert run_mode({"dagster/backfill": "b", "dagster/from_automation_condition": "true"}) == "stale"


def test_scheduled_run_without_mode_tag_processes_stale_keys_only(tmp_path) -> None:
    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(make_events(12))
    parts = BucketPartitions(N)
    with dg.instance_for_test() as instance:
        materialize(defs, instance, KEYS, tags=_range_tags(parts))  # a person's backfill: every key
        events.store_chunk(pd.DataFrame([{"user_id": 3, "event_id": 399, "event_type": "click", "ip": "z"}]))
        run = materialize(defs, instance, KEYS, tags=_range_tags(parts, **{"dagster/schedule_name": "nightly"}))
        md = mat_metadata(run, "click_count")
        assert {m["datapipe/mode"] for m in md} == {"stale"}
        assert sum(m["datapipe/keys_processed"] for m in md) == 1
        # The same run as a person's materialization reparses every key.
        run = materialize(defs, instance, KEYS, tags=_range_tags(parts))
        assert sum(m["datapipe/keys_processed"] for m in mat_metadata(run, "click_count")) == 12


def test_range_run_materializations_carry_their_own_partition(tmp_path) -> None:
    ds, catalog, defs = build(_sqlite(tmp_path), func=_boom_on_5, partitions=N)
    events = make_events(12)
    catalog.get_datatable(ds, "events").store_chunk(events)
    parts = BucketPartitions(N)
    users = events[["user_id"]].drop_duplicates()
    part_of = dict(zip(users["user_id"], parts.buckets(users, ["user_id"]), strict=True))
    with dg.instance_for_test() as instance:
        run = materialize(defs, instance, KEYS, tags=_range_tags(parts), success=False)
        for asset in ("click_count", "ip"):
            md = {m["datapipe/partitions"]: m for m in mat_metadata(run, asset)}
            assert sorted(md) == parts.keys
            for p in parts.keys:
                mine = [u for u, q in part_of.items() if q == p]
                m = md[p]
                assert m["datapipe/keys_processed"] == len([u for u in mine if u != 5])
                assert m["datapipe/rows_read"] == 3 * m["datapipe/keys_processed"]
                assert m["datapipe/rows_inserted"] == len([u for u in mine if u != 5])
                assert m["datapipe/keys_failed"] == (1 if 5 in mine else 0)
                if 5 in mine:
                    assert f"user_id=5` (partition {p})" in m["datapipe/first_errors"]
                else:
                    assert "datapipe/first_errors" not in m
                if "datapipe/preview" in m:
                    assert {r.data["user_id"] for r in m["datapipe/preview"].records} <= set(mine)
        # The run failed, naming the key and its partition; the check of each output names it too.
        failure = run.failure_data_for_node("clicks_ip")
        assert failure is not None and f"user_id=5 (partition {part_of[5]})" in failure.error.message
        evs = run.get_asset_check_evaluations()
        assert {e.asset_check_key.asset_key for e in evs} == set(KEYS)
        for ev in evs:
            assert not ev.passed
            assert f"(partition {part_of[5]})" in ev.metadata["datapipe/first_errors"].value
            (row,) = ev.metadata["datapipe/failed_keys"].value.records
            assert row.data["partition"] == part_of[5] and row.data["user_id"] == 5
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags["datapipe/summary"] == (
            f"partitions {parts.keys[0]}..{parts.keys[-1]}, 11 keys, +22 ~0 -0, 1 keys failed"
        )


def test_sensor_run_of_one_partition_is_summarised(tmp_path) -> None:
    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    catalog.get_datatable(ds, "events").store_chunk(make_events(1))
    with dg.instance_for_test() as instance:
        (req,) = tick(defs, instance, SENSOR, None).run_requests
        run = execute(defs, instance, req)
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags["datapipe/summary"] == f"partition {req.partition_key}, 1 keys, +2 ~0 -0"


def _in_flight(instance: dg.DagsterInstance, defs: dg.Definitions, keys: list[dg.AssetKey], **tags: str) -> str:
    """A run materializing ``keys`` that has not finished (created with an execution plan, as Dagster's own
    in-progress views need, and left NOT_STARTED)."""
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    assert job is not None
    run = instance.create_run_for_job(job_def=job, asset_selection=frozenset(keys), tags=tags)
    assert run.status == dg.DagsterRunStatus.NOT_STARTED
    return run.run_id


def _covered(parts: BucketPartitions, reqs: list[dg.RunRequest]) -> set[str]:
    out: set[str] = set()
    for r in reqs:
        a = r.partition_key or r.tags["dagster/asset_partition_range_start"]
        b = r.partition_key or r.tags["dagster/asset_partition_range_end"]
        out |= set(parts.keys[parts.bucket_of(a) : parts.bucket_of(b) + 1])
    return out


def test_sensor_waits_for_a_manual_run_of_the_same_partition(tmp_path) -> None:
    """A person's run (no datapipe tags) of a partition is in flight: the sensor leaves that partition."""
    ds, catalog, defs = build(_sqlite(tmp_path), partitions=N)
    events = make_events(12)
    catalog.get_datatable(ds, "events").store_chunk(events)
    parts = BucketPartitions(N)
    stale = parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"])
    busy = stale[0]
    with dg.instance_for_test() as instance:
        run_id = _in_flight(instance, defs, KEYS, **{"dagster/partition": busy})
        res = tick(defs, instance, SENSOR, None)
        assert _covered(parts, res.run_requests) == set(stale) - {busy}
        # A backfill's range run over every partition holds them all.
        instance.delete_run(run_id)
        _in_flight(instance, defs, KEYS, **_range_tags(parts, **{"dagster/backfill": "bf"}))
        res = tick(defs, instance, SENSOR, None)
        assert res.run_requests == [] and "wait for a pending run" in res.skip_reason.skip_message


def report(click_count: pd.DataFrame, ip: pd.DataFrame) -> pd.DataFrame:
    df = click_count.merge(ip, on="user_id", how="outer")
    return df.assign(line=df["ip"].astype(str) + ":" + df["click_count"].astype(str))[["user_id", "line"]]


def _two_steps(tmp_path, **kw):
    import sqlalchemy as sa
    from test_dagster_support import make_catalog, seed_pipeline

    from datapipe_dagster import BatchTransform, DataStore, Pipeline, Table, TableStoreDB
    from datapipe_dagster.dagster import build_definitions

    dbconn = _sqlite(tmp_path)
    ds = DataStore(dbconn)
    catalog = make_catalog(dbconn)
    catalog.add_datatable(
        "report",
        Table(
            TableStoreDB(
                "report", dbconn, [sa.Column("user_id", sa.Integer, primary_key=True), sa.Column("line", sa.String)]
            )
        ),
    )
    pipeline = Pipeline([*seed_pipeline().steps, BatchTransform(report, ["click_count", "ip"], ["report"])])
    return ds, catalog, build_definitions(catalog, pipeline, ds, partitions=N, **kw)


def test_downstream_waits_for_upstream_then_runs_once(tmp_path) -> None:
    ds, catalog, defs = _two_steps(tmp_path, max_upstream_wait_seconds=60)
    catalog.get_datatable(ds, "events").store_chunk(make_events(12))
    with dg.instance_for_test() as instance:
        # The downstream step has nothing stale yet; the upstream one has every user.
        up = tick(defs, instance, SENSOR, None)
        assert up.run_requests
        down = tick(defs, instance, "report_stale_sensor", None)
        assert down.run_requests == []
        # Upstream runs are queued: the downstream step (stale now? no: its inputs are not written yet)
        # waits; after they ran, it runs every stale key exactly once.
        for req in up.run_requests:
            execute(defs, instance, req)
        # A queued upstream run (e.g. from another tick) holds the downstream step back ...
        run_id = _in_flight(instance, defs, KEYS, **{"dagster/partition": BucketPartitions(N).keys[0]})
        down = tick(defs, instance, "report_stale_sensor", down.cursor)
        assert down.run_requests == [] and "waiting for upstream" in down.skip_reason.skip_message
        instance.delete_run(run_id)
        # ... so do upstream stale keys that its sensor is requesting in the same evaluation.
        catalog.get_datatable(ds, "events").store_chunk(
            pd.DataFrame([{"user_id": 1, "event_id": 199, "event_type": "click", "ip": "q"}])
        )
        down = tick(defs, instance, "report_stale_sensor", down.cursor)
        assert down.run_requests == [] and "has stale keys" in down.skip_reason.skip_message
        up = tick(defs, instance, SENSOR, up.cursor)
        for req in up.run_requests:
            execute(defs, instance, req)
        down = tick(defs, instance, "report_stale_sensor", down.cursor)
        keys = 0
        for req in down.run_requests:
            keys += sum(m["datapipe/keys_processed"] for m in mat_metadata(execute(defs, instance, req), "report"))
        assert keys == 12
        assert tick(defs, instance, "report_stale_sensor", down.cursor).run_requests == []


def test_downstream_wait_is_bounded(tmp_path) -> None:
    from datapipe_dagster.dagster.sensors import Cursor

    ds, catalog, defs = _two_steps(tmp_path, max_upstream_wait_seconds=30)
    catalog.get_datatable(ds, "events").store_chunk(make_events(4))
    with dg.instance_for_test() as instance:
        for req in tick(defs, instance, SENSOR, None).run_requests:
            execute(defs, instance, req)
        _in_flight(instance, defs, KEYS, **{"dagster/partition": BucketPartitions(N).keys[0]})  # never ends
        down = tick(defs, instance, "report_stale_sensor", None)
        assert down.run_requests == []
        cur = Cursor.parse(down.cursor)
        assert cur.wait is not None
        # Pretend the wait started 31 s ago: the step stops waiting and runs.
        cur.wait -= 31
        down = tick(defs, instance, "report_stale_sensor", cur.dump())
        assert down.run_requests and Cursor.parse(down.cursor).wait is None


def test_sensor_runs_use_a_per_step_job_on_the_in_process_executor(tmp_path) -> None:
    _, _, defs = build(_sqlite(tmp_path), partitions=N)
    job = defs.resolve_job_def("clicks_ip_job")
    assert job.executor_def is dg.in_process_executor
    assert defs.resolve_sensor_def(SENSOR).job_name == "clicks_ip_job"
    _, _, defs = build(_sqlite(tmp_path), partitions=N, executor=dg.multiprocess_executor)
    assert defs.resolve_job_def("clicks_ip_job").executor_def is dg.multiprocess_executor


def test_automation_conditions_request_exactly_the_stale_partitions(tmp_path) -> None:
    ds, catalog, defs = build(_sqlite(tmp_path), func=_boom_on_5, partitions=N, automation="conditions")
    assert {s.name for s in defs.sensors} == {"datapipe_automation_sensor"}  # no stale sensor
    events_dt = catalog.get_datatable(ds, "events")
    parts = BucketPartitions(N)
    events = make_events(3)  # users 0, 1, 2: not every partition
    events_dt.store_chunk(events)
    want = set(parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"]))
    assert 0 < len(want) < N
    with dg.instance_for_test() as instance:
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        for key in KEYS:
            assert res.get_requested_partitions(key) == want
        # A run the automation sensor launches (its tags, no datapipe mode tag) processes stale keys only.
        for p in sorted(want):
            run = materialize(defs, instance, KEYS, partition_key=p, tags={"dagster/from_automation_condition": "true"})
            assert mat_metadata(run, "ip")[0]["datapipe/mode"] == "stale"
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor)
        assert res.total_requested == 0
        # One user's new event: exactly its partition.
        events_dt.store_chunk(pd.DataFrame([{"user_id": 2, "event_id": 299, "event_type": "click", "ip": "x"}]))
        (p2,) = parts.stale_partitions(pd.DataFrame({"user_id": [2]}), ["user_id"])
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor)
        assert res.get_requested_partitions(KEYS[0]) == {p2}
        # While a run of that partition is in progress, it is not requested again.
        _in_flight(instance, defs, KEYS, **{"dagster/partition": p2})
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor)
        assert res.total_requested == 0
        # A failing key is not requested again by unrelated writes.
        events_dt.store_chunk(pd.DataFrame([{"user_id": 5, "event_id": 599, "event_type": "click", "ip": "y"}]))
        (p5,) = parts.stale_partitions(pd.DataFrame({"user_id": [5]}), ["user_id"])
        materialize(defs, instance, KEYS, partition_key=p5, tags={"dagster/from_automation_condition": "true"}, success=False)
        events_dt.store_chunk(pd.DataFrame([{"user_id": 1, "event_id": 199, "event_type": "click", "ip": "z"}]))
        (p1,) = parts.stale_partitions(pd.DataFrame({"user_id": [1]}), ["user_id"])
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor)
        assert res.get_requested_partitions(KEYS[0]) == ({p1} - {p2})


def double(ext: pd.DataFrame) -> pd.DataFrame:
    return ext.assign(v=ext["v"] * 2)


def test_full_scans_of_an_external_table_run_in_runs_not_in_ticks(tmp_path) -> None:
    import sqlalchemy as sa

    from datapipe_dagster import (
        BatchTransform,
        Catalog,
        DataStore,
        Pipeline,
        Table,
        TableStoreDB,
        UpdateExternalTable,
    )
    from datapipe_dagster.dagster import build_definitions

    dbconn = _sqlite(tmp_path)
    cols = lambda: [sa.Column("k", sa.Integer, primary_key=True), sa.Column("v", sa.Integer)]  # noqa: E731
    ext = TableStoreDB("ext", dbconn, cols())
    catalog = Catalog({"ext": Table(ext), "doubled": Table(TableStoreDB("doubled", dbconn, cols()))})
    ds = DataStore(dbconn)
    pipeline = Pipeline([UpdateExternalTable("ext"), BatchTransform(double, ["ext"], ["doubled"], name="double")])
    defs = build_definitions(catalog, pipeline, ds, partitions=N)
    scan_sensor = next(s.name for s in defs.sensors if s.name.endswith("_scan_sensor"))
    catalog.get_datatable(ds, "ext").ensure_ready()
    with dbconn.begin_write() as conn:  # another service writes the table
        conn.execute(sa.insert(ext.data_table), [{"k": i, "v": i} for i in range(5)])
    with dg.instance_for_test() as instance:
        res = tick(defs, instance, scan_sensor, None)
        (req,) = res.run_requests
        assert req.asset_selection == [dg.AssetKey("ext")] and res.asset_events == []
        # The tick scanned nothing: the transform reading the table sees no change yet.
        assert tick(defs, instance, "double_stale_sensor", None).run_requests == []
        # While the scan run is queued, no second one is requested.
        run_id = _in_flight(instance, defs, [dg.AssetKey("ext")])
        assert tick(defs, instance, scan_sensor, None).run_requests == []
        instance.delete_run(run_id)
        run = execute(defs, instance, req)
        assert mat_metadata(run, "ext")[0]["datapipe/rows_inserted"] == 5
        reqs = tick(defs, instance, "double_stale_sensor", None).run_requests
        assert reqs
        for r in reqs:
            execute(defs, instance, r)
        got = catalog.get_datatable(ds, "doubled").get_data()
        assert dict(zip(got["k"], got["v"], strict=True)) == {i: 2 * i for i in range(5)}
    # Scans in the tick on request.
    defs = build_definitions(catalog, pipeline, ds, partitions=N, external_scans="tick")
    with dg.instance_for_test() as instance:
        res = tick(defs, instance, scan_sensor, None)
        assert res.run_requests == [] and res.skip_reason is not None  # scanned in the tick: nothing new

"""A fanned-out run finds its keys once (issue 11): the planning step asks the stale-key query, stores the
run's keys in ``<transform>__plan`` and each partition step reads its bucket from there. Pinned through
real Dagster on SQLite and PostgreSQL: the query count per 16-partition run, the plan rows cleaned (and a
crashed run's leftovers harmless, then swept), and a key that turns stale after planning picked up by the
next sensor tick."""

from __future__ import annotations

import time

import dagster as dg
import pandas as pd
import pandas.testing as pdt
import pytest
import sqlalchemy as sa
from test_dagster_support import build, expected, make_events, schemas, seed_pipeline, table

from datapipe_dagster import Catalog, DataStore, DBConn, Table, TableStoreDB
from datapipe_dagster.compute import batch_keys
from datapipe_dagster.compute.run import build_compute
from datapipe_dagster.compute.run_plan import RunPlan
from datapipe_dagster.dagster.inprocess import execute_request, tick_sensor
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.meta.plan import STALE_AFTER, PlanTable
from datapipe_dagster.store import paged

KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
ALL = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": "15"}


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the stale-key queries of every step (the one SQL entry point of ``get_stale_keys``)."""
    calls: list[int] = []
    real = batch_keys.stale_keys_query

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_keys, "stale_keys_query", counted)
    return calls


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_job_def_def_for_assets(KEYS)
    return job.execute_in_process(instance=instance, asset_selection=KEYS, tags=tags)


def _plans(dbconn: DBConn) -> PlanTable:
    """The plan table of the seed transform (the same definition the run creates)."""
    plans = PlanTable(dbconn, "clicks_ip", [sa.Column("user_id", sa.Integer, primary_key=True)])
    plans.create()
    return plans


def _processed(res: dg.ExecuteInProcessResult) -> int:
    mats = res.get_asset_materialization_events()
    return sum(m.materialization.metadata["datapipe/keys_processed"].value for m in mats if m.asset_key == KEYS[0])


@pytest.mark.parametrize("mode", ["stale", "reparse"])
def test_a_sixteen_partition_fanned_out_run_asks_for_stale_keys_twice(
    dbconn: DBConn, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Once to plan, once to report what is left; each partition step asked it again before (17)."""
    ds, catalog, defs = build(dbconn, partitions=16, fan_out_partitions=True)
    events = make_events(60)
    catalog.get_datatable(ds, "events").store_chunk(events)
    calls = _counting(monkeypatch)
    with dg.instance_for_test() as instance:
        res = _run(defs, instance, {**ALL, "datapipe/mode": mode})
        assert res.success
        assert len(calls) == 2
        assert _processed(res) == 60
    cc, ip = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)


def test_plan_rows_are_cleaned_and_a_crashed_runs_leftovers_are_harmless_then_swept(dbconn: DBConn) -> None:
    ds, catalog, defs = build(dbconn, partitions=16, fan_out_partitions=True)
    events = make_events(40)
    catalog.get_datatable(ds, "events").store_chunk(events)
    plans = _plans(dbconn)
    with dbconn.begin_write() as conn:
        # A run that crashed long ago, and one that is still running (user 999 has no input at all).
        plans.write(conn, "crashed", pd.DataFrame({"user_id": range(40)}), now=time.time() - STALE_AFTER - 60)
        plans.write(conn, "running", pd.DataFrame({"user_id": [999]}))
    with dg.instance_for_test() as instance:
        res = _run(defs, instance, {**ALL, "datapipe/mode": "stale"})
        assert res.success
        assert _processed(res) == 40  # neither plan's keys leaked into this run
        with dbconn.connect() as conn:
            assert plans.plan_ids(conn) == ["running"]  # this run's plan cleaned, the crashed one swept
    cc, ip = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)


def test_a_key_stale_after_planning_is_picked_up_by_the_next_sensor_tick(
    dbconn: DBConn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written between the planning step and the partition steps: a new user (not in the plan) and
    a rewrite of a planned user. Nothing is lost: the plan's user is processed from its newest rows, the
    new user stays stale and the next tick's run processes it."""
    ds, catalog, defs = build(dbconn, partitions=16, fan_out_partitions=True)
    store = catalog.get_datatable(ds, "events")
    events = make_events(30)
    store.store_chunk(events)
    late = pd.DataFrame(
        [
            {"user_id": 500, "event_id": 50000, "event_type": "click", "ip": "1.2.3.4"},
            {"user_id": 3, "event_id": 300, "event_type": "view", "ip": "5.6.7.8"},
        ]
    )
    real = RunPlan.make

    def make_then_write(self: RunPlan, *args, **kwargs) -> dict[str, int]:  # noqa: ANN002, ANN003
        counts = real(self, *args, **kwargs)
        store.store_chunk(late)
        return counts

    monkeypatch.setattr(RunPlan, "make", make_then_write)
    with dg.instance_for_test() as instance:
        assert _processed(_run(defs, instance, {**ALL, "datapipe/mode": "stale"})) == 30
        assert 500 not in set(table(ds, catalog, "click_count")["user_id"])
        monkeypatch.setattr(RunPlan, "make", real)
        reqs = tick_sensor(defs, instance, "clicks_ip_stale_sensor").run_requests
        assert reqs
        for req in reqs:
            assert execute_request(defs, instance, req).success
        assert not tick_sensor(defs, instance, "clicks_ip_stale_sensor").run_requests
    final = pd.concat([events, late]).drop_duplicates(["user_id", "event_id"], keep="last")
    cc, ip = expected(final)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)


def test_catalog_table_names_ending_in_plan_are_refused(tmp_path) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with pytest.raises(ConfigurationError, match="clicks_ip__plan.*run plans of a transform named 'clicks_ip'"):
        Catalog({"clicks_ip__plan": Table(TableStoreDB("clicks_ip__plan", dbconn, schemas()["ip"]))})


def test_a_first_runs_stale_keys_and_a_reparse_key_list_are_read_in_pages(
    dbconn: DBConn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120,000 keys, pages of 10,000: never one whole fetch (peak memory follows the page)."""
    ds = DataStore(dbconn)
    catalog = Catalog({n: Table(TableStoreDB(n, dbconn, cols)) for n, cols in schemas().items()})
    catalog.get_datatable(ds, "events").store_chunk(make_events(120_000, per_user=1))
    (step,) = build_compute(ds, catalog, seed_pipeline())
    pages: list[int] = []
    real = paged.page_frame

    def counted(rows, columns):  # noqa: ANN001, ANN202
        pages.append(len(rows))
        return real(rows, columns)

    monkeypatch.setattr(paged, "PAGE_ROWS", 10_000)
    monkeypatch.setattr(paged, "page_frame", counted)
    stale = step.get_stale_keys(advance_watermark=False)
    assert len(stale) == 120_000 and stale["user_id"].is_unique
    assert max(pages) <= 10_000 and sum(pages) >= 120_000 and len(pages) >= 12
    pages.clear()
    assert len(step.get_all_keys()) == 120_000
    assert max(pages) <= 10_000 and len(pages) >= 12


def test_a_plans_partition_keys_equal_the_per_partition_queries(dbconn: DBConn) -> None:
    """Without Dagster: per partition, the planned keys equal what a partition step found by itself
    (stale mode: the stale keys of its bucket; reparse: ``get_partition_keys``), same frames; ``done``
    forgets one bucket of one plan only; planning again under the same id replaces the plan."""
    from datapipe_dagster.compute.partition_runner import REPARSE, STALE
    from datapipe_dagster.compute.partitioning import Buckets

    ds = DataStore(dbconn)
    catalog = Catalog({n: Table(TableStoreDB(n, dbconn, cols)) for n, cols in schemas().items()})
    store = catalog.get_datatable(ds, "events")
    store.store_chunk(make_events(80))
    (step,) = build_compute(ds, catalog, seed_pipeline())
    step.run_full()
    store.store_chunk(make_events(120).iloc[200:].assign(ip="9.9.9.9"))  # users 66..119: 80.. new, 66..79 changed
    buckets = Buckets(16)
    plan = RunPlan(step, buckets)
    stale = step.get_stale_keys(advance_watermark=False, include_failed=False)
    assert plan.make("r1", STALE, buckets.keys) == buckets.counts(stale, ["user_id"])
    plan.make("r2", REPARSE, buckets.keys[:8])

    def same(got: pd.DataFrame, want: pd.DataFrame) -> None:
        # An empty key frame's dtype is not pinned anywhere (process_keys returns at once).
        assert len(got) == len(want)
        if len(want):
            pdt.assert_frame_equal(got.sort_values("user_id").reset_index(drop=True), want.sort_values("user_id").reset_index(drop=True))

    for b, p in enumerate(buckets.keys):
        same(plan.keys("r1", STALE, p), buckets.select(stale, ["user_id"], [p]))
        if b < 8:
            same(plan.keys("r2", REPARSE, p), step.get_partition_keys(16, [b]))
        else:
            assert len(plan.keys("r2", STALE, p)) == 0  # outside the run planned as r2
    busy = next(p for p in buckets.keys if len(plan.keys("r1", STALE, p)))
    plan.done("r1", busy)
    assert len(plan.keys("r1", STALE, busy)) == 0
    assert sum(len(plan.keys("r1", STALE, p)) for p in buckets.keys) == len(stale) - buckets.counts(stale, ["user_id"])[busy]
    plan.make("r1", STALE, buckets.keys)  # a retried planning step: the same plan, not twice the rows
    assert sum(len(plan.keys("r1", STALE, p)) for p in buckets.keys) == len(stale)
    plan.drop("r1")
    plan.drop("r2")
    with dbconn.connect() as conn:
        assert plan.table.plan_ids(conn) == []

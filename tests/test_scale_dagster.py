"""Scale-out on Dagster without a broker (issue 11): a fanned-out range run executes one step per
partition, runs are split to at most ``max_partitions_per_run`` partitions, and 16 partition runs
through ``execute_job``, two at a time beside a concurrent writer, end equal to a pandas recomputation."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

import dagster as dg
import pandas as pd
import pandas.testing as pdt
import pytest
from test_dagster_support import build, expected, make_events, table

from datapipe_dagster import DataStore, DBConn
from datapipe_dagster.dagster.inprocess import tick_sensor
from datapipe_dagster.dagster.partitions import BucketPartitions
from tests import scale_location
from tests.test_dagster_support import make_catalog

KEYS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
RANGE = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": "03"}


def _started_steps(res: dg.ExecuteInProcessResult) -> list[str]:
    return [e.step_key for e in res.all_events if e.event_type_value == "STEP_START"]


@pytest.mark.parametrize("fan_out", [True, False])
def test_a_range_run_is_one_step_per_partition_only_with_fan_out(tmp_path, fan_out: bool) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    ds, catalog, defs = build(dbconn, partitions=4, fan_out_partitions=fan_out)
    events = make_events(20)
    catalog.get_datatable(ds, "events").store_chunk(events)
    job = defs.resolve_implicit_job_def_def_for_assets(KEYS)
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(instance=instance, asset_selection=KEYS, tags=RANGE)
        steps = _started_steps(res)
        if fan_out:
            per_partition = sorted(s for s in steps if "_partition[" in s)
            assert per_partition == [f"clicks_ip.clicks_ip_partition[{p}]" for p in ("00", "01", "02", "03")]
            assert len(steps) == 6  # plus the fan-out and the fan-in steps
        else:
            assert steps == ["clicks_ip"]
        # Either way: one materialization per partition and output, and each check reported once.
        mats = res.get_asset_materialization_events()
        assert sorted((m.asset_key.path[0], m.partition) for m in mats) == sorted(
            (k, p) for k in ("click_count", "ip") for p in ("00", "01", "02", "03")
        )
        checks = [e for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert len(checks) == 2 and all(e.event_specific_data.passed for e in checks)
        keys = sum(m.materialization.metadata["datapipe/keys_processed"].value for m in mats if m.asset_key == KEYS[0])
        assert keys == 20
    cc, ip = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)


def test_fan_out_reports_failed_keys_once_and_fails_the_run(tmp_path) -> None:
    def boom_on_7(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        if (events["user_id"] == 7).any():
            raise ValueError("user 7 is broken")
        return scale_location.clicks_ip_meeting(events)

    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    ds, catalog, defs = build(dbconn, boom_on_7, partitions=4, fan_out_partitions=True)
    catalog.get_datatable(ds, "events").store_chunk(make_events(20))
    job = defs.resolve_implicit_job_def_def_for_assets(KEYS)
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(instance=instance, asset_selection=KEYS, tags=RANGE, raise_on_error=False)
        assert not res.success
        failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
        assert "user_id=7" in failure.event_specific_data.error.message
        (p7,) = BucketPartitions(4).stale_partitions(pd.DataFrame({"user_id": [7]}), ["user_id"])
        assert f"(partition {p7})" in failure.event_specific_data.error.message
        checks = [e for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert len(checks) == 2 and not any(e.event_specific_data.passed for e in checks)
    assert len(table(ds, catalog, "click_count")) == 19  # every other key committed


def test_max_partitions_per_run_splits_backfills_and_sensor_requests(tmp_path) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
    ds, catalog, defs = build(dbconn, partitions=16, max_partitions_per_run=5)
    assets_def = defs.resolve_assets_def(KEYS[0])
    assert assets_def.backfill_policy == dg.BackfillPolicy.multi_run(5)
    catalog.get_datatable(ds, "events").store_chunk(make_events(200, per_user=1))
    with dg.instance_for_test() as instance:
        res = tick_sensor(defs, instance, "clicks_ip_stale_sensor")
    sizes = []
    for req in res.run_requests:
        if req.partition_key is not None:
            sizes.append(1)
        else:
            a, b = int(req.tags["dagster/asset_partition_range_start"]), int(req.tags["dagster/asset_partition_range_end"])
            sizes.append(b - a + 1)
    assert sum(sizes) == 16 and max(sizes) <= 5


@pytest.fixture
def scale_db(backend: str, tmp_path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_database")


def test_sixteen_partition_runs_two_at_a_time_beside_a_writer(scale_db: str, tmp_path, monkeypatch) -> None:
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get():
        pass  # create the instance's storage once, before two processes open it
    monkeypatch.setenv("DATAPIPE_SCALE_DB", scale_db)
    monkeypatch.setenv("DATAPIPE_SCALE_PARTITIONS", "16")
    monkeypatch.delenv("DATAPIPE_SCALE_BROKER", raising=False)
    monkeypatch.delenv("DATAPIPE_SCALE_RENDEZVOUS", raising=False)
    dbconn = DBConn(scale_db)
    ds, catalog = DataStore(dbconn), make_catalog(dbconn)
    events = make_events(120)
    store = catalog.get_datatable(ds, "events")
    store.store_chunk(events)
    stop = threading.Event()
    writes = []

    def writer() -> None:
        # Rewrites existing events (no new users), so the 16 reparses together process each user once.
        i = 0
        while not stop.is_set() and i < 200:
            row = events.iloc[[(i * 37) % len(events)]].assign(ip=f"9.9.9.{i % 250}", event_type="click")
            store.store_chunk(row)
            writes.append(row)
            i += 1

    w = threading.Thread(target=writer)
    w.start()
    try:
        # Two runs at a time, each in its own process (as two run workers would be).
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            processed = list(pool.map(scale_location.execute_partitions, [{"dagster/partition": p} for p in BucketPartitions(16).keys]))
    finally:
        stop.set()
        w.join()
    assert sum(processed) == events["user_id"].nunique()
    # What the writer changed after a partition ran is stale; one stale-mode range run catches up.
    scale_location.execute_partitions(
        {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": "15", "datapipe/mode": "stale"}
    )
    assert writes  # the writer really ran beside the runs
    final = pd.concat([events, *writes]).drop_duplicates(["user_id", "event_id"], keep="last")
    cc, ip = expected(final)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)


def test_the_example_reads_its_scale_out_settings_from_the_environment(tmp_path) -> None:
    """DATAPIPE_EXAMPLE_FAN_OUT / _MAX_PARTITIONS_PER_RUN reach build_definitions through the component,
    and DATAPIPE_EXAMPLE_CELERY_BROKER makes the Celery executor the code location's executor."""
    import os
    import subprocess
    import sys

    probe = (
        "import dagster as dg; from example_project.definitions import defs;"
        "a = defs.resolve_assets_def(dg.AssetKey(['click_count']));"
        "print(type(a.node_def).__name__, a.backfill_policy.max_partitions_per_run, getattr(defs.executor, 'name', None))"
    )
    env = {
        **os.environ,
        "DATAPIPE_EXAMPLE_DB": str(tmp_path / "example.sqlite"),
        "DATAPIPE_EXAMPLE_FAN_OUT": "1",
        "DATAPIPE_EXAMPLE_MAX_PARTITIONS_PER_RUN": "4",
        "DATAPIPE_EXAMPLE_CELERY_BROKER": "redis://127.0.0.1:6379/0",
    }
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["GraphDefinition", "4", "celery_example"]
    for k in ("DATAPIPE_EXAMPLE_FAN_OUT", "DATAPIPE_EXAMPLE_MAX_PARTITIONS_PER_RUN", "DATAPIPE_EXAMPLE_CELERY_BROKER"):
        env.pop(k)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["OpDefinition", "None", "None"]


@pytest.mark.slow  # a process a step: about 45 s
def test_a_crashed_partition_step_re_executed_from_failure_reads_its_runs_plan(
    scale_db: str, tmp_path, monkeypatch
) -> None:
    """A worker dies in one partition step of a fanned-out run (multiprocess executor, process exit): the
    run fails, the other partitions are committed, and re-executing from failure (a new run) runs only
    that partition step and the fan-in, with the keys the first run planned; the plan is dropped after."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATAPIPE_SCALE_DB", scale_db)
    monkeypatch.setenv("DATAPIPE_SCALE_PARTITIONS", "2")  # few steps: each one is a Python process
    monkeypatch.setenv("DATAPIPE_SCALE_MULTIPROCESS", "1")
    monkeypatch.setenv("DATAPIPE_SCALE_CRASH_ONCE", str(tmp_path / "crashed"))
    for var in ("DATAPIPE_SCALE_BROKER", "DATAPIPE_SCALE_RENDEZVOUS"):
        monkeypatch.delenv(var, raising=False)
    dbconn = DBConn(scale_db)
    ds, catalog = DataStore(dbconn), make_catalog(dbconn)
    events = make_events(40)
    catalog.get_datatable(ds, "events").store_chunk(events)
    (p7,) = BucketPartitions(2).stale_partitions(pd.DataFrame({"user_id": [7]}), ["user_id"])
    in_p7 = len(BucketPartitions(2).select(events[["user_id"]].drop_duplicates(), ["user_id"], [p7]))
    recon = dg.reconstructable(scale_location.asset_job)
    range_tags = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": "01"}

    def started(r: dg.ExecuteJobResult) -> list[str]:
        return sorted(e.step_key for e in r.all_events if e.event_type_value == "STEP_START")

    with dg.DagsterInstance.get() as instance:
        with dg.execute_job(recon, instance=instance, tags=range_tags, asset_selection=KEYS) as first:
            assert not first.success and (tmp_path / "crashed").exists()
            failed = [e.step_key for e in first.all_events if e.event_type_value == "STEP_FAILURE"]
            assert failed == [f"clicks_ip.clicks_ip_partition[{p7}]"], failed
            first_id = first.run_id
        # The partitions that finished are committed; user 7's partition is not.
        assert 7 not in set(table(ds, catalog, "click_count")["user_id"])
        options = dg.ReexecutionOptions.from_failure(first_id, instance)
        with dg.execute_job(recon, instance=instance, reexecution_options=options) as again:
            assert again.success
            assert started(again) == ["clicks_ip.clicks_ip_collect", f"clicks_ip.clicks_ip_partition[{p7}]"]
            mats = [m for m in again.get_asset_materialization_events() if m.asset_key == KEYS[0]]
            by_partition = {m.partition: m.materialization.metadata["datapipe/keys_processed"].value for m in mats}
            assert by_partition[p7] == in_p7  # the first run's plan: every key of the crashed partition
    cc, ip = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)
    with dbconn.connect() as conn:
        left = conn.exec_driver_sql("SELECT COUNT(*) FROM clicks_ip__plan").scalar_one()
    assert left == 0, "the fan-in drops the plan of the run it collects"

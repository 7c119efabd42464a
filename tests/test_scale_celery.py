"""A fanned-out range run on Dagster's Celery executor with two real workers on the local Redis.

Skipped with the reason when Redis is unreachable, unless ``DATAPIPE_REQUIRE_REDIS=1`` (set by
``.ci/run``), which makes it fail. The workers are ``celery -A dagster_celery.app worker --pool=solo``
processes started here and stopped in teardown; each partition step waits (at most 60 s) until a second
process has started one, so two workers take part however the broker hands out the tasks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas.testing as pdt
import pytest
from test_dagster_support import expected, make_events, table

from datapipe_dagster import DataStore, DBConn
from tests import scale_location
from tests.test_dagster_support import make_catalog

ROOT = Path(__file__).resolve().parents[1]
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 11
REQUIRE_REDIS = os.environ.get("DATAPIPE_REQUIRE_REDIS", "") not in ("", "0", "false")
PARTS = 4


def _redis_reason() -> str | None:
    try:
        import redis

        redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=3).ping()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        return f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {type(e).__name__}: {e}"


@pytest.fixture
def celery_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    reason = _redis_reason()
    if reason:
        if REQUIRE_REDIS:
            pytest.fail(f"DATAPIPE_REQUIRE_REDIS is set and {reason}")
        pytest.skip(reason)
    import redis

    redis.Redis(REDIS_HOST, REDIS_PORT, db=REDIS_DB).flushdb()  # our own db number: no stale tasks
    home = tmp_path / "dagster_home"
    home.mkdir()
    meet = tmp_path / "rendezvous"
    meet.mkdir()
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "DATAPIPE_SCALE_DB": f"sqlite:///{tmp_path / 'store.sqlite'}",
        "DATAPIPE_SCALE_PARTITIONS": str(PARTS),
        "DATAPIPE_SCALE_BROKER": broker,
        "DATAPIPE_SCALE_RENDEZVOUS": str(meet),
    }
    celery = str(Path(sys.executable).with_name("celery"))
    workers = [
        subprocess.Popen(
            [celery, "-A", "dagster_celery.app", "-b", broker, "--result-backend", broker, "worker",
             "--pool=solo", "--prefetch-multiplier=1", "-Q", "dagster", "-n", f"{name}@%h", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )
        for name in ("w1", "w2")
    ]
    try:
        _wait_for_workers(tmp_path, ("w1", "w2"))
        yield env
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait(timeout=10)


def _wait_for_workers(tmp_path: Path, names: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if all(b"ready." in (tmp_path / f"{n}.log").read_bytes() for n in names):
            return
        time.sleep(0.2)
    logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-2000:] for n in names}
    raise AssertionError(f"celery workers did not start within 90 s: {logs}")


@pytest.mark.timeout(300)
def test_a_fanned_out_range_run_spreads_over_two_celery_workers(celery_env: dict[str, str], monkeypatch) -> None:
    for k in ("DAGSTER_HOME", "DATAPIPE_SCALE_DB", "DATAPIPE_SCALE_PARTITIONS", "DATAPIPE_SCALE_BROKER", "DATAPIPE_SCALE_RENDEZVOUS"):
        monkeypatch.setenv(k, celery_env[k])
    dbconn = DBConn(celery_env["DATAPIPE_SCALE_DB"])
    ds, catalog = DataStore(dbconn), make_catalog(dbconn)
    events = make_events(40)
    catalog.get_datatable(ds, "events").store_chunk(events)
    last = f"{PARTS - 1:02d}"
    tags = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": last}
    with dg.DagsterInstance.get() as instance:
        with dg.execute_job(
            dg.reconstructable(scale_location.asset_job), instance=instance, tags=tags, asset_selection=scale_location.KEYS
        ) as res:
            assert res.success
            workers: dict[str, str] = {}
            for e in res.all_events:
                md = getattr(e.event_specific_data, "metadata", None) or {}
                if e.event_type_value == "ENGINE_EVENT" and "Celery worker" in md and e.step_key:
                    workers[e.step_key] = str(md["Celery worker"].value)
            per_partition = {k: v for k, v in workers.items() if "_partition[" in k}
            assert len(per_partition) == PARTS, workers
            assert {v.split("@")[0] for v in per_partition.values()} == {"w1", "w2"}, workers
            mats = [m for m in res.get_asset_materialization_events() if m.asset_key == scale_location.KEYS[0]]
            assert sorted(m.partition for m in mats) == [f"{i:02d}" for i in range(PARTS)]
            assert sum(m.materialization.metadata["datapipe/keys_processed"].value for m in mats) == 40
    cc, ip = expected(events)
    pdt.assert_frame_equal(table(ds, catalog, "click_count"), cc, check_dtype=False)
    pdt.assert_frame_equal(table(ds, catalog, "ip"), ip, check_dtype=False)

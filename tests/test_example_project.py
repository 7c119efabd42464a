"""The example project as a user runs it: the pipeline, the HTTP endpoint, the simulator, the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from example_helpers import REPO, free_port, stop_process_group, wait_for
from fastapi.testclient import TestClient

from datapipe_dagster import build_compute, run_steps
from example_project.api import create_app
from example_project.catalog import DB_ENV_VAR, ExampleStore, db_url, open_store
from example_project.generate import make_events, make_profiles
from example_project.pipeline import make_pipeline
from example_project.simulate import parse_rate, simulate


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ExampleStore]:
    st = open_store(tmp_path / "example.sqlite")
    yield st
    st.dispose()


def table(st: ExampleStore, name: str) -> pd.DataFrame:
    return st.catalog.get_datatable(st.ds, name).get_data()


def expected_from_events(events: pd.DataFrame) -> dict[str, dict[str, object]]:
    """click_count and last ip per user, computed directly from the events (in write order)."""
    clicks: dict[str, int] = {}
    last_ip: dict[str, str] = {}
    for u, ev in zip(events["user_id"], events["event"], strict=True):
        clicks[u] = clicks.get(u, 0) + (ev["event_type"] == "click")
        last_ip[u] = ev["ip"]
    return {"click_count": clicks, "ip": last_ip}


def test_pipeline_derives_every_table_incrementally(store: ExampleStore) -> None:
    steps = build_compute(store.ds, store.catalog, make_pipeline())
    events = make_events(600, 40, seed=1)
    store.catalog.get_datatable(store.ds, "events").store_chunk(events)
    store.catalog.get_datatable(store.ds, "user_profiles").store_chunk(make_profiles(30))
    summary = run_steps(store.ds, steps)
    assert summary.ok, str(summary)

    exp = expected_from_events(events)
    cc = table(store, "click_count").set_index("user_id")["click_count"].to_dict()
    assert cc == exp["click_count"]
    assert table(store, "ip").set_index("user_id")["ip"].to_dict() == exp["ip"]
    user_ips = table(store, "user_ips")
    assert int(user_ips["n_events"].sum()) == 600
    stats = table(store, "ip_stats").set_index("ip")
    assert stats["n_users"].to_dict() == user_ips.groupby("ip")["user_id"].nunique().to_dict()
    report = table(store, "user_report").set_index("user_id")
    assert len(report) == 40  # 30 profiled users (those with events) + users without a profile
    assert (report.loc[[u for u in report.index if int(u[1:]) >= 30], "country"] == "unknown").all()

    # Nothing changed: nothing recomputed.
    again = run_steps(store.ds, steps)
    assert all(s.keys_processed == 0 for s in again.steps)

    # One rewritten event: only its user (and the ips it touches) recompute.
    first = events.iloc[0]
    changed = pd.DataFrame(
        {
            "user_id": [first["user_id"]],
            "event_id": [first["event_id"]],
            "event": [{"event_type": "clack", "ip": "9.9.9.9"}],
        }
    )
    store.catalog.get_datatable(store.ds, "events").store_chunk(changed)
    third = run_steps(store.ds, steps)
    assert third["parse_clicks_ip"].keys_processed == 1
    assert third["collect_user_ips"].keys_processed == 1
    assert 1 <= third["summarise_ips"].keys_processed <= 2  # 9.9.9.9, and the old ip if its count changed
    assert table(store, "ip").set_index("user_id").loc[first["user_id"], "ip"] == "9.9.9.9"
    assert table(store, "ip_stats").set_index("ip").loc["9.9.9.9", "n_users"] == 1


def test_api_update_data_is_the_seed_notebook(store: ExampleStore) -> None:
    with TestClient(create_app(store)) as client:

        def post(event_id: str, event_type: str, ip: str) -> dict[str, object]:
            r = client.post(
                "/update-data",
                json={"user_id": "1", "event_id": event_id, "event": {"event_type": event_type, "ip": ip}},
            )
            assert r.status_code == 200, r.text
            return r.json()

        assert post("1", "click", "111.111.111.111")["result"] == "ok"
        user = client.get("/users/1").json()
        assert user["click_count"] == [{"user_id": "1", "click_count": 1}]
        assert user["ip"] == [{"user_id": "1", "ip": "111.111.111.111"}]

        post("2", "click", "222.222.222.222")
        user = client.get("/users/1").json()
        assert user["click_count"][0]["click_count"] == 2
        assert user["ip"][0]["ip"] == "222.222.222.222"

        # The seed's last cell: overwriting event 1 makes it the last written event.
        res = post("1", "clack", "333.333.333.333")
        assert res["changed"] is True and res["derived"]["click_count"] == 1
        user = client.get("/users/1").json()
        assert user["click_count"][0]["click_count"] == 1
        assert user["ip"][0]["ip"] == "333.333.333.333"
        assert user["user_report"][0]["country"] == "unknown"
        assert {r["ip"] for r in user["user_ips"]} == {"222.222.222.222", "333.333.333.333"}

        # The same event again changes nothing.
        assert post("1", "clack", "333.333.333.333") == {"result": "ok", "changed": False, "derived": {}}

        assert client.get("/users/nobody").status_code == 404
        assert (
            client.post("/update-data", json={"user_id": "", "event_id": "1", "event": {}}).status_code == 422
        )
        assert client.get("/health").json()["status"] == "ok"

    events = table(store, "events")
    assert list(events["event_id"]) == ["2", "1"]  # in the order last written, as the seed printed


def test_simulator_writes_bounded_events_and_rewrites_some(store: ExampleStore) -> None:
    res = simulate(store, 300, 20, rate=3000, batch=30, rewrite=0.2, seed=3, prefix="t_", progress=False)
    assert res.events == 300
    events = table(store, "events")
    # Rewrites overwrite earlier events: fewer distinct rows than writes, every user within range.
    assert 200 <= len(events) < 300
    assert set(events["user_id"]) <= {f"u{i:04d}" for i in range(20)}
    assert res.elapsed >= 0.09  # paced: 300 events at 3000/s take at least ~0.1 s
    assert parse_rate("200/s") == 200 and parse_rate("600/min") == 10 and parse_rate("max") == 0


def test_simulator_command_line(tmp_path: Path) -> None:
    db = tmp_path / "sim.sqlite"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "example_project.simulate",
            "--events",
            "200",
            "--users",
            "10",
            "--rate",
            "2000/s",
            "--db",
            str(db),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "200 events written" in proc.stdout
    assert "events: 100%" in proc.stderr  # the progress bar
    st = open_store(db)
    try:
        assert 150 <= st.catalog.get_datatable(st.ds, "events").get_size() <= 200
    finally:
        st.dispose()


def test_db_url_from_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DB_ENV_VAR, str(tmp_path / "x" / "data.sqlite"))
    assert db_url() == f"sqlite:///{tmp_path / 'x' / 'data.sqlite'}"
    assert (tmp_path / "x").is_dir()
    monkeypatch.setenv(DB_ENV_VAR, "postgresql://u@h/db")
    assert db_url() == "postgresql://u@h/db"
    monkeypatch.delenv(DB_ENV_VAR)
    assert db_url().endswith("/.demo/example.sqlite")


def test_api_command_serves_http(tmp_path: Path) -> None:
    """``python -m example_project.api --port N`` serves the endpoint over real HTTP (uvicorn)."""
    port = free_port()
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "example_project.api",
                "--port",
                str(port),
                "--db",
                str(tmp_path / "api.sqlite"),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            "the API to answer /health",
            lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200,
            30,
            0.2,
        )
        for i, ip in enumerate(["1.1.1.1", "2.2.2.2"]):
            r = httpx.post(
                f"{base}/update-data",
                json={"user_id": "7", "event_id": str(i), "event": {"event_type": "click", "ip": ip}},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        user = httpx.get(f"{base}/users/7", timeout=10).json()
        assert user["click_count"][0]["click_count"] == 2 and user["ip"][0]["ip"] == "2.2.2.2"
    finally:
        stop_process_group(proc)
    assert proc.poll() is not None


def test_definitions_module_opens_no_connection(tmp_path: Path) -> None:
    """Dagster imports the code location in every process: the import must not touch the database."""
    db = tmp_path / "never.sqlite"
    code = (
        "import example_project.definitions as d, dagster as dg\n"
        "rd = d.defs.get_repository_def()\n"
        "print(sorted(k.to_user_string() for k in rd.asset_graph.get_all_asset_keys()))\n"
        "print(sorted(s.name for s in rd.sensor_defs))\n"
        "print(sorted(c.name for c in rd.asset_graph.asset_check_keys))\n"
        "for t in ('click_count', 'ip_stats'):\n"
        "    a = d.defs.resolve_assets_def(t)\n"
        "    print(t, a.partitions_def.get_partition_keys()[:2], a.specs_by_key[dg.AssetKey(t)].metadata['datapipe/transform_keys'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, DB_ENV_VAR: str(db), "DATAPIPE_EXAMPLE_PARTITIONS": "8"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(
        ["click_count", "events", "ip", "ip_stats", "user_ips", "user_profiles", "user_report"]
    )
    assert lines[1] == str(
        [
            "build_user_report_stale_sensor",
            "collect_user_ips_stale_sensor",
            "parse_clicks_ip_stale_sensor",
            "summarise_ips_stale_sensor",
        ]
    )
    assert "parse_clicks_ip_no_failed_keys" in lines[2] and "summarise_ips_no_failed_keys" in lines[2]
    # Two partitionings: per user (click_count) and per ip (ip_stats), 8 buckets each.
    assert lines[3] == "click_count ['00', '01'] ['user_id']"
    assert lines[4] == "ip_stats ['00', '01'] ['ip']"
    assert not db.exists()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """``make demo`` (``python -m example_project.demo``): headless and self-checking (its speed is a
    benchmark matter, not a test's: the subprocess bound only stops a hang)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "example_project.demo",
            "--dir",
            str(tmp_path / "demo"),
            "--events",
            "800",
            "--users",
            "60",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for needle in (
        "user_profiles: 60 rows inserted",
        "run for all 16 partitions",
        "click_count and ip match a direct computation over all events",
        "3 users recomputed",
        "mode=reparse: all",
        "click_count: 60 rows",
        "Summary: 800 events -> 60 users",
        "Next: `make dev` opens the Dagster UI",
    ):
        assert needle in out, f"{needle!r} not in demo output:\n{out}"
    st = open_store(tmp_path / "demo" / "example.sqlite")
    try:
        assert st.catalog.get_datatable(st.ds, "user_report").get_size() == 60
    finally:
        st.dispose()


INSTANCE_PROBE = (
    "import dagster as dg\n"
    "i = dg.DagsterInstance.get()\n"
    "print(type(i.run_storage).__name__, type(i.event_log_storage).__name__, len(i.get_run_records()))\n"
    "i.dispose()\n"
)


def test_dagster_yaml_sqlite_example_loads(tmp_path: Path) -> None:
    shutil.copy(REPO / "example_project" / "dagster.yaml", tmp_path / "dagster.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", INSTANCE_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SqliteRunStorage", "SqliteEventLogStorage", "0"]


@pytest.mark.postgres
def test_dagster_yaml_postgres_example_loads(tmp_path: Path, pg_database: str) -> None:
    """The documented PostgreSQL instance config works as written (psycopg2 scheme), on a fresh database."""
    url = sa.engine.make_url(pg_database)
    shutil.copy(REPO / "example_project" / "dagster.postgres.yaml", tmp_path / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_DB": url.database or "",
    }
    proc = subprocess.run(
        [sys.executable, "-c", INSTANCE_PROBE], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PostgresRunStorage", "PostgresEventLogStorage", "0"]


def test_example_executor_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATAPIPE_EXAMPLE_EXECUTOR picks the asset jobs' executor; a wrong value names the variable."""
    import dagster as dg

    from example_project.definitions import _with_executor

    base = dg.Definitions(assets=[dg.AssetSpec("a")])
    monkeypatch.delenv("DATAPIPE_EXAMPLE_CELERY_BROKER", raising=False)
    monkeypatch.delenv("DATAPIPE_EXAMPLE_EXECUTOR", raising=False)
    assert _with_executor(base) is base
    monkeypatch.setenv("DATAPIPE_EXAMPLE_EXECUTOR", "in_process")
    assert _with_executor(base).executor is dg.in_process_executor
    monkeypatch.setenv("DATAPIPE_EXAMPLE_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="DATAPIPE_EXAMPLE_EXECUTOR='threads'"):
        _with_executor(base)
    monkeypatch.setenv("DATAPIPE_EXAMPLE_EXECUTOR", "in_process")
    monkeypatch.setenv("DATAPIPE_EXAMPLE_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="not both"):
        _with_executor(base)

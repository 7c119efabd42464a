"""Faults: DDL that fails and is retried, first use of the tables by processes starting together, lock
waits that time out, the PostgreSQL backend terminated mid-run, a full disk under SQLite. After each
fault: a clear error naming the step or table, nothing half-written, and the rerun completes."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import Column, String, event

from datapipe_dagster import ConfigurationError, DataStore, DBConn, run_steps
from datapipe_dagster.errors import DatabaseError, LockTimeoutError, StepDatabaseError, StorageFullError
from tests.conftest import PG_URL
from tests.engine_helpers import event as ev
from tests.engine_helpers import frame, seed_setup

# ------------------------------------------------------------------------------------ helpers


def expected(events: pd.DataFrame) -> tuple[dict[str, int], dict[str, str]]:
    """click_count and ip recomputed with pandas from the events as ``get_data`` returns them."""
    parsed = events["event"].apply(json.loads)
    clicks = parsed.apply(lambda e: e["event_type"] == "click")
    counts = clicks.groupby(events["user_id"]).sum().astype(int).to_dict()
    ips = parsed.apply(lambda e: e["ip"]).groupby(events["user_id"]).last().to_dict()
    return counts, ips


def assert_consistent(ds: DataStore, catalog, steps) -> set[str]:  # noqa: ANN001
    """Data and row metadata agree for every table; outputs exist exactly for the keys processed; the
    processed keys' outputs equal a pandas recomputation of their inputs. Returns the processed keys."""
    for name in ("events", "click_count", "ip"):
        dt = catalog.get_datatable(ds, name)
        data = dt.table_store.read_rows()
        meta = dt.get_metadata()
        assert sorted(map(tuple, data[dt.primary_keys].values.tolist())) == sorted(
            map(tuple, meta[dt.primary_keys].values.tolist())
        ), f"{name}: data and metadata disagree"
    counts, ips = expected(catalog.get_datatable(ds, "events").get_data())
    cc = catalog.get_datatable(ds, "click_count").get_data()
    ip = catalog.get_datatable(ds, "ip").get_data()
    assert set(cc["user_id"]) == set(ip["user_id"]), "a chunk committed one output without the other"
    stale = set(steps[0].get_stale_keys()["user_id"])
    for user, n in zip(cc["user_id"], cc["click_count"], strict=True):
        if user not in stale:
            assert n == counts[user], f"click_count of {user} is {n}, pandas says {counts[user]}"
    for user, addr in zip(ip["user_id"], ip["ip"], strict=True):
        if user not in stale:
            assert addr == ips[user]
    return set(cc["user_id"])


def assert_complete(ds: DataStore, catalog, steps) -> None:  # noqa: ANN001
    counts, ips = expected(catalog.get_datatable(ds, "events").get_data())
    cc = catalog.get_datatable(ds, "click_count").get_data()
    ip = catalog.get_datatable(ds, "ip").get_data()
    assert dict(zip(cc["user_id"], cc["click_count"], strict=True)) == counts
    assert dict(zip(ip["user_id"], ip["ip"], strict=True)) == ips
    assert len(steps[0].get_stale_keys()) == 0


def events_for(users: range, per_user: int = 2, tag: str = "a", pad: int = 0) -> pd.DataFrame:
    rows = []
    for u in users:
        for i in range(per_user):
            row = ev(f"u{u}", f"{tag}{i}", "click" if (u + i) % 3 else "view", f"10.0.{u % 250}.{i}")
            if pad:
                row["event"] = json.dumps({**json.loads(row["event"]), "pad": "x" * pad})
            rows.append(row)
    return frame(*rows)


class Holder:
    """Another session holding a lock, as a stuck client would."""

    def __init__(self, dbconn: DBConn):
        self.dbconn = dbconn
        self._sqlite: sqlite3.Connection | None = None
        self._pg: sa.Connection | None = None
        self._engine: sa.Engine | None = None

    def hold_write_lock(self) -> None:
        """SQLite: the database write lock. PostgreSQL: the write-sequence row."""
        if self.dbconn.backend == "sqlite":
            path = sa.engine.make_url(self.dbconn.url).database
            self._sqlite = sqlite3.connect(path, isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            self._pg_begin()
            assert self._pg is not None
            self._pg.exec_driver_sql(f'UPDATE "{self.dbconn.schema}".datapipe_seq SET value = value WHERE id = 1')

    def hold_create(self, table: str) -> None:
        """A table of this name being created by another session, not yet committed (SQLite: the lock)."""
        if self.dbconn.backend == "sqlite":
            self.hold_write_lock()
            return
        self._pg_begin()
        assert self._pg is not None
        self._pg.exec_driver_sql(f'CREATE TABLE "{self.dbconn.schema}"."{table}" (x int)')

    def _pg_begin(self) -> None:
        self._engine = sa.create_engine(PG_URL)
        self._pg = self._engine.connect()
        self._pg.begin()

    def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            self._pg.rollback()
            self._pg.close()
            assert self._engine is not None
            self._engine.dispose()
            self._pg = None


def short_wait(dbconn: DBConn, seconds: float = 0.5) -> DBConn:
    """The same database with a short lock timeout."""
    return DBConn(dbconn.connstr, schema=dbconn.schema, lock_timeout=seconds)


# ------------------------------------------------------------------------------------ item 7, 13


def test_failed_create_of_transform_state_is_retried_cleanly(dbconn: DBConn) -> None:
    """A CREATE that fails (blocked by another session) leaves nothing behind; the rerun in the same
    process creates the table (it used to fail forever with "index … already exists")."""
    conn = short_wait(dbconn)
    ds, catalog, steps = seed_setup(conn, chunk_size=4, name="clicks")
    catalog.get_datatable(ds, "events").store_chunk(events_for(range(10)))
    for name in ("click_count", "ip"):
        catalog.get_datatable(ds, name).ensure_ready()
    holder = Holder(dbconn)
    holder.hold_create("clicks__transform_meta")
    try:
        with pytest.raises(StepDatabaseError) as info:
            run_steps(ds, steps)
    finally:
        holder.release()
    msg = str(info.value)
    assert "step 'clicks'" in msg and "'events'" in msg and "'click_count'" in msg and "'ip'" in msg
    assert isinstance(info.value.__cause__, LockTimeoutError)
    for attempt in range(2):  # a second failed attempt must not poison the third either
        holder.hold_create("clicks__transform_meta")
        try:
            with pytest.raises(StepDatabaseError):
                run_steps(ds, steps)
        finally:
            holder.release()
        assert attempt in (0, 1)
    assert run_steps(ds, steps).ok
    assert_complete(ds, catalog, steps)


def test_transform_state_defined_twice_in_one_process_creates_once(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    schema = [Column("user_id", String(), primary_key=True)]
    first = ds.transform_meta("clicks", schema)
    second = ds.transform_meta("clicks", schema)
    assert first.table is not second.table
    assert sorted(ix.name for ix in second.table.indexes) == [
        "ix_clicks__transform_meta_key_hash",
        "ix_clicks__transform_meta_success",
    ]


# ------------------------------------------------------------------------------------ item 8


def _first_use(url: str, schema: str | None, barrier, n: int, out) -> None:  # noqa: ANN001
    try:
        ds, catalog, steps = seed_setup(DBConn(url, schema=schema), chunk_size=100, name="clicks")
        barrier.wait(timeout=60)
        catalog.get_datatable(ds, "events").store_chunk(events_for(range(n * 5, n * 5 + 5)))
        run_steps(ds, steps, raise_on_error=True)
        out.put((n, "ok"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put((n, f"{type(e).__name__}: {e}"))


def test_processes_starting_together_all_create_and_write(dbconn: DBConn, tmp_path: Path) -> None:
    """First use of the same (missing) tables by processes released by one barrier: all succeed."""
    ctx = multiprocessing.get_context("fork")
    procs_n, trials = 3, 3
    for trial in range(trials):
        if dbconn.backend == "sqlite":
            url, schema = f"sqlite:///{tmp_path / f'race{trial}.sqlite'}", None
        else:
            url, schema = dbconn.connstr, f"{dbconn.schema}_r{trial}"
        barrier, out = ctx.Barrier(procs_n), ctx.Queue()
        procs = [ctx.Process(target=_first_use, args=(url, schema, barrier, n, out)) for n in range(procs_n)]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        try:
            assert results == {n: "ok" for n in range(procs_n)}, f"trial {trial}: {results}"
            conn = DBConn(url, schema=schema)
            ds, catalog, steps = seed_setup(conn, name="clicks")
            assert len(catalog.get_datatable(ds, "events").get_data()) == procs_n * 10
            assert_complete(ds, catalog, steps)
            conn.engine.dispose()
        finally:
            if schema is not None:
                eng = sa.create_engine(PG_URL)
                with eng.begin() as c:
                    c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                eng.dispose()


def test_connections_opening_a_new_sqlite_file_together_wait_for_the_wal_switch(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once with "database is locked" for a connection that opens
    it while another switches it (SQLite asks for that lock without its busy handler): DBConn waits
    instead. Bounded randomized: 200 files, three threads each; about 3% of them failed before."""
    import threading

    failures: list[str] = []
    for trial in range(200):
        url = f"sqlite:///{tmp_path / f'wal{trial}.sqlite'}"
        barrier = threading.Barrier(3)

        def first_connect(url: str = url, barrier: threading.Barrier = barrier, trial: int = trial) -> None:
            conn = DBConn(url)
            barrier.wait(timeout=30)
            try:
                with conn.connect() as c:
                    assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            except Exception as e:  # noqa: BLE001 - collected, the test fails below
                failures.append(f"trial {trial}: {type(e).__name__}: {e}")
            finally:
                conn.engine.dispose()

        threads = [threading.Thread(target=first_connect) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert failures == []


# ------------------------------------------------------------------------------------ item 10


def test_lock_held_by_a_stuck_session_times_out_with_a_clear_error(dbconn: DBConn) -> None:
    ds, catalog, steps = seed_setup(short_wait(dbconn), name="clicks")
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(events_for(range(3)))
    holder = Holder(dbconn)
    holder.hold_write_lock()
    try:
        with pytest.raises(LockTimeoutError) as info:
            events.store_chunk(events_for(range(3, 6)))
    finally:
        holder.release()
    msg = str(info.value)
    assert "waited more than 0.5 s for a lock" in msg and "lock_timeout" in msg
    if dbconn.backend == "postgresql":
        assert "'datapipe_seq'" in msg and "pg_stat_activity" in msg and "pg_terminate_backend" in msg
    assert "lock" in str(info.value.__cause__)  # the driver's own error
    assert len(events.get_data()) == 6  # nothing of the refused chunk
    events.store_chunk(events_for(range(3, 6)))
    assert run_steps(ds, steps).ok
    assert_complete(ds, catalog, steps)


def test_lock_timeout_default_and_validation(dbconn: DBConn) -> None:
    assert DBConn(dbconn.connstr).lock_timeout == 60
    if dbconn.backend == "postgresql":
        with dbconn.connect() as c:
            assert c.exec_driver_sql("SHOW lock_timeout").scalar_one() == "1min"
        with DBConn(dbconn.connstr, lock_timeout=None).connect() as c:
            assert c.exec_driver_sql("SHOW lock_timeout").scalar_one() == "0"
    else:
        with dbconn.connect() as c:
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 60000
    with pytest.raises(ConfigurationError, match="lock_timeout must be a positive number"):
        DBConn(dbconn.connstr, lock_timeout=0)
    # a run worker gets the same setting
    assert pickle.loads(pickle.dumps(DBConn(dbconn.connstr, lock_timeout=2.5))).lock_timeout == 2.5


# ------------------------------------------------------------------------------------ PG terminated


def _terminate_on_output_insert(dbconn: DBConn, admin: sa.Engine, outage: bool, db: str) -> dict[str, int]:
    """On the 2nd chunk's INSERT into click_count's row metadata (its data rows already written in the same
    transaction), terminate the runner's backend (and, for an outage, refuse new connections to the
    database until the test lets them back)."""
    state = {"inserts": 0, "terminated": 0}

    def before(conn, cursor, statement, params, context, executemany):  # noqa: ANN001, ANN202, ARG001
        if statement.lstrip().upper().startswith("INSERT INTO CLICK_COUNT_META"):
            state["inserts"] += 1
            if state["inserts"] == 2 and not state["terminated"]:
                pid = conn.connection.dbapi_connection.get_backend_pid()
                with admin.connect() as a:
                    if outage:
                        a.exec_driver_sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
                        a.exec_driver_sql(
                            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
                        )
                    else:
                        a.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
                state["terminated"] += 1

    event.listen(dbconn.engine, "before_cursor_execute", before)
    return state


@pytest.mark.parametrize("outage", [False, True], ids=["blip", "outage"])
def test_postgres_backend_terminated_mid_run(pg_database: str, outage: bool) -> None:
    db = pg_database.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    dbconn = DBConn(pg_database)
    try:
        ds, catalog, steps = seed_setup(dbconn, chunk_size=5, name="clicks")
        catalog.get_datatable(ds, "events").store_chunk(events_for(range(30)))
        state = _terminate_on_output_insert(dbconn, admin, outage, db)
        if outage:
            with pytest.raises(StepDatabaseError) as info:
                run_steps(ds, steps)
            msg = str(info.value)
            assert "step 'clicks'" in msg and "'click_count'" in msg and "OperationalError" in msg
            assert isinstance(info.value.__cause__, sa.exc.OperationalError)
            with admin.connect() as a:
                a.exec_driver_sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
            done = assert_consistent(ds, catalog, steps)
            assert len(done) == 5  # the first chunk committed, the one in flight did not
            assert len(steps[0].get_stale_keys()) == 25
            assert run_steps(ds, steps).ok
        else:
            # the chunk in flight rolls back, is retried on a fresh connection, and the run completes
            assert run_steps(ds, steps).ok
        assert state["terminated"] == 1
        assert_complete(ds, catalog, steps)
    finally:
        with admin.connect() as a:
            a.exec_driver_sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        dbconn.engine.dispose()
        admin.dispose()


def _backend_pid(dbconn: DBConn) -> int:
    with dbconn.connect() as c:
        return int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_an_idle_pooled_connection_closed_by_the_server_is_replaced(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection idle in the pool past ``PING_IDLE_AFTER`` is pinged on checkout; one the server closed
    meanwhile (a restart, an administrator) is replaced, and the caller never sees it."""
    from datapipe_dagster.store import liveness

    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    dbconn = DBConn(pg_database)
    try:
        pid = _backend_pid(dbconn)  # the pool keeps this connection
        with admin.connect() as a:
            a.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        monkeypatch.setattr(liveness, "PING_IDLE_AFTER", 0.0)  # every checkout counts as idle
        assert _backend_pid(dbconn) != pid
    finally:
        dbconn.engine.dispose()
        admin.dispose()


def test_a_connection_reused_at_once_is_not_pinged(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round trip fewer per transaction: back-to-back checkouts send no ping, idle ones do; a caller's
    own ``pool_pre_ping`` stands (SQLAlchemy's ping on every checkout)."""
    from datapipe_dagster.store import liveness

    dbconn = DBConn(pg_database)
    pings: list[int] = []
    real = dbconn.engine.dialect.do_ping
    monkeypatch.setattr(dbconn.engine.dialect, "do_ping", lambda c: pings.append(1) or real(c))
    try:
        first = _backend_pid(dbconn)
        for _ in range(5):
            assert _backend_pid(dbconn) == first
        assert pings == []
        monkeypatch.setattr(liveness, "PING_IDLE_AFTER", 0.0)
        assert _backend_pid(dbconn) == first
        assert pings == [1]
    finally:
        dbconn.engine.dispose()
    own = DBConn(pg_database, pool_pre_ping=True)
    pings.clear()
    own_ping = own.engine.dialect.do_ping
    monkeypatch.setattr(own.engine.dialect, "do_ping", lambda c: pings.append(1) or own_ping(c))
    try:
        for _ in range(4):
            _backend_pid(own)
        assert len(pings) == 3  # SQLAlchemy's, once per checkout of a pooled connection: not twice
    finally:
        own.engine.dispose()


# ------------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs root and a kernel that allows the mount; skipped with the reason otherwise)."""
    mnt = tmp_path / f"tmpfs_{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, leave: int) -> None:
    """Fill the file system of ``path`` with a ballast file until ``leave`` bytes are free.

    SQLite databases there are checkpointed first and their WAL truncated, so the space left is all a
    write can use: a checkpoint in the background after the fill would take it first, and a WAL that
    starts over from its beginning reuses the file's space (a write "that does not fit" fitted)."""
    from datapipe_dagster.store.sqlite_wal import CHECKPOINTER

    assert CHECKPOINTER.wait_idle(30)
    for db in path.glob("*.sqlite"):
        with sqlite3.connect(db, timeout=30) as conn:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # not busy: done
        conn.close()
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(path / "ballast", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_sqlite_disk_full_then_freed(small_disk: Path) -> None:
    dbconn = DBConn(f"sqlite:///{small_disk / 'store.sqlite'}")
    try:
        ds, catalog, steps = seed_setup(dbconn, chunk_size=20, name="clicks")
        events = catalog.get_datatable(ds, "events")
        first = events_for(range(20))
        events.store_chunk(first)
        assert run_steps(ds, steps).ok
        # a load that does not fit
        fill(small_disk, 64 * 1024)
        big = events_for(range(20, 220), per_user=3, tag="b", pad=200)
        with pytest.raises(StorageFullError) as info:
            events.store_chunk(big)
        assert "database is out of disk space" in str(info.value) and "Free space" in str(info.value)
        assert len(events.get_data()) == len(first)  # all or nothing
        assert_consistent(ds, catalog, steps)
        (small_disk / "ballast").unlink()
        events.store_chunk(big)
        # a run that does not fit
        fill(small_disk, 16 * 1024)
        with pytest.raises(StepDatabaseError) as run_info:
            run_steps(ds, steps)
        assert "step 'clicks'" in str(run_info.value)
        assert isinstance(run_info.value.__cause__, DatabaseError)
        assert_consistent(ds, catalog, steps)
        (small_disk / "ballast").unlink()
        assert run_steps(ds, steps).ok
        assert len(events.get_data()) == len(first) + len(big)
        assert_complete(ds, catalog, steps)
    finally:
        dbconn.engine.dispose()

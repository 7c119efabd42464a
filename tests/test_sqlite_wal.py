"""SQLite's write-ahead log is copied back into the database file by a background thread, not by a commit
(``store.sqlite_wal``): what a commit leaves, what the thread does, files removed meanwhile, a forked
child, writers racing while it runs."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
import sqlalchemy as sa

from datapipe_dagster import DBConn
from datapipe_dagster.store.sqlite_wal import CHECKPOINTER, WAL_SAFETY_PAGES, checkpoint_soon

PAYLOAD = "x" * 3000  # about one row a page


def _setup(tmp_path, name: str = "w.sqlite") -> tuple[DBConn, sa.Table, str]:
    path = str(tmp_path / name)
    db = DBConn(f"sqlite:///{path}")
    t = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String))
    db.ensure_table(t)
    assert CHECKPOINTER.wait_idle(10)
    return db, t, path


def _insert(db: DBConn, t: sa.Table, ids: range) -> None:
    with db.begin_write() as c:
        c.execute(t.insert(), [{"id": i, "v": PAYLOAD} for i in ids])


def _count(db: DBConn, t: sa.Table) -> int:
    with db.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()


def test_connections_checkpoint_at_commit_only_past_the_safety_bound(tmp_path) -> None:
    db, _, _ = _setup(tmp_path)
    with db.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == WAL_SAFETY_PAGES
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    mem = DBConn("sqlite://")
    assert mem.file_path is None
    with mem.connect() as c:  # nothing to checkpoint: SQLite's default stays
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000


def test_a_small_commit_reaches_the_database_file_in_the_background(tmp_path) -> None:
    """50 pages: under SQLite's own 1,000-page checkpoint, so without the thread they would stay in the log."""
    db, t, path = _setup(tmp_path)
    before = os.path.getsize(path)
    _insert(db, t, range(50))
    assert CHECKPOINTER.wait_idle(10)
    assert os.path.getsize(path) > before + 40 * 4096
    assert _count(db, t) == 50


def test_a_big_commit_leaves_the_copy_to_the_background(tmp_path) -> None:
    """2,000 pages, past SQLite's default 1,000: the commit itself no longer copies them."""
    db, t, path = _setup(tmp_path)
    before = os.path.getsize(path)
    CHECKPOINTER.pause()
    try:
        _insert(db, t, range(2000))
        assert os.path.getsize(path) == before  # committed, in the log only
        assert os.path.getsize(path + "-wal") > 2000 * 4096
        assert _count(db, t) == 2000  # and visible
    finally:
        CHECKPOINTER.resume()
    assert CHECKPOINTER.wait_idle(10)
    assert os.path.getsize(path) > before + 1900 * 4096
    assert _count(db, t) == 2000


def test_a_removed_file_is_not_created_again(tmp_path) -> None:
    path = tmp_path / "gone.sqlite"
    checkpoint_soon(str(path))
    assert CHECKPOINTER.wait_idle(10)
    assert not path.exists()


def test_a_rolled_back_write_requests_nothing(tmp_path) -> None:
    db, t, path = _setup(tmp_path)
    asked = CHECKPOINTER.requests[path]
    with pytest.raises(RuntimeError), db.begin_write() as c:
        c.execute(t.insert(), [{"id": 1, "v": "a"}])
        raise RuntimeError("boom")
    assert CHECKPOINTER.requests[path] == asked
    assert _count(db, t) == 0
    _insert(db, t, range(1))  # a commit does request one
    assert CHECKPOINTER.requests[path] == asked + 1


def _child_writes(path: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    db = DBConn(f"sqlite:///{path}")
    t = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String))
    before = CHECKPOINTER.done
    size = os.path.getsize(path)
    _insert(db, t, range(1000, 1050))
    q.put((CHECKPOINTER.wait_idle(10), CHECKPOINTER.done - before, os.path.getsize(path) > size))


def test_a_forked_child_starts_a_thread_of_its_own(tmp_path) -> None:
    """The parent's thread is running when it forks; the child's requests are served by a new one."""
    db, t, path = _setup(tmp_path)
    _insert(db, t, range(10))
    assert CHECKPOINTER.wait_idle(10)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_writes, args=(path, q))
    p.start()
    idle, done, grew = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert idle and done >= 1 and grew
    assert _count(db, t) == 60


def _child_after_busy_fork(path: str, finished: bool, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    db = DBConn(f"sqlite:///{path}")
    t = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String))
    _insert(db, t, range(2000, 2010))
    q.put((finished, CHECKPOINTER.wait_idle(10)))


def test_a_fork_waits_for_a_running_checkpoint_and_the_child_starts_clean(tmp_path, monkeypatch) -> None:
    """A process forked while the thread is inside a checkpoint (inside SQLite, which a child must not
    inherit mid-call) forks once it is out; the child's checkpointer is idle, not busy forever with the
    parent's work."""
    from datapipe_dagster.store import sqlite_wal

    db, t, path = _setup(tmp_path)
    inside, finished = threading.Event(), threading.Event()
    real = sqlite_wal._checkpoint

    def slow(p: str) -> None:
        inside.set()
        threading.Event().wait(0.5)
        real(p)
        finished.set()

    monkeypatch.setattr(sqlite_wal, "_checkpoint", slow)
    _insert(db, t, range(10))
    assert inside.wait(10)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: _child_after_busy_fork(path, finished.is_set(), q))
    p.start()
    was_finished, idle = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert was_finished, "the fork happened in the middle of a checkpoint"
    assert idle, "the child's checkpointer stayed busy with the parent's work"
    assert CHECKPOINTER.wait_idle(10)
    assert _count(db, t) == 20


def test_writers_and_readers_racing_while_checkpoints_run(tmp_path) -> None:
    """Two threads insert 100 transactions each into one table while a reader counts: every count is
    between the last one and the total, and nothing is lost."""
    db, t, _ = _setup(tmp_path)
    errors: list[BaseException] = []
    counts: list[int] = []
    stop = threading.Event()

    def write(base: int) -> None:
        try:
            for k in range(100):
                _insert(db, t, range(base + 5 * k, base + 5 * k + 5))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def read() -> None:
        while not stop.is_set():
            counts.append(_count(db, t))

    writers = [threading.Thread(target=write, args=(b,)) for b in (0, 100_000)]
    reader = threading.Thread(target=read)
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    stop.set()
    reader.join(30)
    assert not errors, errors
    assert counts == sorted(counts) and counts[-1] <= 1000
    assert _count(db, t) == 1000
    assert CHECKPOINTER.wait_idle(10)

"""SQLite connection settings, and its write-ahead log copied back into the database file off the commit path.

In WAL mode a commit appends the changed pages to the ``-wal`` file; a *checkpoint* copies them into the
database file and syncs it. By default SQLite runs that checkpoint inside the ``COMMIT`` that takes the log
past 1,000 pages, so the writer waits for it: at 1M events the ``COMMIT`` of a 1,000-row ``store_chunk`` took
36–39 ms with it and 8–9 ms without, that of a 100,000-row slice of an ingest 170–190 ms and 80 ms. Here the
connections checkpoint at commit only past ``WAL_SAFETY_PAGES`` (for when the background falls behind), and
``checkpoint_soon`` (called after each write transaction commits) has one thread per process run a
``PASSIVE`` checkpoint on a connection of its own: it never waits for a lock and never blocks readers or
writers, and SQLite releases the GIL while it copies, so the writer goes on with its next piece of work."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

SQLITE_CACHE_KB = 65536
"""The page cache of a connection in a write transaction (``PRAGMA cache_size``; an upper bound, filled as
pages are touched). SQLite's default (2 MB) spills dirty pages to the WAL in the middle of a bulk write once
the indexes outgrow it: 64 MB doubled ingest at 1M rows."""

READ_CACHE_KB = 8192
"""The page cache of a connection in a read transaction. A read passes over its pages about once, and a
connection's cache is emptied anyway when another one commits (WAL mode): pooled connections that kept the
write size after a large read held 70 MB of a 10M-event full run's peak (8 MB: 348 MB of heap against 418)."""

WAL_SAFETY_PAGES = 32768
"""Pages (128 MB at SQLite's 4 KB) past which a commit checkpoints by itself, as SQLite does at 1,000 by
default: reached only when the background checkpoints cannot keep up (or a reader's snapshot holds them)."""

COALESCE_S = 0.02
"""How long the checkpoint thread waits after a request for more commits to join it (a burst of small
writes costs one checkpoint, not one each)."""


def enable_wal(cur: sqlite3.Cursor, wait_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried until ``wait_s`` has passed while the database is locked.

    Switching a new file to WAL takes an exclusive lock that SQLite requests without its busy handler: a
    process opening the file while another one switches it fails at once with "database is locked",
    whatever the busy timeout (3 of 100 first uses by three processes at once). So the wait is ours.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def configure(dbapi_conn: Any, wait_ms: int, file_backed: bool) -> None:
    """Settings of every connection the engine opens (its ``connect`` event)."""
    # Take over transaction control from pysqlite, so writes can BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # The busy timeout first: switching to WAL takes a lock that another process may hold.
    cur.execute(f"PRAGMA busy_timeout={wait_ms}")
    enable_wal(cur, wait_ms / 1000)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")  # each transaction sets its own (``begin``)
    # No memory map (SQLite's default): the pages of the file a process mapped stayed in its RSS, 940 MB
    # at the peak of a 10M-event first run against 515 MB without, which took no longer (160 s against
    # 165), nor did a change or 1,000 changes at 1M events.
    if file_backed:  # the checkpoints run in the background (``checkpoint_soon``)
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")
    cur.close()


def begin(conn: Any, write: bool) -> None:
    """Open a transaction on the SQLAlchemy connection ``conn`` (its ``begin`` event): a write one takes
    the write lock up front (``BEGIN IMMEDIATE``) with the large page cache, a read one gets the small cache
    (shrinking it frees the pages past it)."""
    kib = SQLITE_CACHE_KB if write else READ_CACHE_KB
    pooled = conn.connection
    if pooled.info.get("datapipe_cache_kb") != kib:
        pooled.driver_connection.execute(f"PRAGMA cache_size=-{kib}")
        pooled.info["datapipe_cache_kb"] = kib
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class _Checkpointer:
    """The thread that checkpoints the databases written in this process, one request per file pending."""

    def __init__(self) -> None:
        self.done = 0  # checkpoints run (for tests and benchmarks)
        self.requests: Counter[str] = Counter()  # requests per file (for tests)
        self._reset()

    def _reset(self) -> None:
        """A fresh state, without the thread (at start, and in a forked child: the parent's thread is not
        there, and a lock it held at the fork would stay held)."""
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._thread: threading.Thread | None = None
        self._paused = 0
        self._busy = False
        # Held while the thread is inside SQLite: a fork waits for it (``os.register_at_fork`` below), so a
        # child never inherits one of SQLite's mutexes locked by a thread it does not have.
        self._in_sqlite = threading.Lock()

    def before_fork(self) -> None:
        self._in_sqlite.acquire()

    def after_fork_in_parent(self) -> None:
        self._in_sqlite.release()

    def request(self, path: str) -> None:
        with self._cond:
            self._pending.add(path)
            self.requests[path] += 1
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._loop, name="datapipe-wal-checkpoint", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pause(self) -> None:
        """Hold requests until ``resume`` (tests: a commit seen without the background's checkpoint)."""
        with self._cond:
            self._paused += 1

    def resume(self) -> None:
        with self._cond:
            self._paused -= 1
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is pending; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.01))
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending or self._paused:
                    self._cond.wait()
                self._busy = True
            time.sleep(COALESCE_S)
            with self._cond:
                paths, self._pending = self._pending, set()
            for path in paths:
                with self._in_sqlite:
                    _checkpoint(path)
            with self._cond:
                self.done += len(paths)
                self._busy = False
                self._cond.notify_all()


def _checkpoint(path: str) -> None:
    """One PASSIVE checkpoint of the file at ``path``, on a connection of its own; never raises."""
    try:
        # mode=rw: a file removed meanwhile (a test's temporary directory) is not created again.
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=1.0, isolation_level=None)
    except sqlite3.Error as e:
        log.debug("WAL checkpoint of %s skipped: %s", path, e)
        return
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as e:  # locked by a recovery, or the file went away: the next request tries again
        log.debug("WAL checkpoint of %s failed: %s", path, e)
    finally:
        conn.close()


CHECKPOINTER = _Checkpointer()
os.register_at_fork(
    before=CHECKPOINTER.before_fork, after_in_parent=CHECKPOINTER.after_fork_in_parent, after_in_child=CHECKPOINTER._reset
)


def checkpoint_soon(path: str) -> None:
    """Have the WAL of the database file at ``path`` checkpointed in the background (after a commit)."""
    CHECKPOINTER.request(os.path.abspath(path))

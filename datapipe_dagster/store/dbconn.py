"""The connection to a SQL database (``DBConn``): URL and driver, the engine and its settings, write
transactions with their lock timeout, errors translated to ours, and the upsert/insert statements every
metadata and data table writes through."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from datapipe_dagster.errors import ConfigurationError, LockTimeoutError, StorageFullError
from datapipe_dagster.store.liveness import ping_when_idle
from datapipe_dagster.store.pgcopy import COPY_MIN_ROWS, Encode, copy_frame, executemany_frame, in_key_order
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.rowhash import json_encoder
from datapipe_dagster.store.sql import UNNEST_MIN_KEYS, delete_by_keys, pg_unnest_upsert
from datapipe_dagster.store.sqlite_wal import begin as begin_sqlite
from datapipe_dagster.store.sqlite_wal import checkpoint_soon
from datapipe_dagster.store.sqlite_wal import configure as configure_sqlite

try:  # COPY raises the driver's own error, not SQLAlchemy's
    from psycopg2.errors import UniqueViolation
except ImportError:  # pragma: no cover - psycopg2 comes with the postgres extra; the engine works without it

    class UniqueViolation(Exception):  # type: ignore[no-redef]
        """Stand-in when psycopg2 is not installed."""


UNIQUE_VIOLATIONS: tuple[type[Exception], ...] = (sa.exc.IntegrityError, UniqueViolation)
"""What an INSERT or COPY of a known key raises (SQLAlchemy's error, or psycopg2's from COPY)."""

def _normalise_url(connstr: str) -> str:
    """Map ``postgresql://`` to a driver that is installed (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if connstr.startswith("postgresql://") or connstr.startswith("postgres://"):
        rest = connstr.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + rest
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + rest
        raise ConfigurationError(
            f"DBConn({mask_url(connstr)!r}): no PostgreSQL driver is installed; "
            "pip install 'datapipe-dagster[postgres]' (psycopg2) or psycopg"
        )
    return connstr


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs, reprs and printed messages)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:  # not a URL (a bare path): nothing to hide
        return url


UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (sa.exc.OperationalError,)
"""What a database that is down (or a connection that broke) raises: a caller that polls (a sensor
tick) catches these and tries again later."""

# PostgreSQL cuts identifiers at NAMEDATALEN - 1 = 63 bytes; SQLite has no limit.
MAX_IDENTIFIER_BYTES = {"postgresql": 63}
DEFAULT_LOCK_TIMEOUT = 60.0

def fit_identifier(name: str, limit: int | None) -> str:
    """``name`` unchanged when it fits ``limit`` bytes (UTF-8); else its longest prefix that leaves room
    for ``_`` and 8 hex digits of the SHA-256 of the whole name. Stable: the same name always maps to the
    same identifier, and names that fit are never changed (existing databases keep their tables)."""
    raw = name.encode("utf-8")
    if limit is None or len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:8]
    prefix = raw[: limit - len(digest) - 1].decode("utf-8", errors="ignore")  # never split a character
    return f"{prefix}_{digest}"


class DBConn:
    """A database connection string (SQLAlchemy URL) and an optional schema, with a lazily made engine.

    Creating a DBConn opens nothing: the engine is created on first use, so a code location that declares
    its catalog at import time stays free of connections. ``repr`` and ``safe_url`` hide the password.

    Args:
        connstr: ``sqlite:///file.sqlite``, ``postgresql://user@host/db`` (any installed driver) or
            ``postgresql+psycopg2://...``.
        schema: a PostgreSQL schema for the tables (created if missing); ignored by SQLite.
        lock_timeout: seconds a statement waits for a lock held by another session before it fails with
            ``LockTimeoutError`` (PostgreSQL ``lock_timeout``; SQLite's busy timeout). ``None`` waits
            forever. Default 60.
        **engine_kwargs: passed to ``sqlalchemy.create_engine``. On PostgreSQL a pooled connection idle for
            a second or more is pinged before use (``store.liveness``); ``pool_pre_ping=True`` pings on
            every checkout instead.
    """

    def __init__(
        self,
        connstr: str,
        schema: str | None = None,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        **engine_kwargs: Any,
    ):
        if lock_timeout is not None and lock_timeout <= 0:
            raise ConfigurationError(f"DBConn: lock_timeout must be a positive number of seconds or None, not {lock_timeout!r}")
        self.connstr = connstr
        self.url = _normalise_url(connstr)
        self.lock_timeout = lock_timeout
        self.engine_kwargs = engine_kwargs
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        backend = sa.engine.make_url(self.url).get_backend_name()
        self.backend = backend
        self.schema = schema if backend != "sqlite" else None
        self.metadata = sa.MetaData(schema=self.schema)
        self._upserts: weakref.WeakKeyDictionary[sa.Table, dict[tuple[str, ...], sa.Insert]] = weakref.WeakKeyDictionary()

        self.max_identifier_bytes = MAX_IDENTIFIER_BYTES.get(backend)
        db = sa.engine.make_url(self.url).database if backend == "sqlite" else None
        self._file_path = None if not db or db == ":memory:" or db.startswith("file:") else db

    @property
    def safe_url(self) -> str:
        """The connection string with the password masked."""
        return mask_url(self.connstr)

    def __repr__(self) -> str:
        return f"DBConn({self.safe_url!r}, schema={self.schema!r})"

    def identifier(self, name: str) -> str:
        """A name for a table, index or constraint the library creates, fitting this backend's limit."""
        return fit_identifier(name, self.max_identifier_bytes)

    def check_identifier(self, name: str, what: str) -> None:
        """Refuse a user-given name the backend would silently truncate."""
        limit = self.max_identifier_bytes
        if limit is not None and len(name.encode("utf-8")) > limit:
            raise ConfigurationError(
                f"{what} {name!r} is {len(name.encode('utf-8'))} bytes long; {self.backend} allows at most "
                f"{limit} bytes in a name (longer ones are truncated): give it a shorter name"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "connstr": self.connstr,
            "schema": self.schema,
            "lock_timeout": self.lock_timeout,
            "engine_kwargs": self.engine_kwargs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["connstr"], state["schema"], state.get("lock_timeout", DEFAULT_LOCK_TIMEOUT), **state["engine_kwargs"]
        )

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> sa.Engine:
        # SQLite has no "forever": a day stands in for lock_timeout=None.
        wait_ms = int((self.lock_timeout if self.lock_timeout is not None else 86400) * 1000)
        # JSON values are stored in the canonical text the row hash reads (keys sorted), on every write
        # path: the bulk paths store the hash's text as it is, so serialising happens once.
        engine_kwargs = {"json_serializer": json_encoder(strict=False), **self.engine_kwargs}
        if self.backend == "sqlite":
            kwargs = dict(engine_kwargs)
            connect_args = {"timeout": wait_ms / 1000, **kwargs.pop("connect_args", {})}
            engine = sa.create_engine(self.url, connect_args=connect_args, **kwargs)

            file_backed = self.file_path is not None

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
                configure_sqlite(dbapi_conn, wait_ms, file_backed)

            @event.listens_for(engine, "begin")
            def _on_begin(conn: sa.Connection) -> None:
                # A write transaction takes the write lock up front: no lock upgrade deadlocks between
                # processes, and write sequences are allocated in commit order.
                immediate = conn.get_execution_options().get("datapipe_write", False)
                begin_sqlite(conn, immediate)

        else:
            kwargs = dict(engine_kwargs)
            if self.url.startswith("postgresql+psycopg2"):
                # Batch executemany of UPDATE and INSERT .. ON CONFLICT too (the default batches plain INSERTs only).
                kwargs.setdefault("executemany_mode", "values_plus_batch")
            engine = sa.create_engine(self.url, **kwargs)
            if "pool_pre_ping" not in kwargs:  # the caller's choice stands; else a ping after idling only
                ping_when_idle(engine)
            if self.lock_timeout is not None:
                timeout_ms = wait_ms

                @event.listens_for(engine, "connect")
                def _on_pg_connect(dbapi_conn: Any, _rec: Any) -> None:
                    # A session stuck holding a lock (idle in transaction) must not block writers forever.
                    cur = dbapi_conn.cursor()
                    cur.execute(f"SET lock_timeout = {timeout_ms}")
                    cur.close()
                    dbapi_conn.commit()

        event.listen(engine, "handle_error", self._translate_error)
        if self.schema is not None:
            with engine.begin() as conn:
                if not engine.dialect.has_schema(conn, self.schema):
                    try:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                    except DBAPIError:  # a concurrent creator won the race
                        pass
        return engine

    def _translate_error(self, ctx: sa.engine.ExceptionContext) -> None:
        """Turn a lock wait that timed out, or a full disk, into a DatapipeError naming the table and the
        fix (the driver's error stays the ``__cause__``)."""
        orig = ctx.original_exception
        code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
        text = str(orig)
        tables = _statement_tables(ctx)
        if code == "55P03" or (self.backend == "sqlite" and "database is locked" in text):
            raise LockTimeoutError(tables, self.backend, self.lock_timeout, text) from ctx.sqlalchemy_exception
        if code == "53100" or (self.backend == "sqlite" and "database or disk is full" in text):
            raise StorageFullError(tables, self.backend, text, ctx.statement or "") from ctx.sqlalchemy_exception

    @contextmanager
    def begin_write(self) -> Iterator[sa.Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite); commits on success, rolls back on error."""
        with self.engine.connect().execution_options(datapipe_write=True) as conn, conn.begin():
            yield conn
        if self.file_path is not None:
            checkpoint_soon(self.file_path)  # the WAL copied back off this commit's path (``sqlite_wal``)

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A read connection."""
        with self.engine.connect() as conn:
            yield conn

    @property
    def database(self) -> str | None:
        """The database part of the URL (SQLite: the file's path, or ``:memory:``)."""
        return sa.engine.make_url(self.url).database

    @property
    def file_path(self) -> str | None:
        """The SQLite database file (None for PostgreSQL and in-memory SQLite)."""
        return self._file_path

    def same_database(self, other: DBConn) -> bool:
        return self is other or self.url == other.url

    def ensure_table(self, table: sa.Table) -> None:
        """Create ``table`` and its indexes if missing (idempotent, safe against concurrent creators).

        The check and the CREATE run in one write transaction (BEGIN IMMEDIATE on SQLite, so a process
        creating tables waits for other writers instead of failing with "database is locked"); table and
        indexes commit together, so a failed CREATE leaves nothing behind and a retry starts clean.
        """
        with self.connect() as conn:
            # Most calls find the table: a read, no write lock (the caller may hold a write transaction).
            if self.engine.dialect.has_table(conn, table.name, schema=table.schema):
                return
        try:
            with self.begin_write() as conn:
                table.metadata.create_all(conn, tables=[table], checkfirst=True)
        except DBAPIError:
            insp = sa.inspect(self.engine)
            if not insp.has_table(table.name, schema=table.schema):
                raise

    def insert_new(
        self, conn: sa.Connection, table: sa.Table, df: pd.DataFrame, keys: list[str], encoded: pd.DataFrame | None = None
    ) -> None:
        """Insert rows believed new with a plain INSERT (COPY on PostgreSQL for many rows); if some exist
        after all (a table written outside the library), fall back to an upsert. ``encoded``: JSON columns
        already serialised, aligned with ``df`` (used by the bulk paths)."""
        if len(df) == 0:
            return
        try:
            with conn.begin_nested():
                self.insert_plain(conn, table, df, encoded)
        except UNIQUE_VIOLATIONS:
            self.upsert(conn, table, to_records(df), keys)

    def insert_plain(
        self,
        conn: sa.Connection,
        table: sa.Table,
        df: pd.DataFrame,
        encoded: pd.DataFrame | None = None,
        encode: Encode | None = None,
        ordered: bool = False,
    ) -> None:
        """A plain INSERT (COPY on PostgreSQL for many rows) that fails on a known key: one of
        ``UNIQUE_VIOLATIONS`` is raised, and the caller's transaction must be rolled back to a savepoint.
        Many rows go in in primary-key order (``in_key_order``); with ``ordered``, in the order given (the
        caller sorted them).

        ``encode``: instead of ``encoded``, a function giving the JSON texts of some rows (``copy_frame``),
        called on each batch COPY sends, else once on all the rows; the rows are then sent in the order
        given (the caller keeps the texts in that order), so a caller wanting key order sorts them first."""
        if not ordered and encode is None and len(df) >= COPY_MIN_ROWS:
            df, encoded = in_key_order(table, df, encoded)
        if self.backend == "postgresql" and len(df) >= COPY_MIN_ROWS and copy_frame(conn, table, df, encoded, encode):
            return
        if encode is not None:
            got = encode(df)
            encoded = pd.DataFrame(got, index=df.index, dtype=object) if got else None
        if len(df) < COPY_MIN_ROWS:
            conn.execute(sa.insert(table), to_records(df))
        else:
            executemany_frame(conn, table, df, encoded)

    def upsert_statement(self, table: sa.Table, keys: list[str]) -> sa.Insert:
        """``INSERT … ON CONFLICT (keys) DO UPDATE`` of every other column (PostgreSQL, SQLite), built once
        per table: a one-row write spends more on building the statement than on running it."""
        by_keys = self._upserts.setdefault(table, {})
        stmt = by_keys.get(tuple(keys))
        if stmt is None:
            from sqlalchemy.dialects import postgresql, sqlite

            insert: Any = postgresql.insert if self.backend == "postgresql" else sqlite.insert
            stmt = insert(table)
            rest = [c.name for c in table.columns if c.name not in keys]
            if rest:
                stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in rest})
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=keys)
            by_keys[tuple(keys)] = stmt
        return stmt

    def upsert(self, conn: sa.Connection, table: sa.Table, records: list[dict[str, Any]], keys: list[str]) -> None:
        """Insert ``records`` into ``table``, replacing rows with the same ``keys``."""
        if not records:
            return
        if self.backend == "postgresql" and len(records) > UNNEST_MIN_KEYS:
            stmt = pg_unnest_upsert(conn.dialect, table, records, keys)
            if stmt is not None:
                conn.execute(stmt)
                return
        if self.backend in ("postgresql", "sqlite"):
            conn.execute(self.upsert_statement(table, keys), records)
        else:
            delete_by_keys(conn, table, keys, pd.DataFrame(records))
            conn.execute(sa.insert(table), records)


def _statement_tables(ctx: sa.engine.ExceptionContext) -> list[str]:
    """Names of the tables the failing statement touched (best effort; empty when unknown)."""
    compiled = getattr(ctx.execution_context, "compiled", None)
    stmt = getattr(compiled, "statement", None)
    if stmt is None:
        return []
    target = getattr(stmt, "table", None)  # INSERT / UPDATE / DELETE
    if target is None:
        target = getattr(stmt, "element", None)  # CREATE TABLE / INDEX
    if isinstance(target, sa.Index):
        target = target.table
    if isinstance(target, sa.Table):
        return [target.name]
    froms = getattr(stmt, "get_final_froms", None)
    if froms is None:
        return []
    names: list[str] = []
    for f in froms():
        for t in sa.sql.util.find_tables(f):
            if t.name not in names:
                names.append(t.name)
    return names

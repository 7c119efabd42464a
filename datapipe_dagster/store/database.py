"""SQL databases: the connection (``DBConn``) and the SQL table store (``TableStoreDB``)."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.pgcopy import COPY_MIN_ROWS, copy_frame, executemany_frame
from datapipe_dagster.store.schema import conform_types, to_records
from datapipe_dagster.store.sql import delete_by_keys, fetch_by_keys, fetch_frame

try:  # COPY raises the driver's own error, not SQLAlchemy's
    from psycopg2.errors import UniqueViolation
except ImportError:  # pragma: no cover - psycopg2 is a dependency, but keep the engine importable without it

    class UniqueViolation(Exception):  # type: ignore[no-redef]
        """Stand-in when psycopg2 is not installed."""


def _normalise_url(connstr: str) -> str:
    """Map ``postgresql://`` to a driver that is installed (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if connstr.startswith("postgresql://") or connstr.startswith("postgres://"):
        rest = connstr.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + rest
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + rest
    return connstr


class DBConn:
    """A database connection string (SQLAlchemy URL) and an optional schema, with a lazily made engine.

    Creating a DBConn opens nothing: the engine is created on first use, so a code location that declares
    its catalog at import time stays free of connections.

    Args:
        connstr: ``sqlite:///file.sqlite``, ``postgresql://user@host/db`` (any installed driver) or
            ``postgresql+psycopg2://...``.
        schema: a PostgreSQL schema for the tables (created if missing); ignored by SQLite.
    """

    def __init__(self, connstr: str, schema: str | None = None, **engine_kwargs: Any):
        self.connstr = connstr
        self.url = _normalise_url(connstr)
        self.engine_kwargs = engine_kwargs
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        backend = sa.engine.make_url(self.url).get_backend_name()
        self.backend = backend
        self.schema = schema if backend != "sqlite" else None
        self.metadata = sa.MetaData(schema=self.schema)

    def __repr__(self) -> str:
        return f"DBConn({self.connstr!r}, schema={self.schema!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"connstr": self.connstr, "schema": self.schema, "engine_kwargs": self.engine_kwargs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["connstr"], state["schema"], **state["engine_kwargs"])  # type: ignore[misc]

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> sa.Engine:
        if self.backend == "sqlite":
            engine = sa.create_engine(self.url, connect_args={"timeout": 60}, **self.engine_kwargs)

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
                # Take over transaction control from pysqlite, so writes can BEGIN IMMEDIATE.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: sa.Connection) -> None:
                # A write transaction takes the write lock up front: no lock upgrade deadlocks between
                # processes, and write sequences are allocated in commit order.
                immediate = conn.get_execution_options().get("datapipe_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        else:
            kwargs = dict(self.engine_kwargs)
            if self.url.startswith("postgresql+psycopg2"):
                # Batch executemany of UPDATE and INSERT .. ON CONFLICT too (the default batches plain INSERTs only).
                kwargs.setdefault("executemany_mode", "values_plus_batch")
            engine = sa.create_engine(self.url, pool_pre_ping=True, **kwargs)
        if self.schema is not None:
            with engine.begin() as conn:
                if not engine.dialect.has_schema(conn, self.schema):
                    try:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                    except DBAPIError:  # a concurrent creator won the race
                        pass
        return engine

    @contextmanager
    def begin_write(self) -> Iterator[sa.Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite); commits on success, rolls back on error."""
        with self.engine.connect().execution_options(datapipe_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A read connection."""
        with self.engine.connect() as conn:
            yield conn

    def same_database(self, other: DBConn) -> bool:
        return self is other or self.url == other.url

    def ensure_table(self, table: sa.Table) -> None:
        """Create ``table`` and its indexes if missing (idempotent, safe against concurrent creators)."""
        try:
            table.metadata.create_all(self.engine, tables=[table], checkfirst=True)
        except DBAPIError:
            insp = sa.inspect(self.engine)
            if not insp.has_table(table.name, schema=table.schema):
                raise

    def insert_new(self, conn: sa.Connection, table: sa.Table, df: pd.DataFrame, keys: list[str]) -> None:
        """Insert rows believed new with a plain INSERT (COPY on PostgreSQL for many rows); if some exist
        after all (a table written outside the library), fall back to an upsert."""
        if len(df) == 0:
            return
        try:
            with conn.begin_nested():
                if len(df) < COPY_MIN_ROWS:
                    conn.execute(sa.insert(table), to_records(df))
                elif not (self.backend == "postgresql" and copy_frame(conn, table, df)):
                    executemany_frame(conn, table, df)
        except (sa.exc.IntegrityError, UniqueViolation):
            self.upsert(conn, table, to_records(df), keys)

    def upsert(self, conn: sa.Connection, table: sa.Table, records: list[dict[str, Any]], keys: list[str]) -> None:
        """Insert ``records`` into ``table``, replacing rows with the same ``keys``."""
        if not records:
            return
        if self.backend in ("postgresql", "sqlite"):
            if self.backend == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(table)
            rest = [c.name for c in table.columns if c.name not in keys]
            if rest:
                stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in rest})
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=keys)
            conn.execute(stmt, records)
        else:
            delete_by_keys(conn, table, keys, pd.DataFrame(records))
            conn.execute(sa.insert(table), records)


class TableStoreDB(TableStore):
    """A table in a SQL database.

    Args:
        name: the table's name in the database.
        dbconn: where it lives.
        data_sql_schema: SQLAlchemy ``Column``s, primary-key columns marked.
        create_table: create the table (on first use) when it does not exist.
    """

    def __init__(self, name: str, dbconn: DBConn, data_sql_schema: list[sa.Column], create_table: bool = True):
        if not data_sql_schema:
            raise ConfigurationError(f"table {name!r}: data_sql_schema is empty")
        if not any(c.primary_key for c in data_sql_schema):
            raise ConfigurationError(f"table {name!r}: no column is marked primary_key=True")
        self.name = name
        self.dbconn = dbconn
        self.create_table = create_table
        self.data_sql_schema = [c._copy() for c in data_sql_schema]
        self.data_table = sa.Table(name, dbconn.metadata, *[c._copy() for c in data_sql_schema], extend_existing=True)
        self._ready = False

    def get_schema(self) -> list[sa.Column]:
        return self.data_sql_schema

    def transaction_engine(self) -> sa.Engine | None:
        return self.dbconn.engine

    def _ensure(self) -> None:
        if not self._ready:
            if self.create_table:
                self.dbconn.ensure_table(self.data_table)
            self._ready = True

    @contextmanager
    def _conn(self, conn: sa.Connection | None, write: bool) -> Iterator[sa.Connection]:
        self._ensure()
        if conn is not None:
            yield conn
        elif write:
            with self.dbconn.begin_write() as c:
                yield c
        else:
            with self.dbconn.connect() as c:
                yield c

    def read_rows(self, idx: pd.DataFrame | None = None, conn: Any = None) -> pd.DataFrame:
        cols = [c.name for c in self.data_sql_schema]
        with self._conn(conn, write=False) as c:
            if idx is None:
                df = fetch_frame(c, sa.select(self.data_table), cols)
            else:
                key_cols = [k for k in idx.columns if k in self.data_table.c]
                df = fetch_by_keys(c, sa.select(self.data_table), self.data_table, key_cols, idx, cols)
        return conform_types(df, self.data_sql_schema)

    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        with self._conn(conn, write=True) as c:
            self.dbconn.upsert(c, self.data_table, to_records(df), self.primary_keys)

    def insert_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        with self._conn(conn, write=True) as c:
            self.dbconn.insert_new(c, self.data_table, df, self.primary_keys)

    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        if len(idx) == 0:
            return
        with self._conn(conn, write=True) as c:
            delete_by_keys(c, self.data_table, self.primary_keys, idx)

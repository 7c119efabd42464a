"""The SQL table store (``TableStoreDB``); ``DBConn`` lives in ``store.dbconn`` and is importable from here
too, where datapipe users find it (``datapipe.store.database``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.store.base import SQLTable, TableStore
from datapipe_dagster.store.dbconn import UNREACHABLE_ERRORS, DBConn
from datapipe_dagster.store.records import conform_types, decode_json_texts, json_text_columns, to_records
from datapipe_dagster.store.rowhash import hash_rows, json_column_texts
from datapipe_dagster.store.sql import delete_by_keys, fetch_by_keys, fetch_frame

__all__ = ["UNREACHABLE_ERRORS", "DBConn", "TableStoreDB"]


class TableStoreDB(TableStore):
    """A table in a SQL database.

    Args:
        name: the table's name in the database.
        dbconn: where it lives.
        data_sql_schema: SQLAlchemy ``Column``s, primary-key columns marked.
        create_table: create the table (on first use) when it does not exist.
    """

    def hash_rows(
        self, df: pd.DataFrame, table: str | None = None, json_texts: dict[str, list[str | None]] | None = None
    ) -> np.ndarray:
        """Row hashes; with ``json_texts``, also the JSON text of each JSON column, for ``insert_rows``.

        A SQL JSON column takes only what the database's JSON encoder writes: the rest is refused by name.
        """
        return hash_rows(df, self.get_schema(), table or self.name, strict_json=True, json_texts=json_texts)

    def json_texts(self, df: pd.DataFrame, table: str | None = None) -> dict[str, list[str | None]] | None:
        return json_column_texts(df, self.get_schema(), table or self.name, strict_json=True)

    def __init__(self, name: str, dbconn: DBConn, data_sql_schema: list[sa.Column], create_table: bool = True):
        if not data_sql_schema:
            raise ConfigurationError(f"table {name!r}: data_sql_schema is empty")
        if not any(c.primary_key for c in data_sql_schema):
            raise ConfigurationError(f"table {name!r}: no column is marked primary_key=True")
        dbconn.check_identifier(name, "table")
        for c in data_sql_schema:
            dbconn.check_identifier(c.name, f"table {name!r}: column")
        self.name = name
        self.dbconn = dbconn
        self.create_table = create_table
        self.data_sql_schema = [c._copy() for c in data_sql_schema]
        self.data_table = sa.Table(name, dbconn.metadata, *[c._copy() for c in data_sql_schema], extend_existing=True)
        self._ready = False

    def get_schema(self) -> list[sa.Column]:
        return self.data_sql_schema

    @property
    def kind(self) -> str:
        return self.dbconn.backend

    def sql_table(self) -> SQLTable:
        return SQLTable(self.dbconn, self.data_table)

    def prepare(self) -> None:
        if not self._ready:
            if self.create_table:
                self.dbconn.ensure_table(self.data_table)
            self._ready = True

    @contextmanager
    def _conn(self, conn: sa.Connection | None, write: bool) -> Iterator[sa.Connection]:
        self.prepare()
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
        base = sa.select(*json_text_columns(self.data_table, cols))
        with self._conn(conn, write=False) as c:
            if idx is None:
                df = fetch_frame(c, base, cols)
            else:
                key_cols = [k for k in idx.columns if k in self.data_table.c]
                df = fetch_by_keys(c, base, self.data_table, key_cols, idx, cols)
        return conform_types(decode_json_texts(df, self.data_sql_schema), self.data_sql_schema)

    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        with self._conn(conn, write=True) as c:
            self.dbconn.upsert(c, self.data_table, to_records(df), self.primary_keys)

    def insert_rows(self, df: pd.DataFrame, conn: Any = None, encoded: pd.DataFrame | None = None) -> None:
        """Insert new rows; ``encoded`` holds JSON columns already serialised (by ``hash_rows``), aligned
        with ``df``, which the bulk paths store as they are."""
        if len(df) == 0:
            return
        with self._conn(conn, write=True) as c:
            self.dbconn.insert_new(c, self.data_table, df, self.primary_keys, encoded=encoded)

    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        if len(idx) == 0:
            return
        with self._conn(conn, write=True) as c:
            delete_by_keys(c, self.data_table, self.primary_keys, idx)

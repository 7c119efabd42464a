"""The store interface: how a table's rows are read, written and deleted, and what else a store can do.

A store knows nothing of row metadata; the DataTable (compute layer) keeps that. Writing your own store
means implementing these few methods and passing ``datapipe_dagster.testing``'s conformance suite.

Capabilities beyond reading and writing are declared, never probed: ``TableStore.sql_table`` says
whether the rows are one table of a SQL database (so a DataTable joins the chunk's transaction and its
metadata in SQL, and an external-table scan can read by an updated-at column); a store that lists its
files with size and mtime implements ``FileListing`` (so a scan opens only changed files). A store that
writes new rows faster from the JSON text it hashed fills ``hash_rows(json_texts=)`` and takes
``insert_rows(encoded=)``; every other store ignores both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.store.rowhash import hash_rows
from datapipe_dagster.store.schema import coerce_frame, empty_frame

if TYPE_CHECKING:
    from datapipe_dagster.store.dbconn import DBConn


@dataclass(frozen=True)
class SQLTable:
    """Where a store's rows live when they are one table of a SQL database."""

    dbconn: DBConn
    """The database (a DataTable whose metadata lives in the same one writes both in one transaction)."""
    table: sa.Table
    """The table, its columns those of the store's schema."""


class TableStore(ABC):
    """A table of rows with a primary key, stored somewhere.

    ``conn`` arguments: when the store lives in the same database as the metadata, the DataTable passes
    its open SQLAlchemy connection so data and metadata commit in one transaction; other stores ignore it.
    """

    name: str
    schemaless: bool = False
    """True when the data columns are whatever the rows hold (``get_schema`` lists those seen so far)."""

    @abstractmethod
    def get_schema(self) -> list[sa.Column]:
        """All columns of the table (primary-key columns marked ``primary_key=True``)."""

    @property
    def kind(self) -> str:
        """What a person calls where the rows live (``sqlite``, ``postgresql``, ``filedir``, …): shown in
        asset descriptions and as the asset's kind."""
        return type(self).__name__.removeprefix("TableStore").lower() or "table"

    def sql_table(self) -> SQLTable | None:
        """The SQL table holding the rows, or None when the store is not one table of a SQL database.

        A store that returns one promises that ``read_rows``/``write_rows``/``delete_rows`` with
        ``conn`` (an open connection to ``dbconn``) act on ``table`` inside that connection's transaction,
        and that ``prepare`` creates ``table``.
        """
        return None

    def prepare(self) -> None:
        """Create what the store needs before its first read or write (idempotent; default: nothing)."""
        return None

    def get_primary_schema(self) -> list[sa.Column]:
        """The primary-key columns."""
        return [c for c in self.get_schema() if c.primary_key]

    @property
    def primary_keys(self) -> list[str]:
        return [c.name for c in self.get_primary_schema()]

    @abstractmethod
    def read_rows(self, idx: pd.DataFrame | None = None, conn: Any = None) -> pd.DataFrame:
        """Rows whose key columns match a row of ``idx`` (which may hold a subset of the key columns);
        all rows when ``idx`` is None. Order is unspecified."""

    @abstractmethod
    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        """Insert or replace the rows of ``df`` (already validated, every schema column present)."""

    def insert_rows(self, df: pd.DataFrame, conn: Any = None, encoded: pd.DataFrame | None = None) -> None:
        """Write rows the metadata says are new; stores may take a faster path than ``write_rows``.

        ``encoded``: the JSON columns' canonical text, aligned with ``df``, as ``hash_rows`` left it in
        ``json_texts`` (None when it left none); a store may write it as it is instead of serialising again.
        """
        self.write_rows(df, conn=conn)

    @abstractmethod
    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        """Delete the rows whose full primary keys are in ``idx``; unknown keys are ignored."""

    def validate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Check and coerce ``df`` to the schema; raises SchemaError naming table, column and key."""
        return coerce_frame(self.name, self.get_schema(), df)

    def empty(self) -> pd.DataFrame:
        return empty_frame(self.get_schema())

    def hash_rows(
        self, df: pd.DataFrame, table: str | None = None, json_texts: dict[str, list[str | None]] | None = None
    ) -> np.ndarray:
        """The content hash of every row of a validated frame (int64); rows read back hash as written.

        ``json_texts``: a store whose ``insert_rows`` can write the JSON text it hashed fills this dict
        (JSON column -> one text per row, None for a missing value); the default leaves it empty.
        """
        return hash_rows(df, self.get_schema(), table or self.name)

    def json_texts(self, df: pd.DataFrame, table: str | None = None) -> dict[str, list[str | None]] | None:
        """What ``hash_rows`` leaves in ``json_texts`` for these rows, computed alone (a writer encodes a
        batch of rows as it stores it, then hashes from the texts); None for a store that keeps none."""
        return None


@runtime_checkable
class FileListing(Protocol):
    """A store of one file per row that lists its files without opening them (``UpdateExternalTable``
    then reads only the files whose size or mtime changed)."""

    root: str
    """The folder every file of the table lives under."""

    def root_exists(self) -> bool:
        """Whether the folder exists (a missing one is more likely a missing mount than an empty table)."""
        ...

    def list_files(self) -> pd.DataFrame:
        """Every row's file: the key columns plus ``_path``, ``_size`` and ``_mtime_ns``."""
        ...

"""DataStore (where the metadata lives) and DataTable (a store plus its row metadata): binding and reading.

The write path (``store_chunk``, ``write``, ``prepare_write``/``apply_write``) is ``compute.table_write``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.table_write import TableWriter
from datapipe_dagster.meta.tables import MetaTable, SequenceTable, TransformMetaTable
from datapipe_dagster.meta.watermarks import WatermarkTable
from datapipe_dagster.store.base import SQLTable, TableStore
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.sql import AnalyzeOnGrowth, fetch_by_keys, fetch_frame, fetch_rows_by_keys


class DataStore:
    """Keeps the row metadata of every table and the state of every transform, in one database.

    Args:
        dbconn: the metadata database (the data tables may live elsewhere).
        create_meta_table: deprecated and ignored (datapipe's name): metadata tables are always created
            when missing. Passing it warns.
    """

    def __init__(self, dbconn: DBConn, create_meta_table: bool | None = None):
        if create_meta_table is not None:
            warnings.warn(
                "DataStore(create_meta_table=...) has no effect: metadata tables are always created when "
                "missing; drop the argument",
                DeprecationWarning,
                stacklevel=2,
            )
        self.meta_dbconn = dbconn
        self.seq = SequenceTable(dbconn)
        self.watermarks = WatermarkTable(dbconn, self.seq)
        self._tables: dict[str, DataTable] = {}
        self._ready = False

    def __repr__(self) -> str:
        return f"DataStore({self.meta_dbconn!r})"

    def ensure_ready(self) -> None:
        """Create the shared metadata tables when missing (idempotent; opens the first connection)."""
        if not self._ready:
            self.seq.create()
            self.watermarks.create()
            self._ready = True

    def get_or_create_table(self, name: str, store: TableStore) -> DataTable:
        dt = self._tables.get(name)
        if dt is None or dt.store is not store:
            dt = DataTable(self, name, store)
            self._tables[name] = dt
        return dt

    def transform_meta(
        self, name: str, key_schema: list[sa.Column], indexes: list[list[str]] | None = None
    ) -> TransformMetaTable:
        self.ensure_ready()
        tm = TransformMetaTable(self.meta_dbconn, name, key_schema, indexes)
        tm.create()
        return tm

    def current_seq(self) -> int:
        self.ensure_ready()
        with self.meta_dbconn.connect() as conn:
            return self.seq.current(conn)

    def last_seqs(self, tables: Iterable[DataTable]) -> dict[str, int]:
        """The highest write sequence of each table (0: never written); an index lookup each, one connection."""
        tables = list(tables)
        for dt in tables:
            dt.ensure_ready()
        with self.meta_dbconn.connect() as conn:
            return {dt.name: dt.meta.max_seq(conn) for dt in tables}


class DataTable(TableWriter):
    """A catalog table bound to a DataStore: its data store plus its row metadata.

    Rows come back from ``get_data`` in the order they were last written.
    """

    def __init__(self, ds: DataStore, name: str, store: TableStore):
        self.ds = ds
        self.name = name
        self.table_store = store
        self.primary_schema = store.get_primary_schema()
        self.primary_keys = [c.name for c in self.primary_schema]
        self.meta = MetaTable(ds.meta_dbconn, name, self.primary_schema)
        sql = store.sql_table()
        # A SQL table in the metadata database joins the chunk's transaction and is read with one join.
        self._sql: SQLTable | None = sql if sql is not None and sql.dbconn.same_database(ds.meta_dbconn) else None
        self._shared = self._sql is not None
        self._ready = False
        self._written = 0  # rows written (and deleted) through this object
        self._analyzed = 0  # of the rows written, those counted by the last statistics check
        self._statistics = AnalyzeOnGrowth()
        self._keyed_reads: tuple[sa.Select, dict[tuple[Any, ...], sa.Select]] | None = None
        """``read``'s statements, built once: the join of data and metadata, and its keyed reads by shape."""

    @property
    def store(self) -> TableStore:
        return self.table_store

    @property
    def sql(self) -> SQLTable | None:
        """The data's SQL table when it lives in the metadata's database (written in the chunk's
        transaction, read with one join), else None."""
        return self._sql

    def __repr__(self) -> str:
        return f"DataTable({self.name!r})"

    def ensure_ready(self) -> None:
        if not self._ready:
            self.ds.ensure_ready()
            self.meta.create()
            self.table_store.prepare()
            self._ready = True

    # ---------------------------------------------------------------- reading

    def get_data(self, idx: pd.DataFrame | None = None) -> pd.DataFrame:
        """Live rows (all, or those matching ``idx``, which may hold a subset of the key columns), in the
        order they were last written."""
        self.ensure_ready()
        with self.ds.meta_dbconn.connect() as conn:
            return self.read(conn, idx)

    def read(self, conn: sa.Connection, idx: pd.DataFrame | None = None) -> pd.DataFrame:
        """``get_data`` on the caller's connection."""
        if self._sql is not None:
            return self._read_joined(conn, self._sql.table, idx)
        data = self.table_store.read_rows(idx)
        if len(data) == 0:
            return data.reset_index(drop=True)
        order = self.meta.get_metadata(conn, idx)[self.primary_keys + ["seq"]]
        data = data.merge(order, on=self.primary_keys, how="left")
        data = data.sort_values("seq", kind="stable", na_position="last").drop(columns=["seq"])
        return data.reset_index(drop=True)

    def _joined(self) -> tuple[sa.Select, sa.Table, sa.Table]:
        """The live rows (data joined to metadata, JSON as text, then ``seq``), the data and metadata tables."""
        from datapipe_dagster.store.records import json_text_columns

        assert self._sql is not None
        d, m = self._sql.table, self.meta.table
        on = sa.and_(*[d.c[k] == m.c[k] for k in self.primary_keys])
        cols = [c.name for c in self.table_store.get_schema()]
        return sa.select(*json_text_columns(d, cols), m.c.seq).select_from(d.join(m, on)), d, m

    def scan_statement(
        self, columns: list[str], start: tuple[Any, ...] | None = None, past: bool = False, only: bool = False, limit: int | None = None
    ) -> sa.Select:
        """Live rows ordered by ``columns`` (key columns), then in write order, as ``shape_read`` takes them
        (``compute.key_scan``): all, or from the key ``start`` on (``past``: after its rows; ``only``: its
        rows alone), at most ``limit``."""
        base, d, m = self._joined()
        if start is not None:
            key, at = sa.tuple_(*[d.c[c] for c in columns]), sa.tuple_(*[sa.literal(v) for v in start])
            base = base.where(key == at if only else key > at if past else key >= at)
        stmt = base.order_by(*[d.c[c] for c in columns], m.c.seq)
        return stmt if limit is None else stmt.limit(limit)

    def shape_read(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows selected by ``_joined`` (object columns and ``seq``, in any order) as ``read`` returns them:
        in write order, JSON parsed, the declared types."""
        from datapipe_dagster.store.records import conform_types, decode_json_texts

        schema = self.table_store.get_schema()
        if len(df) > 1 and not df["seq"].is_monotonic_increasing:  # a whole-table read comes ordered
            df = df.sort_values("seq", kind="stable")
        df = df.drop(columns=["seq"]).reset_index(drop=True)
        return conform_types(decode_json_texts(df, schema), schema)

    def _read_joined(self, conn: sa.Connection, d: sa.Table, idx: pd.DataFrame | None) -> pd.DataFrame:
        from datapipe_dagster.store.records import conform_types, decode_json_texts

        store = self.table_store
        m = self.meta.table
        cols = [c.name for c in store.get_schema()]
        if self._keyed_reads is None:
            self._keyed_reads = (self._joined()[0], {})
        base, built = self._keyed_reads
        if idx is None:
            return self.shape_read(fetch_frame(conn, base.order_by(m.c.seq), cols + ["seq"]))
        sub = [c for c in idx.columns if c in self.primary_keys]
        # The keys filter the metadata too, not only the data (see ``fetch_by_keys``).
        rows = fetch_rows_by_keys(conn, base, d, sub, idx, also=(m,), built=built)
        if rows is not None:
            # Ordered and shaped in Python: the same frame as the pandas steps below, at a fraction
            # of their cost for the few rows of one changed key.
            rows.sort(key=lambda r: r[-1])
            data = {c: [r[i] for r in rows] if rows else pd.Series([], dtype=object) for i, c in enumerate(cols)}
            return conform_types(decode_json_texts(pd.DataFrame(data), store.get_schema()), store.get_schema())
        return self.shape_read(fetch_by_keys(conn, base, d, sub, idx, cols + ["seq"], also=(m,)))

    def get_metadata(self, idx: pd.DataFrame | None = None, include_deleted: bool = False) -> pd.DataFrame:
        """Row metadata, ordered by ``seq`` (last write last).

        Columns: the key columns; ``hash`` (content hash); ``create_ts`` (first written), ``update_ts``
        (content last changed), ``delete_ts`` (deleted, else null; deleted rows only with
        ``include_deleted``) and ``process_ts`` (when a write last produced the row's current state: its
        insert, change or delete; a write of identical content leaves all times alone), as Unix
        seconds; ``seq`` (the write sequence number).
        """
        self.ensure_ready()
        with self.ds.meta_dbconn.connect() as conn:
            df = self.meta.get_metadata(conn, idx, include_deleted=include_deleted)
        # A delete stamps update_ts too, so update_ts is the time of the last write of any kind.
        df.insert(df.columns.get_loc("delete_ts") + 1, "process_ts", df["update_ts"].astype("float64"))
        return df

    def get_size(self) -> int:
        """Number of live rows."""
        self.ensure_ready()
        t = self.meta.table
        with self.ds.meta_dbconn.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.delete_ts.is_(None))).scalar_one())

"""A slice of a table (which rows a write replaces, which a read returns), written and read by the engine.

The Dagster IO manager maps an asset and its partitions to a ``TableSlice``; everything that touches rows
or metadata happens here, so the adapter never opens a connection. Scope of a write (live rows under it
that the frame lacks are deleted, in the same transaction as the upserts):

- ``partition_column``: the rows whose column equals one of the partition keys;
- ``bucket_columns``: the rows whose key (those columns) hashes into one of the partitions' buckets;
- ``replace``: the whole table;
- otherwise nothing is deleted (rows are upserted).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.compute.partitioning import Buckets
from datapipe_dagster.compute.table_write import WriteResult
from datapipe_dagster.errors import ConfigurationError


@dataclass
class TableSlice:
    """What to read or write: a catalog table, and optionally the partitions that bound it."""

    table: str
    partitions: list[str] | None = None
    partition_column: str | None = None  # rows whose column equals a partition key
    bucket_columns: list[str] | None = None  # rows whose key hashes into a partition's bucket


def slice_keys(
    dt: DataTable,
    sl: TableSlice,
    buckets: Buckets | None,
    replace: bool = False,
    conn: sa.Connection | None = None,
) -> pd.DataFrame | None:
    """Keys under which rows a write's frame lacks are deleted (None: delete nothing). With ``conn``, the
    live keys are read inside the caller's write transaction.

    Raises:
        ConfigurationError: a ``partition_column`` that is not a primary-key column of the table.
    """
    if sl.partition_column is not None:
        col = next((x for x in dt.table_store.get_primary_schema() if x.name == sl.partition_column), None)
        if col is None:
            raise ConfigurationError(
                f"table {dt.name!r}: partition column {sl.partition_column!r} is not a primary-key column "
                f"(primary key: {dt.primary_keys})"
            )
        return typed_keys(sl.partitions or [], col)
    if sl.bucket_columns is None and not replace:
        return None
    alive = (dt.meta.get_metadata(conn) if conn is not None else dt.get_metadata())[dt.primary_keys]
    if sl.bucket_columns is not None and buckets is not None:
        return buckets.select(alive, sl.bucket_columns, sl.partitions or [])
    return alive


def write_slice(
    dt: DataTable, sl: TableSlice, df: pd.DataFrame, buckets: Buckets | None, replace: bool = False
) -> WriteResult:
    """Write ``df`` into the slice: upserts, and deletes of the slice's rows ``df`` lacks, in one transaction
    (no delete-then-insert gap)."""
    dt.ensure_ready()
    with dt.ds.meta_dbconn.begin_write() as conn:
        return dt.write(conn, df, processed_idx=slice_keys(dt, sl, buckets, replace, conn))


def read_slice(dt: DataTable, sl: TableSlice, buckets: Buckets | None) -> pd.DataFrame:
    """The live rows of a slice, in the order they were last written."""
    if sl.partition_column is not None:
        return dt.get_data(slice_keys(dt, sl, buckets))
    df = dt.get_data()
    if sl.bucket_columns is not None and buckets is not None:
        df = buckets.select(df, sl.bucket_columns, sl.partitions or [])
    return df


def typed_keys(values: list[str], col: sa.Column) -> pd.DataFrame:
    """Partition keys (always text) as values of the key column's type."""
    s = pd.Series(values, dtype=object)
    if isinstance(col.type, sa.Integer):
        s = s.astype("int64")
    elif isinstance(col.type, (sa.Float, sa.Numeric)):
        s = s.astype("float64")
    elif isinstance(col.type, sa.DateTime):
        s = pd.to_datetime(s)
    elif isinstance(col.type, sa.Date):
        s = pd.to_datetime(s).dt.date
    return pd.DataFrame({col.name: s})

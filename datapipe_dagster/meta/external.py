"""The metadata of external-table scans (``UpdateExternalTable``): the scan state and file fingerprints.

``datapipe_external_state`` holds, per scanning step, the highest updated-at value seen and when the last
full scan ran. ``<table>_meta_files`` holds, per row of a folder table, its file's size and mtime, so a
scan reads only files whose fingerprint changed.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.meta.tables import EXTERNAL_STATE_TABLE, key_columns_copy, own_table, row_meta_name
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.key_lists import key_clause
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.sql import fetch_frame, key_batches


class ExternalScanState:
    """Per scanning step: ``last_value`` (the encoded highest updated-at value seen) and ``last_full_ts``."""

    def __init__(self, dbconn: DBConn):
        self.dbconn = dbconn
        self.table = own_table(
            dbconn,
            EXTERNAL_STATE_TABLE,
            sa.Column("step", sa.String(255), primary_key=True),
            sa.Column("last_value", sa.Text, nullable=True),
            sa.Column("last_full_ts", sa.Float, nullable=True),
        )

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)

    def load(self, step: str) -> tuple[str | None, float | None] | None:
        """``(last_value, last_full_ts)`` of ``step``; None before its first scan."""
        t = self.table
        with self.dbconn.connect() as conn:
            row = conn.execute(sa.select(t.c.last_value, t.c.last_full_ts).where(t.c.step == step)).first()
        return None if row is None else (row[0], row[1])

    def save(self, conn: sa.Connection, step: str, value: str | None, full_ts: float | None = None) -> None:
        """Record ``value`` in the caller's write transaction; ``full_ts`` only after a full scan (else the
        time of the last full scan is kept)."""
        t = self.table
        if full_ts is None:
            full_ts = conn.execute(sa.select(t.c.last_full_ts).where(t.c.step == step)).scalar()
        rec: dict[str, Any] = {"step": step, "last_value": value, "last_full_ts": full_ts}
        self.dbconn.upsert(conn, t, [rec], ["step"])


class FileFingerprints:
    """Per row of a folder table: its file's ``size`` and ``mtime_ns`` at the last scan."""

    def __init__(self, dbconn: DBConn, table: str, primary_schema: list[sa.Column]):
        self.dbconn = dbconn
        self.keys = [c.name for c in primary_schema]
        self.table = own_table(
            dbconn,
            dbconn.identifier(f"{row_meta_name(table)}_files"),
            *key_columns_copy(primary_schema),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        )

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)

    def read(self, conn: sa.Connection) -> pd.DataFrame:
        """Every fingerprint: the key columns, ``size`` and ``mtime_ns``."""
        return fetch_frame(conn, sa.select(self.table), self.keys + ["size", "mtime_ns"])

    def missing(self, conn: sa.Connection, meta: sa.Table) -> pd.DataFrame:
        """Keys of live rows (row metadata ``meta``) without a fingerprint: written through the pipeline or
        before the first scan. Usually none, found by an indexed anti-join, not by fetching every live key."""
        f = self.table
        on = sa.and_(*[meta.c[k] == f.c[k] for k in self.keys])
        stmt = (
            sa.select(*[meta.c[k] for k in self.keys])
            .select_from(meta.outerjoin(f, on))
            .where(meta.c.delete_ts.is_(None), f.c[self.keys[0]].is_(None))
        )
        return fetch_frame(conn, stmt, self.keys)

    def save(self, conn: sa.Connection, fingerprints: pd.DataFrame, gone: pd.DataFrame) -> None:
        """Upsert ``fingerprints`` (keys, ``size``, ``mtime_ns``) and delete those of the ``gone`` keys,
        in the caller's write transaction."""
        self.dbconn.upsert(conn, self.table, to_records(fingerprints), self.keys)
        for batch in key_batches(gone, self.keys):
            conn.execute(sa.delete(self.table).where(key_clause(self.table, self.keys, batch, conn.dialect.name == "sqlite")))


def live_hashes(conn: sa.Connection, meta: sa.Table, keys: list[str]) -> pd.DataFrame:
    """The key columns and content ``hash`` of every live row of row metadata ``meta`` (a full scan
    compares them with the hashes of what it read)."""
    stmt = sa.select(*[meta.c[k] for k in keys], meta.c.hash).where(meta.c.delete_ts.is_(None))
    return fetch_frame(conn, stmt, keys + ["hash"])

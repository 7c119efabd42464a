"""The write path of a DataTable: rows validated, hashed and compared with their metadata, then written
with their metadata under one write-sequence allocation (``TableWriter``, a base of ``DataTable``)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.bulk_write import store_all_new
from datapipe_dagster.compute.small_write import SmallWrite, apply_small, prepare_small, small_write_fits
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.frames import anti_join, columns_of, key_positions
from datapipe_dagster.meta.tables import MetaTable
from datapipe_dagster.store.base import SQLTable, TableStore
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.sql import AnalyzeOnGrowth

if TYPE_CHECKING:
    from datapipe_dagster.compute.datatable import DataStore


@dataclass
class WriteResult:
    """Keys of the rows a write inserted, updated (content changed) and deleted."""

    inserted: pd.DataFrame
    updated: pd.DataFrame
    deleted: pd.DataFrame
    unchanged: int = 0

    @classmethod
    def empty(cls, keys: list[str]) -> WriteResult:
        """A write that changed nothing."""
        none = pd.DataFrame({k: [] for k in keys})
        return cls(inserted=none, updated=none, deleted=none)

    def changed_idx(self) -> pd.DataFrame:
        return pd.concat([self.inserted, self.updated, self.deleted], ignore_index=True)

    def counts(self) -> tuple[int, int, int]:
        """Rows inserted, updated and deleted."""
        return len(self.inserted), len(self.updated), len(self.deleted)


@dataclass
class _Diff:
    """Incoming rows against their stored metadata, one flag per row."""

    hashes: np.ndarray
    is_new: np.ndarray  # no live row under the key
    is_changed: np.ndarray  # a live row with other content
    unknown: np.ndarray  # the metadata never saw the key (a plain INSERT will do)
    create_ts: np.ndarray

    @property
    def to_write(self) -> np.ndarray:
        return self.is_new | self.is_changed


@dataclass
class PreparedWrite:
    """A write read and compared, not yet applied (``DataTable.prepare_write``)."""

    df: pd.DataFrame
    diff: _Diff
    deleted: pd.DataFrame
    texts: dict[str, list[str | None]]
    now: float

    @property
    def numbers(self) -> int:
        """How many sequence numbers ``apply_write`` gives out: one per row written or deleted."""
        return int(self.diff.to_write.sum()) + len(self.deleted)


class TableWriter(ABC):
    """Writing rows and their metadata; ``DataTable`` binds the attributes declared here."""

    ds: DataStore
    name: str
    table_store: TableStore
    primary_keys: list[str]
    meta: MetaTable
    _sql: SQLTable | None
    _shared: bool
    _written: int
    _analyzed: int
    _statistics: AnalyzeOnGrowth

    @abstractmethod
    def ensure_ready(self) -> None:
        """Create the table's metadata (and its store's tables) before the first write."""

    def _data_conn(self, conn: sa.Connection) -> sa.Connection | None:
        return conn if self._shared else None

    # ---------------------------------------------------------------- writing

    def store_chunk(self, data_df: pd.DataFrame, processed_idx: pd.DataFrame | None = None, now: float | None = None) -> pd.DataFrame:
        """Write rows; return the keys of rows inserted, changed or deleted.

        Rows whose content is unchanged are not rewritten and keep their update time. With
        ``processed_idx`` (keys, possibly a subset of the key columns), live rows under those keys that
        ``data_df`` does not hold are deleted.

        Raises:
            SchemaError: bad input (names the table, column and key); nothing is written.
        """
        self.ensure_ready()
        with self.ds.meta_dbconn.begin_write() as conn:
            res = store_all_new(self, conn, data_df, now) if processed_idx is None else None
            if res is None:  # not all new (or too few rows): compare with the stored metadata
                res = self.write(conn, data_df, processed_idx=processed_idx, now=now)
        self.maybe_analyze()
        return columns_of(res.changed_idx(), self.primary_keys).reset_index(drop=True)

    def delete_by_idx(self, idx: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
        """Delete the rows with these keys; returns their keys.

        ``idx`` holds full keys or a subset of the key columns; other columns (e.g. a frame of rows read
        with ``get_data``) are ignored, so the rows of a frame can be deleted by passing the frame.

        Raises:
            SchemaError: ``idx`` holds no primary-key column (names the table and its key columns).
        """
        keys = [c for c in idx.columns if c in self.primary_keys]
        if not keys:
            raise SchemaError(
                self.name,
                f"delete_by_idx needs key columns {self.primary_keys}; the frame has {list(map(str, idx.columns))}",
                self.primary_keys[0],
            )
        idx = idx[keys]
        self.ensure_ready()
        with self.ds.meta_dbconn.begin_write() as conn:
            res = self.write(conn, self.table_store.empty().iloc[0:0], processed_idx=idx, now=now)
        self.maybe_analyze()
        return res.deleted

    def write(
        self,
        conn: sa.Connection,
        data_df: pd.DataFrame,
        processed_idx: pd.DataFrame | None = None,
        now: float | None = None,
        validated: bool = False,
        write_data: bool = True,
    ) -> WriteResult:
        """``store_chunk`` inside the caller's write transaction ``conn`` (the metadata database).

        With ``write_data=False`` only the row metadata is updated: the data is already in the store
        (an external table being scanned), so it is neither rewritten nor deleted.
        """
        return self.apply_write(conn, self.prepare_write(conn, data_df, processed_idx, now, validated), write_data)

    def prepare_write(
        self,
        conn: sa.Connection,
        data_df: pd.DataFrame,
        processed_idx: pd.DataFrame | None = None,
        now: float | None = None,
        validated: bool = False,
    ) -> PreparedWrite | SmallWrite:
        """The reading half of ``write``: validate, hash, compare with the stored metadata. Takes no lock,
        so a commit writing several tables prepares them all before the first takes the sequence lock."""
        now = time.time() if now is None else now
        df = data_df if validated else self.table_store.validate(data_df)
        if processed_idx is not None:
            missing = [c for c in processed_idx.columns if c not in self.primary_keys]
            if missing:
                raise SchemaError(self.name, "processed_idx column is not a primary-key column", missing[0])
        texts: dict[str, list[str | None]] = {}
        if small_write_fits(self, df, processed_idx):
            return prepare_small(self, conn, df, processed_idx, now, texts)
        hashes = self._hash(df, texts)
        scoped = self._scoped_meta(conn, df, processed_idx)
        diff = self._diff(conn, df, hashes, now, scoped)
        return PreparedWrite(df, diff, self._gone(conn, df, processed_idx, scoped), texts, now)

    def apply_write(
        self, conn: sa.Connection, w: PreparedWrite | SmallWrite, write_data: bool = True, first: int | None = None
    ) -> WriteResult:
        """The writing half of ``write``: number the rows (the sequence lock, held to commit) and write.

        ``first``: the first of ``w.numbers`` sequence numbers the caller reserved in this transaction
        (a commit writing several tables reserves them all at once); None: reserved here."""
        if isinstance(w, SmallWrite):
            return apply_small(self, conn, w, write_data, first)
        pks, df, diff, deleted = self.primary_keys, w.df, w.diff, w.deleted
        n_write, numbers = int(diff.to_write.sum()), w.numbers
        if numbers:
            if first is None:
                first = self.ds.seq.allocate(conn, numbers)
            if n_write:
                encoded = pd.DataFrame(w.texts, index=df.index, dtype=object) if w.texts and write_data else None
                self._write_rows(conn, df, diff, first, w.now, encoded, write_data)
            if len(deleted):
                if write_data:
                    self.table_store.delete_rows(deleted, conn=self._data_conn(conn))
                self._mark_deleted(conn, deleted, first + n_write, w.now)
        self._written += numbers
        return WriteResult(
            inserted=df.loc[diff.is_new, pks].reset_index(drop=True),
            updated=df.loc[diff.is_changed, pks].reset_index(drop=True),
            deleted=deleted,
            unchanged=len(df) - n_write,
        )

    def _hash(self, df: pd.DataFrame, texts: dict[str, list[str | None]]) -> np.ndarray:
        """Row hashes; a store that can store the JSON text it hashed leaves it in ``texts`` (serialised once)."""
        return self.table_store.hash_rows(df, self.name, json_texts=texts)

    def _scoped_meta(self, conn: sa.Connection, df: pd.DataFrame, processed_idx: pd.DataFrame | None) -> pd.DataFrame | None:
        """The metadata (deleted rows included) of every row under ``processed_idx``, when each row of
        ``df`` lies under it (a transform's commit): one query then serves both the comparison and the
        deletes. None otherwise."""
        if processed_idx is None or not len(processed_idx) or not len(df):
            return None
        sub = [c for c in processed_idx.columns if c in self.primary_keys]
        if not (key_positions(processed_idx[sub].drop_duplicates(), df, sub) >= 0).all():
            return None
        return self.meta.get_existing(conn, processed_idx[sub])

    def _diff(
        self, conn: sa.Connection, df: pd.DataFrame, hashes: np.ndarray, now: float, scoped: pd.DataFrame | None = None
    ) -> _Diff:
        """Compare the incoming rows with their stored metadata (one keyed query, or ``scoped``)."""
        existing = scoped if scoped is not None else (self.meta.get_existing(conn, df[self.primary_keys]) if len(df) else None)
        if existing is None or not len(existing):
            new = np.ones(len(df), dtype=bool)
            return _Diff(hashes, new, np.zeros(len(df), dtype=bool), new, np.full(len(df), now))
        pos = key_positions(existing, df, self.primary_keys)
        known = pos >= 0
        at = np.where(known, pos, 0)
        alive = known & existing["delete_ts"].isna().to_numpy()[at]
        same = alive & (existing["hash"].to_numpy(dtype=np.int64)[at] == hashes)
        create_ts = np.where(alive, existing["create_ts"].to_numpy(dtype="float64")[at], now)
        return _Diff(hashes, ~alive, alive & ~same, ~known, create_ts)

    def _gone(
        self, conn: sa.Connection, df: pd.DataFrame, processed_idx: pd.DataFrame | None, scoped: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Live rows under ``processed_idx`` that ``df`` does not hold: the ones to delete."""
        pks = self.primary_keys
        if processed_idx is None or not len(processed_idx):
            return pd.DataFrame({c: [] for c in pks})
        if scoped is not None:
            alive_keys = scoped.loc[scoped["delete_ts"].isna().to_numpy(), pks].reset_index(drop=True)
        else:
            alive_keys = self.meta.get_alive_keys(conn, processed_idx)
        if not len(alive_keys):
            return pd.DataFrame({c: [] for c in pks})
        return anti_join(alive_keys[pks], df, pks)

    def _write_rows(
        self,
        conn: sa.Connection,
        df: pd.DataFrame,
        diff: _Diff,
        first: int,
        now: float,
        encoded: pd.DataFrame | None,
        write_data: bool,
    ) -> None:
        """Write new and changed rows and their metadata, numbered from ``first`` in frame order.

        Keys the metadata has never seen take the plain-INSERT (COPY) path; the rest are upserts.
        """
        wdf = df.loc[diff.to_write]
        fresh = diff.unknown[diff.to_write]
        data_conn = self._data_conn(conn)
        if write_data:
            if fresh.any():
                rows = wdf.loc[fresh]
                texts = None if encoded is None else encoded.loc[rows.index]
                self.table_store.insert_rows(rows, conn=data_conn, encoded=texts)
            if (~fresh).any():
                self.table_store.write_rows(wdf.loc[~fresh], conn=data_conn)
        n = len(wdf)
        meta = wdf[self.primary_keys].copy()
        meta["hash"] = diff.hashes[diff.to_write]
        meta["create_ts"] = diff.create_ts[diff.to_write]
        meta["update_ts"] = now
        meta["delete_ts"] = None
        meta["seq"] = np.arange(first, first + n, dtype=np.int64)
        if fresh.any():
            self.meta.insert(conn, meta.loc[fresh])
        if (~fresh).any():
            self.meta.upsert(conn, meta.loc[~fresh])

    def maybe_analyze(self) -> None:
        """Refresh PostgreSQL's planner statistics of this table (metadata and data) once it has grown
        enough since the last time (``AnalyzeOnGrowth``)."""
        grown, self._analyzed = self._written - self._analyzed, self._written
        tables = [self.meta.table] + ([self._sql.table] if self._sql is not None else [])
        self._statistics.grew(self.ds.meta_dbconn, grown, tables)

    def _mark_deleted(self, conn: sa.Connection, keys: pd.DataFrame, first_seq: int, now: float) -> None:
        t = self.meta.table
        pks = self.primary_keys
        params = [
            {**{f"k_{k}": r[k] for k in pks}, "d_ts": now, "d_seq": first_seq + i}
            for i, r in enumerate(to_records(keys[pks]))
        ]
        stmt = (
            sa.update(t)
            .where(*[t.c[k] == sa.bindparam(f"k_{k}") for k in pks])
            .values(delete_ts=sa.bindparam("d_ts"), update_ts=sa.bindparam("d_ts"), seq=sa.bindparam("d_seq"))
        )
        conn.execute(stmt, params)

"""Ingest of many new rows without asking which keys exist (issue 11).

A ``store_chunk`` of new events spent about a fifth of its time (PostgreSQL) on the query that finds which
of its keys the metadata already holds, to learn that none does. Here a large write first assumes that
every key is new: it takes the write-sequence lock, then inserts data and metadata with plain INSERTs
(COPY on PostgreSQL) inside a SAVEPOINT. Any known key makes an INSERT fail on the primary key; the
savepoint is rolled back (the sequence numbers with it) and the write takes the general compare path,
which then reads the existing metadata.

Why it is the general path's result exactly: with no key in the metadata, the general path also hashes
the rows, numbers them in frame order from one allocation, takes ``now`` as create and update time and
inserts both tables with the same plain INSERTs. A data row without metadata (a table written outside
the library) also fails the insert and goes the general way, which upserts it.

A frame of rewritten rows (the usual ``store_chunk`` of changed events) would hash every row and fail its
first INSERT only to start over: before the attempt, ``PROBE_KEYS`` keys spread over the frame are looked
up in the metadata (one indexed query), and a known one sends the write the general way at once. The probe
only decides which path is tried first: a known key it misses still fails the INSERT as before.

Why no write is lost: the sequence lock is taken before the first INSERT, so two bulk writers never
insert at the same time; the second waits for the first to commit, then fails on the first's keys and
compares against them, its write numbered later (the later write wins, as on the general path).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.frames import anti_join, key_order
from datapipe_dagster.store.dbconn import UNIQUE_VIOLATIONS
from datapipe_dagster.store.key_lists import key_clause
from datapipe_dagster.store.sql import key_batches

if TYPE_CHECKING:
    from datapipe_dagster.compute.table_write import TableWriter, WriteResult

BULK_MIN_ROWS = 1000
"""Below this the existence query is cheap, and a failed attempt (a chunk of rewritten rows) would cost
more than it saves."""

PROBE_KEYS = 16
"""Keys of a frame looked up before an all-new insert is tried (``some_key_known``)."""


def some_key_known(w: TableWriter, conn: sa.Connection, keys: pd.DataFrame) -> bool:
    """Whether the metadata holds (live or deleted) one of ``PROBE_KEYS`` keys spread evenly over ``keys``:
    one indexed lookup, against the hashing and the failed INSERT of an all-new attempt on known keys."""
    if not len(keys):
        return False
    at = np.unique(np.linspace(0, len(keys) - 1, min(len(keys), PROBE_KEYS)).astype(np.int64))
    pks = w.primary_keys
    t = w.meta.table
    values = next(key_batches(keys.iloc[at], pks))
    stmt = sa.select(sa.literal(1)).select_from(t).where(key_clause(t, pks, values, conn.dialect.name == "sqlite")).limit(1)
    return conn.execute(stmt).first() is not None


def store_all_new(w: TableWriter, conn: sa.Connection, data_df: pd.DataFrame, now: float | None) -> WriteResult | None:
    """``w.write(conn, data_df, now=now)`` for a frame of keys the table has never seen, or None (nothing
    written, the savepoint rolled back) when the bulk path does not apply or some key is known.

    Applies to frames of at least ``BULK_MIN_ROWS`` rows stored in a SQL table of the metadata's database
    (one transaction holds both). Raises ``SchemaError`` on bad input, as ``write`` does.
    """
    # Anything but a large frame (None included) goes the general way, which names what is wrong.
    if not isinstance(data_df, pd.DataFrame) or len(data_df) < BULK_MIN_ROWS or not w._shared or w._sql is None:
        return None
    now = time.time() if now is None else now
    df = w.table_store.validate(data_df)
    return insert_all_new(w, conn, df, now, pd.DataFrame({c: [] for c in w.primary_keys}))


def insert_all_new(w: TableWriter, conn: sa.Connection, df: pd.DataFrame, now: float, gone: pd.DataFrame) -> WriteResult | None:
    """Insert the validated rows of ``df`` as new and delete the live rows ``gone`` (keys the caller read
    before), numbered as ``apply_write`` numbers them; None (savepoint rolled back) on a known key."""
    from datapipe_dagster.compute.table_write import WriteResult

    assert w._sql is not None
    if some_key_known(w, conn, df[w.primary_keys]):
        return None
    pks = w.primary_keys
    n = len(df)
    # The rows go in in key order, as ``insert_plain`` puts them (``in_key_order``), but numbered in frame
    # order: sorted here, so the texts the streamed COPY encodes line up with the rows they hash.
    order = key_order(df, pks)
    rows = df if order is None else df.iloc[order]
    texts: dict[str, list[str | None]] = {}
    streamed = _streams(w, conn)
    hashes = None if streamed else w._hash(rows, texts)
    try:
        with conn.begin_nested():
            first = w.ds.seq.allocate(conn, n + len(gone))
            if hashes is None:
                hashes = _insert_then_hash(w, conn, rows, texts)
            else:
                encoded = pd.DataFrame(texts, index=rows.index, dtype=object) if texts else None
                w._sql.dbconn.insert_plain(conn, w._sql.table, rows, encoded, ordered=True)
            seqs = first + (np.arange(n, dtype=np.int64) if order is None else order)
            w.ds.meta_dbconn.insert_plain(conn, w.meta.table, _meta_frame(rows[pks], hashes, seqs, now), ordered=True)
    except UNIQUE_VIOLATIONS:
        return None
    if len(gone):
        w.table_store.delete_rows(gone, conn=conn)
        w._mark_deleted(conn, gone, first + n, now)
    w._written += n + len(gone)
    none = df.iloc[0:0][pks].reset_index(drop=True)
    return WriteResult(inserted=df[pks].reset_index(drop=True), updated=none, deleted=gone)


def _streams(w: TableWriter, conn: sa.Connection) -> bool:
    """Whether ``_insert_then_hash`` serves: PostgreSQL (where the server works while the client encodes)
    and a store that encodes its JSON apart from hashing."""
    return conn.dialect.name == "postgresql" and w.table_store.json_texts(w.table_store.empty(), w.name) is not None


def _insert_then_hash(w: TableWriter, conn: sa.Connection, df: pd.DataFrame, texts: dict[str, list[str | None]]) -> np.ndarray:
    """Insert the data rows, their JSON encoded batch by batch as COPY sends them, then hash the rows
    from those texts (left in ``texts``).

    Hashing first, then sending, adds the client's encoding to the server's storing; streamed, the
    server stores one batch while the client encodes the next (two cores overlap). The texts stored and
    hashed are the same. So are the errors: when anything fails but a known key (bad input found while
    encoding a batch, a value the server refuses), the whole frame is hashed first, so a frame the
    general path refuses fails with its error, naming table, column and key. A known key fails the
    insert, and the general path then hashes and reports bad input as it always does.
    """
    assert w._sql is not None
    parts: dict[str, list[str | None]] = {}

    def encode(part: pd.DataFrame) -> dict[str, list[str | None]] | None:
        got = w.table_store.json_texts(part, w.name)
        for name, vals in (got or {}).items():
            parts.setdefault(name, []).extend(vals)
        return got

    try:
        w._sql.dbconn.insert_plain(conn, w._sql.table, df, encode=encode)
    except UNIQUE_VIOLATIONS:
        raise
    except Exception:
        w._hash(df, {})  # bad input: the general path's error
        raise
    texts.update(parts)
    return w._hash(df, texts)


def _meta_frame(keys: pd.DataFrame, hashes: np.ndarray, seqs: np.ndarray, now: float) -> pd.DataFrame:
    """The metadata rows the general path writes for new keys (``TableWriter._write_rows``), the keys'
    sequence numbers given (in frame order, whatever order the rows are inserted in)."""
    meta = keys.copy()
    meta["hash"] = hashes
    meta["create_ts"] = np.full(len(keys), now)
    meta["update_ts"] = now
    meta["delete_ts"] = None
    meta["seq"] = seqs
    return meta


COMMIT_MIN_ROWS = 500
"""A transform commit's output of fewer rows goes the general way (an incremental run's chunks are small)."""


def commit_all_new(w: TableWriter, conn: sa.Connection, df: pd.DataFrame, scope: pd.DataFrame | None, now: float) -> WriteResult | None:
    """``apply_write(prepare_write(conn, df, processed_idx=scope, now=now, validated=True))`` without
    reading the output's metadata, for a commit whose keys have no output row yet (a first run); None
    when it does not apply or some key is known (nothing written).

    Why nothing else under ``scope`` can exist when the insert succeeds: the output's primary key is
    exactly the scope's columns, so each processed key holds at most one row, the one ``df`` inserts
    (the insert fails if it exists, live or deleted). Processed keys with no row in ``df`` are looked up
    (their live rows are deleted, as the general path does). A concurrent writer of the output (another
    transform, a user's ``store_chunk``) takes the sequence lock before writing, like this insert: either
    it committed first and the insert fails, or it waits and then sees these rows.
    """
    if len(df) < COMMIT_MIN_ROWS or not w._shared or w._sql is None:
        return None
    pks = w.primary_keys
    empty = pd.DataFrame({c: [] for c in pks})
    if scope is None:
        gone = empty
    elif sorted(scope.columns) != sorted(pks):
        return None  # several rows per key may exist: only the metadata can tell which to delete
    else:
        rest = anti_join(scope[pks], df, pks)
        alive = w.meta.get_alive_keys(conn, rest) if len(rest) else empty
        gone = anti_join(alive[pks], df, pks) if len(alive) else empty
    return insert_all_new(w, conn, df, now, gone)

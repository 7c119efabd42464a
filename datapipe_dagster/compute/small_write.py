"""The write path for a few rows (at most ``SMALL_ROWS``): compared with the stored metadata in plain
Python and written as records, with the same result as the frame path of ``compute.table_write``.

One changed event costs three writes (the event, then each output of the transform). On the frame path
each takes about a hundred pandas operations on one-row frames (0.1-1 ms each), where the SQL itself takes
well under a millisecond; here the same reads and writes are done on lists of tuples and dicts. The
statements are the ones the frame path runs, with one difference: new rows are upserted directly (the
frame path inserts them under a savepoint and falls back to an upsert on a conflict, which is the same
result in two more round trips).

Only a SQL table in the metadata's database (``TableStoreDB``) with text or integer key columns takes
this path: its keys read back from the database compare equal to the frame's plain values.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.store.database import TableStoreDB
from datapipe_dagster.store.key_lists import key_clause_bound, key_params
from datapipe_dagster.store.records import plain_list, to_records

if TYPE_CHECKING:
    from datapipe_dagster.compute.table_write import TableWriter, WriteResult

SMALL_ROWS = 64
"""Writes of at most this many rows (and cleanup scopes of at most this many keys) take this path."""

_KEY_TYPES = (sa.String, sa.Integer)

@dataclass
class SmallWrite:
    """A small write read and compared, not yet applied (what ``prepare_write`` returns for it)."""

    df: pd.DataFrame
    records: list[dict[str, Any]]
    keys: list[tuple[Any, ...]]
    hashes: list[int]
    alive: list[bool]  # a live row under the key
    known: list[bool]  # the metadata has the key (live or deleted)
    same: list[bool]  # a live row with the same content
    create_ts: list[float]
    deleted: pd.DataFrame
    now: float

    @property
    def to_write(self) -> list[int]:
        return [i for i, s in enumerate(self.same) if not s]

    @property
    def numbers(self) -> int:
        """How many sequence numbers ``apply_small`` gives out: one per row written or deleted."""
        return self.same.count(False) + len(self.deleted)


def small_write_fits(w: TableWriter, df: pd.DataFrame, processed_idx: pd.DataFrame | None) -> bool:
    """Whether this write takes the small path."""
    store = w.table_store
    return (
        len(df) <= SMALL_ROWS
        and (processed_idx is None or len(processed_idx) <= SMALL_ROWS)
        and w._sql is not None
        and type(store).write_rows is TableStoreDB.write_rows
        and type(store).insert_rows is TableStoreDB.insert_rows
        and all(isinstance(c.type, _KEY_TYPES) and not isinstance(c.type, sa.Boolean) for c in w.meta.table.primary_key)
    )


_EMPTY: dict[tuple[str, ...], pd.DataFrame] = {}


def _no_keys(pks: list[str]) -> pd.DataFrame:
    """No keys: the frame path's ``pd.DataFrame({c: [] for c in pks})``, copied from one built once."""
    empty = _EMPTY.get(tuple(pks))
    if empty is None:
        empty = _EMPTY[tuple(pks)] = pd.DataFrame({c: [] for c in pks})
    return empty.copy()


_SELECTS: weakref.WeakKeyDictionary[sa.Table, dict[tuple[Any, ...], sa.Select]] = weakref.WeakKeyDictionary()


def _select(t: sa.Table, pks: list[str], cols: list[str], alive: bool, seek: bool) -> sa.Select:
    """The frame path's keyed metadata read (``get_existing``, or ``get_alive_keys`` when ``alive``) on
    ``cols``, built once per table and shape: building it cost more than running it."""
    by_shape = _SELECTS.setdefault(t, {})
    shape = (tuple(pks), tuple(cols), alive, seek)
    stmt = by_shape.get(shape)
    if stmt is None:
        if alive:
            base = sa.select(*[t.c[c] for c in pks]).where(t.c.delete_ts.is_(None))
        else:
            base = sa.select(*[t.c[c] for c in pks + ["hash", "create_ts", "delete_ts"]])
        stmt = by_shape[shape] = base.where(key_clause_bound(t, cols, seek))
    return stmt


def _fetch(
    conn: sa.Connection, t: sa.Table, pks: list[str], cols: list[str], values: list[Any], alive: bool = False
) -> list[tuple[Any, ...]]:
    """Rows whose ``cols`` match ``values`` (the frame path's ``fetch_by_keys``, as tuples)."""
    if not values:
        return []
    seek = conn.dialect.name == "sqlite"
    rows = conn.execute(_select(t, pks, cols, alive, seek), key_params((t,), cols, values, seek)).fetchall()
    return [tuple(r) for r in rows]


def prepare_small(
    w: TableWriter,
    conn: sa.Connection,
    df: pd.DataFrame,
    processed_idx: pd.DataFrame | None,
    now: float,
    texts: dict[str, list[str | None]],
) -> SmallWrite:
    """``TableWriter.prepare_write`` for a small validated ``df``: hash, read the metadata, compare."""
    pks = w.primary_keys
    n = len(pks)
    hashes = w._hash(df, texts).tolist()
    records = to_records(df)
    keys = [tuple(r[k] for k in pks) for r in records]
    t = w.meta.table
    sub = [] if processed_idx is None else [c for c in processed_idx.columns if c in pks]
    has_scope = processed_idx is not None and len(processed_idx) > 0
    scope = list(zip(*[plain_list(processed_idx[c]) for c in sub], strict=True)) if has_scope else []  # type: ignore[index]
    scope_values = list(dict.fromkeys(scope))
    at = [pks.index(c) for c in sub]
    # As the frame path (``_scoped_meta``): when every row lies under the scope, one query serves both.
    scoped = bool(scope) and bool(records) and all(tuple(k[i] for i in at) in scope_values for k in keys)
    if len(sub) == 1:
        scope_values = [v[0] for v in scope_values]
    if scoped:
        rows = _fetch(conn, t, pks, sub, scope_values)
    else:
        rows = _fetch(conn, t, pks, pks, list(dict.fromkeys(keys)) if n > 1 else [k[0] for k in keys])
    existing = {r[:n]: r[n:] for r in rows}
    alive, known, same, create_ts = [], [], [], []
    for k, h in zip(keys, hashes, strict=True):
        m = existing.get(k)
        live = m is not None and m[2] is None
        known.append(m is not None)
        alive.append(live)
        same.append(live and int(m[0]) == h)  # type: ignore[index]
        create_ts.append(float(m[1]) if live else now)  # type: ignore[index]
    gone: list[tuple[Any, ...]] = []
    if scope:
        if scoped:
            live_keys = [r[:n] for r in rows if r[n + 2] is None]
        else:
            live_keys = _fetch(conn, t, pks, sub, scope_values, alive=True)
        written = set(keys)
        gone = [k for k in live_keys if k not in written]
    deleted = pd.DataFrame({c: [k[i] for k in gone] for i, c in enumerate(pks)}) if gone else _no_keys(pks)
    return SmallWrite(df, records, keys, hashes, alive, known, same, create_ts, deleted, now)


def apply_small(w: TableWriter, conn: sa.Connection, s: SmallWrite, write_data: bool, first: int | None = None) -> WriteResult:
    """``TableWriter.apply_write`` of a ``SmallWrite``: number the rows (from ``first`` when the caller
    reserved them), write records."""
    pks = w.primary_keys
    rows = s.to_write
    n_write, n_del = len(rows), len(s.deleted)
    if n_write + n_del:
        if first is None:
            first = w.ds.seq.allocate(conn, n_write + n_del)
        if n_write:
            if write_data and w._sql is not None:  # small_write_fits checked it is
                conn.execute(w._sql.dbconn.upsert_statement(w._sql.table, pks), [s.records[i] for i in rows])
            meta = [
                {
                    **dict(zip(pks, s.keys[i], strict=True)),
                    "hash": s.hashes[i], "create_ts": s.create_ts[i], "update_ts": s.now, "delete_ts": None, "seq": first + j,
                }
                for j, i in enumerate(rows)
            ]
            conn.execute(w.meta.dbconn.upsert_statement(w.meta.table, pks), meta)
        if n_del:
            if write_data:
                w.table_store.delete_rows(s.deleted, conn=conn)
            w._mark_deleted(conn, s.deleted, first + n_write, s.now)
    w._written += n_write + n_del
    new = [i for i in rows if not s.alive[i]]
    changed = [i for i in rows if s.alive[i]]
    from datapipe_dagster.compute.small_result import SmallResult  # it subclasses table_write's WriteResult

    return SmallResult(s.df, pks, new, changed, s.deleted)


"""The metadata tables: per-row metadata of every data table, the write sequence, per-key transform state.

Row metadata (``<table>_meta``): the key columns, a content hash, create/update/delete times (a delete is
soft: the row's metadata stays with ``delete_ts`` set) and ``seq``, a number from one database-wide
sequence, taken in commit order. ``seq`` orders rows by their last write and tells a transform which rows
it has not seen yet: a row is new to a transform key when its ``seq`` exceeds the key's ``processed_seq``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.frames import columns_of
from datapipe_dagster.meta.keyhash import key_hash
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.key_lists import key_clause_bound, key_params
from datapipe_dagster.store.paged import fetch_frame_paged
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.sql import (
    UNNEST_MIN_KEYS,
    distinct_keys,
    fetch_by_keys,
    fetch_frame,
    pg_unnest,
    rows_frame,
)

META_COLUMNS = ["hash", "create_ts", "update_ts", "delete_ts", "seq"]

SEQ_TABLE = "datapipe_seq"
WATERMARK_TABLE = "datapipe_watermarks"
EXTERNAL_STATE_TABLE = "datapipe_external_state"
TRANSFORM_META_SUFFIX = "__transform_meta"


def row_meta_name(table: str) -> str:
    """The row-metadata table of data table ``table`` (before fitting to the backend's name limit)."""
    return f"{table}_meta"


def transform_meta_name(step: str) -> str:
    """The per-key state table of transform ``step`` (before fitting to the backend's name limit)."""
    return f"{step}{TRANSFORM_META_SUFFIX}"


def internal_table_names(table: str) -> list[str]:
    """Tables the metadata layer creates for a data table ``table`` (fitting is applied by the caller)."""
    return [row_meta_name(table), f"{row_meta_name(table)}_files"]


def own_table(dbconn: DBConn, name: str, *items: Any) -> sa.Table:
    """A metadata table in a MetaData of its own.

    Not in ``dbconn.metadata``: a Table redefined there (``extend_existing``) gains a second copy of its
    indexes, so after one failed CREATE every retry failed with "index … already exists"; and a catalog
    table of the same name would be silently merged into it.
    """
    return sa.Table(name, sa.MetaData(schema=dbconn.schema), *items)


def key_columns_copy(primary_schema: list[sa.Column]) -> list[sa.Column]:
    return [sa.Column(c.name, c.type, primary_key=True) for c in primary_schema]


class SequenceTable:
    """One database-wide counter. ``allocate`` runs inside the writer's transaction and holds the row lock
    until commit, so sequence numbers become visible in increasing order."""

    def __init__(self, dbconn: DBConn):
        self.dbconn = dbconn
        self.table = own_table(
            dbconn,
            SEQ_TABLE,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("value", sa.BigInteger, nullable=False),
        )
        # Built once: every write asks for numbers, and building a statement costs more than running it.
        c = self.table.c
        self._current = sa.select(c.value).where(c.id == 1)
        self._allocate = (
            sa.update(self.table).where(c.id == 1).values(value=c.value + sa.bindparam("n", type_=sa.BigInteger))
        ).returning(c.value)

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)
        with self.dbconn.begin_write() as conn:
            if conn.execute(sa.select(self.table.c.value).where(self.table.c.id == 1)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(self.table).values(id=1, value=0))
                except sa.exc.IntegrityError:
                    pass

    def allocate(self, conn: sa.Connection, n: int) -> int:
        """Reserve ``n`` numbers; returns the first."""
        last = conn.execute(self._allocate, {"n": n}).scalar_one()
        return int(last) - n + 1

    def current(self, conn: sa.Connection) -> int:
        return int(conn.execute(self._current).scalar_one())


class MetaTable:
    """Row metadata of one data table."""

    def __init__(self, dbconn: DBConn, name: str, primary_schema: list[sa.Column]):
        self.dbconn = dbconn
        self.name = name
        self.primary_keys = [c.name for c in primary_schema]
        # Names that fit the backend are the historical ones; longer ones get a stable hashed suffix.
        self.table = own_table(
            dbconn,
            dbconn.identifier(row_meta_name(name)),
            *key_columns_copy(primary_schema),
            sa.Column("hash", sa.BigInteger, nullable=False),
            sa.Column("create_ts", sa.Float, nullable=False),
            sa.Column("update_ts", sa.Float, nullable=False),
            sa.Column("delete_ts", sa.Float, nullable=True),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Index(dbconn.identifier(f"ix_{row_meta_name(name)}_seq"), "seq"),
        )

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)

    def get_existing(self, conn: sa.Connection, idx: pd.DataFrame) -> pd.DataFrame:
        """Metadata (deleted rows included) of the rows whose key columns match ``idx`` (all key
        columns, or a subset: every row under those)."""
        cols = self.primary_keys + ["hash", "create_ts", "delete_ts"]
        base = sa.select(*[self.table.c[c] for c in cols])
        sub = [c for c in idx.columns if c in self.primary_keys]
        return fetch_by_keys(conn, base, self.table, sub, idx, cols)

    def get_alive_keys(self, conn: sa.Connection, idx: pd.DataFrame) -> pd.DataFrame:
        """Keys of live rows whose key columns match ``idx`` (which may hold a subset of the key columns)."""
        sub = [c for c in idx.columns if c in self.primary_keys]
        base = sa.select(*[self.table.c[c] for c in self.primary_keys]).where(self.table.c.delete_ts.is_(None))
        return fetch_by_keys(conn, base, self.table, sub, idx, self.primary_keys)

    def upsert(self, conn: sa.Connection, df: pd.DataFrame) -> None:
        self.dbconn.upsert(conn, self.table, to_records(df), self.primary_keys)

    def insert(self, conn: sa.Connection, df: pd.DataFrame) -> None:
        """Insert metadata of keys not yet in the table."""
        self.dbconn.insert_new(conn, self.table, df, self.primary_keys)

    def get_metadata(
        self, conn: sa.Connection, idx: pd.DataFrame | None = None, include_deleted: bool = False
    ) -> pd.DataFrame:
        cols = self.primary_keys + META_COLUMNS
        base = sa.select(*[self.table.c[c] for c in cols])
        if not include_deleted:
            base = base.where(self.table.c.delete_ts.is_(None))
        if idx is None:
            df = fetch_frame(conn, base.order_by(self.table.c.seq), cols)
        else:
            sub = [c for c in idx.columns if c in self.primary_keys]
            df = fetch_by_keys(conn, base, self.table, sub, idx, cols)
            df = df.sort_values("seq", kind="stable").reset_index(drop=True)
        return df

    def max_seq(self, conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(self.table.c.seq), 0))).scalar_one())


class TransformMetaTable:
    """Per transform key: the sequence number it was last processed at and whether that succeeded.

    Each key's stable hash (``meta.keyhash.key_hash``) is kept in the indexed ``key_hash`` column, so the
    keys of one hash range (a partition) are read by an index range scan.
    """

    BACKFILL_CHUNK = 10_000

    def __init__(
        self, dbconn: DBConn, name: str, key_schema: list[sa.Column], indexes: list[list[str]] | None = None
    ):
        self.dbconn = dbconn
        self.name = name
        self.keys = [c.name for c in key_schema]
        self.statements: dict[tuple[object, ...], Any] = {}  # queries built once for this state (compute.stale)
        # Further indexes on key columns (a cross-join transform's factors), created with the table.
        extra = [
            sa.Index(dbconn.identifier(f"ix_{transform_meta_name(name)}_{'_'.join(cols)}"), *cols)
            for cols in indexes or []
        ]
        # "__transform_meta" keeps a transform's state apart from a table's "<name>_meta" of the same name.
        self.table = own_table(
            dbconn,
            dbconn.identifier(transform_meta_name(name)),
            *key_columns_copy(key_schema),
            sa.Column("processed_seq", sa.BigInteger, nullable=False),
            sa.Column("process_ts", sa.Float, nullable=False),
            sa.Column("is_success", sa.Boolean, nullable=False),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("traceback", sa.Text, nullable=True),
            # Nullable only so a state table created before the column existed can gain it (ALTER TABLE).
            sa.Column("key_hash", sa.BigInteger, nullable=True),
            sa.Index(dbconn.identifier(f"ix_{transform_meta_name(name)}_success"), "is_success"),
            sa.Index(dbconn.identifier(f"ix_{transform_meta_name(name)}_key_hash"), "key_hash"),
            *extra,
        )

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)
        self._ensure_key_hash()

    def _has_key_hash(self, conn: sa.Connection) -> bool:
        cols = sa.inspect(conn).get_columns(self.table.name, schema=self.table.schema)
        return any(c["name"] == "key_hash" for c in cols)

    def _ensure_key_hash(self) -> None:
        """Add and fill ``key_hash`` (and its index) in a state table created by an older version."""
        with self.dbconn.connect() as conn:
            if self._has_key_hash(conn):
                return
        with self.dbconn.begin_write() as conn:
            if self._has_key_hash(conn):  # another process migrated it meanwhile
                return
            prep = conn.dialect.identifier_preparer
            conn.execute(sa.text(f"ALTER TABLE {prep.format_table(self.table)} ADD COLUMN key_hash BIGINT"))
            next(ix for ix in self.table.indexes if "key_hash" in ix.columns).create(conn)
            t = self.table
            keys = fetch_frame(conn, sa.select(*[t.c[k] for k in self.keys]), self.keys)
            stmt = (
                sa.update(t)
                .where(*[t.c[k] == sa.bindparam(f"b_{k}") for k in self.keys])
                .values(key_hash=sa.bindparam("b_key_hash"))
            )
            for start in range(0, len(keys), self.BACKFILL_CHUNK):
                part = keys.iloc[start : start + self.BACKFILL_CHUNK]
                recs = to_records(part.assign(key_hash=key_hash(part, self.keys)))
                conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in recs])

    def keys_in_hash_ranges(self, conn: sa.Connection, ranges: list[tuple[int, int]]) -> pd.DataFrame:
        """The recorded keys whose ``key_hash`` lies in one of the half-open ``ranges`` (an index range
        scan per range)."""
        if not ranges:
            return pd.DataFrame({k: [] for k in self.keys})
        h = self.table.c.key_hash
        stmt = sa.select(*[self.table.c[k] for k in self.keys]).where(
            sa.or_(*[sa.and_(h >= lo, h < hi) for lo, hi in ranges])
        )
        return fetch_frame_paged(conn, stmt, self.keys)

    def lock(self, conn: sa.Connection) -> None:
        """Serialise the commits of this transform until ``conn``'s transaction ends.

        Two processors of one transform may compute the same key at once; each commit reads the key's
        state and writes outputs, and those two must not interleave. SQLite's write transactions are
        already exclusive (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock named
        after this state table (its schema included), so only commits of one transform wait on each other.
        """
        if self.dbconn.backend != "postgresql":
            return
        stmt = self.statements.get(("lock",))
        if stmt is None:  # built once: every commit of the transform takes it
            ident = f"{self.table.schema or ''}.{self.table.name}".encode()
            lock_id = int.from_bytes(hashlib.blake2b(ident, digest_size=8).digest(), "big", signed=True)
            stmt = self.statements[("lock",)] = sa.select(sa.func.pg_advisory_xact_lock(sa.literal(lock_id, sa.BigInteger)))
        conn.execute(stmt)

    def newer_than(self, conn: sa.Connection, keys: pd.DataFrame, seq: int) -> pd.DataFrame:
        """The keys among ``keys`` whose recorded state comes from inputs read after ``seq``.

        A commit computed from inputs as of ``seq`` must leave those keys alone: their outputs and state
        already reflect newer inputs (another processor got there first).
        """
        values = distinct_keys(keys, self.keys) if len(keys) <= UNNEST_MIN_KEYS else []
        if values:  # a few keys (one changed key): the statement built once, the same SQL as below
            seek = conn.dialect.name == "sqlite"
            stmt = self.statements.get(("newer_than", seek))
            if stmt is None:
                c = self.table.c
                newer = c.processed_seq > sa.bindparam("dp_seq", type_=c.processed_seq.type)
                where = key_clause_bound(self.table, self.keys, seek)
                stmt = sa.select(*[c[k] for k in self.keys]).where(newer).where(where)
                self.statements[("newer_than", seek)] = stmt
            rows = conn.execute(stmt, {"dp_seq": seq, **key_params((self.table,), self.keys, values, seek)}).fetchall()
            return rows_frame(rows, self.keys)
        base = sa.select(*[self.table.c[k] for k in self.keys]).where(self.table.c.processed_seq > seq)
        return fetch_by_keys(conn, base, self.table, self.keys, keys, self.keys)

    def mark(
        self,
        conn: sa.Connection,
        keys: pd.DataFrame,
        processed_seq: int,
        now: float,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        if len(keys) == 0:
            return
        if self.dbconn.backend == "postgresql" and len(keys) > 50:
            self._mark_pg(conn, keys, processed_seq, now, error, traceback)
            return
        # Records built directly: six column assignments on a frame cost more than the statement here.
        state = {
            "processed_seq": processed_seq, "process_ts": now, "is_success": error is None, "error": error, "traceback": traceback,
        }
        hashes = key_hash(keys, self.keys).tolist()
        records = [{**r, **state, "key_hash": h} for r, h in zip(to_records(columns_of(keys, self.keys)), hashes, strict=True)]
        self.dbconn.upsert(conn, self.table, records, self.keys)

    def _mark_pg(
        self,
        conn: sa.Connection,
        keys: pd.DataFrame,
        processed_seq: int,
        now: float,
        error: str | None,
        traceback: str | None,
    ) -> None:
        """One ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`` for the whole chunk of keys."""
        from sqlalchemy.dialects.postgresql import insert

        t = self.table
        recs = to_records(keys[self.keys])
        cols = self.keys + ["key_hash"]
        values_of = [[r[k] for r in recs] for k in self.keys] + [key_hash(keys, self.keys).tolist()]
        u = pg_unnest(cols, values_of, [t.c[k].type for k in self.keys] + [sa.BigInteger()], prefix="mk")
        values = {
            "processed_seq": sa.literal(int(processed_seq), sa.BigInteger),
            "process_ts": sa.literal(float(now), sa.Float),
            "is_success": sa.literal(error is None, sa.Boolean),
            "error": sa.literal(error, sa.Text),
            "traceback": sa.literal(traceback, sa.Text),
        }
        stmt = insert(t).from_select(cols + list(values), sa.select(*[u.c[k] for k in cols], *values.values()))
        stmt = stmt.on_conflict_do_update(index_elements=self.keys, set_={c: stmt.excluded[c] for c in values})
        conn.execute(stmt)

    def failed(self, conn: sa.Connection, limit: int | None = None) -> pd.DataFrame:
        cols = self.keys + ["error", "traceback", "process_ts"]
        stmt = sa.select(*[self.table.c[c] for c in cols]).where(self.table.c.is_success.is_(False))
        if limit is not None:
            stmt = stmt.limit(limit)
        return fetch_frame(conn, stmt, cols)

    def count_failed(self, conn: sa.Connection) -> int:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(self.table).where(self.table.c.is_success.is_(False))).scalar_one()
        )

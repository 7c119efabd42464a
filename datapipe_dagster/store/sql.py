"""SQL helpers shared by the stores and the metadata: key filters that scale, fast fetches, statistics.

Few keys are filtered with ``IN`` lists; more keys go through ``IN (SELECT …)`` over ``unnest`` of
array parameters on PostgreSQL (past ``UNNEST_MIN_KEYS``: the planner then looks each key up in the
index, where a long ``IN`` list gets a sequential scan or a plan of one branch per key) and over a
temporary table on SQLite (past ``SMALL_KEYS``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.frames import columns_of
from datapipe_dagster.store.key_lists import key_clause, key_clause_bound, key_params
from datapipe_dagster.store.pgcopy import executemany_frame
from datapipe_dagster.store.records import plain_list, to_records

if TYPE_CHECKING:
    from datapipe_dagster.store.dbconn import DBConn

MAX_PARAMS = 20000
MAX_TUPLES = 500
SMALL_KEYS = 2000
UNNEST_MIN_KEYS = 32
"""PostgreSQL: above this many keys a keyed read, delete or upsert goes through ``unnest`` of arrays.
Measured at 1M rows (``benchmarks/bench_thousand.py``): 1,000 user ids as an ``IN`` list made the
planner scan a 100,000-row metadata table (13 ms) and 500 two-column keys planned as 500 bitmap
branches (10 ms to plan); the ``unnest`` semi-join looks each key up in the index."""


def distinct_keys(idx: pd.DataFrame, columns: list[str]) -> list[Any]:
    """The distinct keys of ``idx`` as plain Python values (scalars for one column, tuples for several),
    in first-seen order (de-duplicated in Python: pandas' ``drop_duplicates`` costs ~0.5 ms even for one row)."""
    if len(columns) == 1:
        return list(dict.fromkeys(plain_list(idx[columns[0]])))
    return list(dict.fromkeys(zip(*[plain_list(idx[c]) for c in columns], strict=True)))


def key_batches(idx: pd.DataFrame, columns: list[str], max_params: int = MAX_PARAMS) -> Iterator[list[Any]]:
    """Yield lists of key values (scalars for one column, tuples for several), each a bounded IN list."""
    yield from _batched(distinct_keys(idx, columns), columns, max_params)


def _batched(values: list[Any], columns: list[str], max_params: int = MAX_PARAMS) -> Iterator[list[Any]]:
    step = max_params if len(columns) == 1 else MAX_TUPLES
    for i in range(0, len(values), step):
        yield values[i : i + step]


@contextmanager
def temp_keys(conn: sa.Connection, table: sa.Table | sa.FromClause, columns: list[str], keys: pd.DataFrame) -> Iterator[sa.Table]:
    """A temporary table holding ``keys`` (typed like ``table``'s columns), dropped afterwards."""
    tmp = sa.Table(
        f"dp_keys_{uuid.uuid4().hex[:12]}",
        sa.MetaData(),
        *[sa.Column(c, table.c[c].type) for c in columns],
        prefixes=["TEMPORARY"],
    )
    tmp.create(conn)
    try:
        executemany_frame(conn, tmp, keys[columns])  # tuples: no per-row dictionaries
        yield tmp
    finally:
        tmp.drop(conn)


def pg_unnest(
    columns: list[str], values: list[list[Any]], types: list[sa.types.TypeEngine[Any]], prefix: str = "dp_keys"
) -> sa.TableValuedAlias:
    """PostgreSQL: columns of values as one derived table, ``unnest`` of one array parameter per column
    (a few parameters whatever the number of rows; no temporary table)."""
    from sqlalchemy.dialects.postgresql import ARRAY

    arrays = [
        sa.bindparam(f"{prefix}_{i}", value=v, type_=ARRAY(unbounded(t)))
        for i, (v, t) in enumerate(zip(values, types, strict=True))
    ]
    return sa.func.unnest(*arrays).table_valued(*columns).render_derived()


def unbounded(t: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """The array element type for values of a column of type ``t``: without its length, precision or
    collation. An array parameter is rendered with an explicit cast, and PostgreSQL's explicit cast to
    ``VARCHAR(n)`` or ``NUMERIC(p, s)`` silently cuts or rounds a value: a key 'abcdefg' looked up as
    ``VARCHAR(5)`` would match (or delete) the row 'abcde'."""
    if isinstance(t, sa.Enum):  # a named type: its values are bounded by the type, not by a length
        return t
    if isinstance(t, sa.String):
        return sa.String()
    if isinstance(t, sa.Float):
        return sa.Float()
    if isinstance(t, sa.Numeric):
        return sa.Numeric()
    return t


def _pg_unnest_keys(table: sa.Table | sa.FromClause, columns: list[str], keys: pd.DataFrame) -> sa.Select:
    """PostgreSQL: the keys as one ``unnest`` of arrays (element types unbounded, see ``unbounded``)."""
    recs = to_records(keys[columns])
    derived = pg_unnest(
        columns, [[r[c] for r in recs] for c in columns], [unbounded(table.c[c].type) for c in columns]
    )
    return sa.select(*[derived.c[c] for c in columns])


def keys_in_subquery(table: sa.Table | sa.FromClause, columns: list[str], tmp: sa.Table) -> sa.ColumnElement[bool]:
    return _in_select(table, columns, sa.select(*[tmp.c[c] for c in columns]))


def _in_select(table: sa.Table | sa.FromClause, columns: list[str], sub: sa.Select) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        return table.c[columns[0]].in_(sub)
    return sa.tuple_(*[table.c[c] for c in columns]).in_(sub)


def fetch_by_keys(
    conn: sa.Connection,
    base: sa.Select,
    table: sa.Table | sa.FromClause,
    columns: list[str],
    idx: pd.DataFrame,
    out_columns: list[str],
    also: tuple[sa.Table | sa.FromClause, ...] = (),
) -> pd.DataFrame:
    """Rows of ``base`` whose ``table.columns`` match a row of ``idx``; the result has ``out_columns``.

    ``also``: further tables of ``base`` (joined to ``table`` on these columns) filtered by the same keys.
    A join condition alone does not carry the filter over: PostgreSQL hash-joined 10,000 keyed rows of
    data to a sequential scan of all 1M rows of their metadata (200 ms instead of a few)."""
    pg = conn.dialect.name == "postgresql"
    # Up to SMALL_KEYS keys (a commit's chunk, one changed key): IN lists, de-duplicated in Python.
    keys = columns_of(idx, columns) if len(idx) <= SMALL_KEYS else idx[columns].drop_duplicates()
    if len(keys) <= SMALL_KEYS and not (pg and len(keys) > UNNEST_MIN_KEYS):
        values = distinct_keys(keys, columns)
        if not values:
            return fetch_frame(conn, base.where(sa.false()), out_columns)
        seek = conn.dialect.name == "sqlite"
        frames = [
            fetch_frame(
                conn, base.where(*[key_clause(t, columns, b, seek) for t in (table, *also)]), out_columns
            )
            for b in _batched(values, columns)
        ]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if pg:
        if len(keys) <= SMALL_KEYS:
            keys = keys.drop_duplicates()  # unnest feeds a join: no key twice
            if len(keys) <= UNNEST_MIN_KEYS:  # duplicates only: IN lists after all
                return fetch_by_keys(conn, base, table, columns, keys, out_columns, also)
        sub = _pg_unnest_keys(table, columns, keys)
        return fetch_frame(conn, base.where(*[_in_select(t, columns, sub) for t in (table, *also)]), out_columns)
    with temp_keys(conn, table, columns, keys) as tmp:
        sub = sa.select(*[tmp.c[c] for c in columns])
        return fetch_frame(conn, base.where(*[_in_select(t, columns, sub) for t in (table, *also)]), out_columns)


def fetch_rows_by_keys(
    conn: sa.Connection,
    base: sa.Select,
    table: sa.Table | sa.FromClause,
    columns: list[str],
    idx: pd.DataFrame,
    also: tuple[sa.Table | sa.FromClause, ...] = (),
    built: dict[tuple[Any, ...], sa.Select] | None = None,
) -> list[sa.Row[Any]] | None:
    """``fetch_by_keys``'s rows as they come (no frame) when ``idx``'s keys fit one ``IN`` list (and, on
    PostgreSQL, are few enough not to take ``unnest``), else None (the caller then takes ``fetch_by_keys``):
    a caller of a few rows can order and shape them in Python.

    ``built``: the caller's cache of statements for this ``base`` (the keys then bound parameters, the same
    SQL), for a caller reading a few keys often: building the statement cost more than running it."""
    if len(idx) > SMALL_KEYS:
        return None
    values = distinct_keys(idx, columns)
    pg = conn.dialect.name == "postgresql"
    if len(values) > (MAX_PARAMS if len(columns) == 1 else MAX_TUPLES) or (pg and len(values) > UNNEST_MIN_KEYS):
        return None
    if not values:
        return []
    seek = conn.dialect.name == "sqlite"
    if built is None:
        return list(conn.execute(base.where(*[key_clause(t, columns, values, seek) for t in (table, *also)])).fetchall())
    stmt = built.get((tuple(columns), seek))
    if stmt is None:
        stmt = built[(tuple(columns), seek)] = base.where(*[key_clause_bound(t, columns, seek) for t in (table, *also)])
    return list(conn.execute(stmt, key_params((table, *also), columns, values, seek)).fetchall())


def delete_by_keys(conn: sa.Connection, table: sa.Table, columns: list[str], idx: pd.DataFrame) -> None:
    """Delete the rows of ``table`` whose ``columns`` match a row of ``idx``."""
    keys = idx[columns].drop_duplicates()
    pg = conn.dialect.name == "postgresql"
    if len(keys) <= (UNNEST_MIN_KEYS if pg else SMALL_KEYS):
        for b in key_batches(keys, columns):
            conn.execute(sa.delete(table).where(key_clause(table, columns, b, conn.dialect.name == "sqlite")))
        return
    if pg:
        conn.execute(sa.delete(table).where(_in_select(table, columns, _pg_unnest_keys(table, columns, keys))))
        return
    with temp_keys(conn, table, columns, keys) as tmp:
        conn.execute(sa.delete(table).where(keys_in_subquery(table, columns, tmp)))


def fetch_frame(conn: sa.Connection, stmt: sa.Executable, columns: list[str]) -> pd.DataFrame:
    """Execute ``stmt`` and return its rows as a frame with ``columns``."""
    return rows_frame(conn.execute(stmt).fetchall(), columns)


_NO_ROWS: dict[tuple[str, ...], pd.DataFrame] = {}


def rows_frame(rows: Sequence[Sequence[Any]], columns: list[str]) -> pd.DataFrame:
    """Rows of a result as a frame with ``columns`` (``fetch_frame``'s). No rows: object columns, copied
    from a frame built once per list of columns (a copy costs a tenth of building it)."""
    if not rows:
        empty = _NO_ROWS.get(tuple(columns))
        if empty is None:
            empty = _NO_ROWS[tuple(columns)] = pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
        return empty.copy()
    # Column-wise construction: pandas' row-wise paths probe each Row's attributes (slow for SQLAlchemy Rows).
    # A dict of lists: the same dtypes as one Series per column, at half the cost for small results.
    cols = list(zip(*rows, strict=True))
    return pd.DataFrame({c: list(v) for c, v in zip(columns, cols, strict=True)})


def analyze(dbconn: DBConn, tables: list[sa.Table]) -> None:
    """``ANALYZE`` the tables (PostgreSQL), outside any write transaction."""
    with dbconn.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for t in tables:
            name = conn.dialect.identifier_preparer.format_table(t)
            conn.exec_driver_sql(f"ANALYZE {name}")


class AnalyzeOnGrowth:
    """Refresh PostgreSQL's planner statistics of some tables once they have grown enough since the last
    time: 10,000 rows, then each doubling. Without statistics a freshly loaded table gets generic
    estimates, and the planner scans whole tables where an index serves."""

    MIN_ROWS = 10_000

    def __init__(self) -> None:
        self.written = 0
        self.analyzed_at = 0

    def grew(self, dbconn: DBConn, rows: int, tables: list[sa.Table]) -> None:
        """``rows`` more rows were written to ``tables``: ANALYZE them if that makes them due."""
        self.written += rows
        grown = self.written - self.analyzed_at
        if grown < max(self.MIN_ROWS, self.analyzed_at) or dbconn.backend != "postgresql":
            return
        self.analyzed_at = self.written
        analyze(dbconn, tables)


ARRAY_SAFE_TYPES = (sa.String, sa.Integer, sa.Float, sa.Boolean)
"""Column types whose values pass through an array parameter unchanged. JSON columns go through as the
text their bind processor makes (what the row-by-row statement sends), cast back; dates, binary and
user types keep the one-row-per-parameter-set statement."""


def _array_safe(t: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(t, sa.JSON) or (isinstance(t, ARRAY_SAFE_TYPES) and not isinstance(t, sa.Enum))


def pg_unnest_upsert(
    dialect: sa.Dialect, table: sa.Table, records: list[dict[str, Any]], keys: list[str]
) -> sa.Insert | None:
    """PostgreSQL: ``INSERT … SELECT FROM unnest(one array per column) ON CONFLICT (keys) DO UPDATE`` of
    ``records``: one statement with a parameter per column, where ``executemany`` sends a statement
    (``values_plus_batch``: pages of rows) whose text the server parses again per page.

    None when it does not apply: a column type ``_array_safe`` refuses, records not holding every
    column, or a key twice (one statement may not update a row twice; the row-by-row upsert lets the last
    one win)."""
    from sqlalchemy.dialects.postgresql import insert

    cols = [c.name for c in table.columns]
    if set(records[0]) != set(cols) or not all(_array_safe(c.type) for c in table.columns):
        return None
    if len({tuple(r[k] for k in keys) for r in records}) != len(records):
        return None
    values, types, selected = [], [], []
    for c in table.columns:
        vals = [r[c.name] for r in records]
        if isinstance(c.type, sa.JSON):
            encode = c.type.bind_processor(dialect)
            vals = [encode(v) for v in vals] if encode is not None else vals
        values.append(vals)
        types.append(sa.Text() if isinstance(c.type, sa.JSON) else unbounded(c.type))
    u = pg_unnest(cols, values, types, "up")
    for c in table.columns:
        selected.append(sa.cast(u.c[c.name], c.type) if isinstance(c.type, sa.JSON) else u.c[c.name])
    stmt = insert(table).from_select(cols, sa.select(*selected))
    rest = [c for c in cols if c not in keys]
    if rest:
        return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in rest})
    return stmt.on_conflict_do_nothing(index_elements=keys)

"""Keyed reads look their keys up in the key indexes on both sides of the data/metadata join (plan shape,
checked with EXPLAIN), and the ``unnest`` statements PostgreSQL gets past ``UNNEST_MIN_KEYS`` keys give
the results of the plain ones: same rows, same upserted values, no key truncated to a column's length."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import DataStore, DBConn, TableStoreDB
from datapipe_dagster.store.sql import UNNEST_MIN_KEYS, fetch_by_keys
from tests.engine_helpers import recorded_statements

USERS, PER_USER = 2000, 10


def _events(dbconn: DBConn) -> Any:
    ds = DataStore(dbconn)
    cols = [sa.Column("user_id", sa.String, primary_key=True), sa.Column("event_id", sa.String, primary_key=True), sa.Column("v", sa.Integer)]
    dt = ds.get_or_create_table("events", TableStoreDB("events", dbconn, cols))
    df = pd.DataFrame(
        {
            "user_id": [f"u{i % USERS}" for i in range(USERS * PER_USER)],
            "event_id": [f"e{i}" for i in range(USERS * PER_USER)],
            "v": list(range(USERS * PER_USER)),
        }
    )
    dt.store_chunk(df)
    if dbconn.backend == "postgresql":
        with dbconn.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for t in (dt.meta.table, dt.sql.table):
                conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.format_table(t)}")
    return dt


def _selects(dbconn: DBConn, fn: Any) -> list[tuple[str, Any]]:
    return [(st, p) for st, p in recorded_statements(dbconn, fn)[1] if st.lstrip().upper().startswith("SELECT")]

def _plan(dbconn: DBConn, statement: str, params: Any) -> list[dict[str, Any]]:
    """The plan's scan nodes: ``{"table": …, "scan": True when it reads the whole table}``."""
    with dbconn.engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        if dbconn.backend == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, params)
            nodes = []
            for row in cur.fetchall():
                words = str(row[-1]).split()
                if words[0] in ("SCAN", "SEARCH") and words[1] not in ("CONSTANT",):
                    nodes.append({"table": words[1], "scan": words[0] == "SCAN", "text": str(row[-1])})
            return nodes
        # At test sizes a sequential scan is cheap and the planner may rightly take it; with it priced out
        # the plan shows whether the statement lets each table be sought by the keys at all (a table
        # the keys do not filter is still read whole, through its index).
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN (FORMAT JSON) " + statement, params)
        raw = cur.fetchone()[0]
        cur.execute("RESET enable_seqscan")
        plan = raw if isinstance(raw, list) else json.loads(raw)
        out: list[dict[str, Any]] = []

        def walk(node: dict[str, Any]) -> None:
            if "Relation Name" in node:
                full = node["Node Type"] == "Seq Scan" or (
                    "Index" in node["Node Type"] and "Index Cond" not in node and "Recheck Cond" not in node
                )
                out.append({"table": node["Relation Name"], "scan": full, "text": json.dumps(node)[:300]})
            for child in node.get("Plans", []):
                walk(child)

        walk(plan[0]["Plan"])
        return out


def test_keyed_read_filters_the_metadata_by_the_keys_and_scans_nothing(dbconn: DBConn) -> None:
    """``get_data(keys)`` of 100 users: both tables are sought by the keys; neither is read whole.

    Before, only the data side was filtered and PostgreSQL hash-joined it to a sequential scan of the
    whole metadata table (1M rows: 200 ms of a 1,000-changes run)."""
    dt = _events(dbconn)
    idx = pd.DataFrame({"user_id": [f"u{i}" for i in range(0, 2 * UNNEST_MIN_KEYS * 3, 2)]})
    got: list[pd.DataFrame] = []
    stmts = [s for s in _selects(dbconn, lambda: got.append(dt.get_data(idx))) if " JOIN " in s[0]]
    assert len(got[0]) == len(idx) * PER_USER
    assert len(stmts) == 1, stmts
    statement, params = stmts[0]
    meta = dt.meta.table.name
    assert f"{meta}.user_id IN" in statement, "the metadata side carries the key filter itself"
    nodes = _plan(dbconn, statement, params)
    assert {n["table"] for n in nodes} >= {"events", meta}, nodes
    assert not [n for n in nodes if n["scan"]], nodes


@pytest.mark.parametrize("n_keys", [UNNEST_MIN_KEYS + 1, 1000])
def test_many_keys_are_sought_not_scanned(dbconn: DBConn, n_keys: int) -> None:
    """A keyed metadata read of many keys (a chunk's) seeks the key index.

    Before, PostgreSQL got an ``IN`` list and scanned the table (1,000 of 100,000 keys: 13 ms)."""
    dt = _events(dbconn)
    t = dt.meta.table
    idx = pd.DataFrame({"user_id": [f"u{i}" for i in range(0, USERS, USERS // n_keys)][:n_keys]})
    got: list[pd.DataFrame] = []
    stmts = _selects(dbconn, lambda: got.append(dt.get_metadata(idx)))
    assert len(got[0]) == n_keys * PER_USER
    assert len(stmts) == 1, stmts
    assert ("unnest" in stmts[0][0]) == (dbconn.backend == "postgresql"), stmts[0][0]
    nodes = _plan(dbconn, *stmts[0])
    assert [n["table"] for n in nodes] == [t.name], nodes
    assert not [n for n in nodes if n["scan"]], nodes


def test_unnest_lookup_does_not_truncate_keys_to_the_column_length(dbconn: DBConn) -> None:
    """A key longer than a ``VARCHAR(5)`` key column matches nothing, through ``unnest`` as through ``IN``
    (an array cast to ``VARCHAR(5)[]`` would cut 'abcdefg' to 'abcde' and match that row)."""
    t = sa.Table("short", sa.MetaData(schema=dbconn.schema), sa.Column("k", sa.String(5), primary_key=True), sa.Column("v", sa.Integer))
    dbconn.ensure_table(t)
    with dbconn.begin_write() as conn:
        conn.execute(t.insert(), [{"k": "abcde", "v": 1}] + [{"k": f"x{i}", "v": i} for i in range(100)])
    for n in (1, UNNEST_MIN_KEYS + 5, 500):
        idx = pd.DataFrame({"k": ["abcdefg"] + [f"y{i}" for i in range(n - 1)]})
        with dbconn.connect() as conn:
            got = fetch_by_keys(conn, sa.select(t.c.k, t.c.v), t, ["k"], idx, ["k", "v"])
        assert len(got) == 0, (n, got)


def _typed_table(dbconn: DBConn, name: str) -> sa.Table:
    t = sa.Table(
        name,
        sa.MetaData(schema=dbconn.schema),
        sa.Column("k", sa.String(8), primary_key=True),
        sa.Column("n", sa.Integer, primary_key=True),
        sa.Column("big", sa.BigInteger),
        sa.Column("f", sa.Float),
        sa.Column("b", sa.Boolean),
        sa.Column("s", sa.Text),
        sa.Column("j", sa.JSON),
    )
    dbconn.ensure_table(t)
    return t


def _records(n: int, salt: int) -> list[dict[str, Any]]:
    vals = [0.1, 1 / 3, 1e300, -0.0, float("nan"), float("inf"), None]
    return [
        {
            "k": f"k{i % 7}", "n": i, "big": (2**62 + i) * (1 if i % 2 else -1), "f": vals[(i + salt) % len(vals)],
            "b": [True, False, None][(i + salt) % 3], "s": None if i % 5 == 0 else f"s'{i}\"{salt}é",
            "j": [{"b": [i, 0.1], "a": f"x'{salt}é"}, [1, None], "text", None, 1.5][(i + salt) % 5],
        }
        for i in range(n)
    ]


def test_upsert_through_unnest_equals_the_row_by_row_upsert(dbconn: DBConn) -> None:
    """``DBConn.upsert`` of many records (one ``unnest`` statement on PostgreSQL) stores exactly what the
    row-by-row upsert stores: inserts, then updates of some rows, floats (NaN, inf, -0.0), big ints,
    nulls, quotes and JSON values (stored as the same text) included; a key given twice lets the last record win, as row by row."""
    from sqlalchemy.dialects import postgresql, sqlite

    a, b = _typed_table(dbconn, "up_a"), _typed_table(dbconn, "up_b")
    insert: Any = postgresql.insert if dbconn.backend == "postgresql" else sqlite.insert
    n = UNNEST_MIN_KEYS * 4
    batches = [_records(n, 0), _records(n, 1)[::3], _records(n, 2)[:5]]
    batches.append(batches[2] + [{**batches[2][0], "big": 7}])  # a key twice
    unnests: list[int] = []
    for recs in batches:
        with dbconn.begin_write() as conn:
            unnests.append(len(_upserts(dbconn, lambda conn=conn, recs=recs: dbconn.upsert(conn, a, recs, ["k", "n"]))))
            for r in recs:  # the reference: one plain upsert per record
                stmt = insert(b).values(**r)
                conn.execute(stmt.on_conflict_do_update(index_elements=["k", "n"], set_={c: stmt.excluded[c] for c in ("big", "f", "b", "s", "j")}))
    with dbconn.connect() as conn:
        rows_a = conn.execute(sa.select(a, sa.cast(a.c.j, sa.Text)).order_by(a.c.k, a.c.n)).fetchall()
        rows_b = conn.execute(sa.select(b, sa.cast(b.c.j, sa.Text)).order_by(b.c.k, b.c.n)).fetchall()
    assert len(rows_a) == n
    assert [repr(tuple(r)) for r in rows_a] == [repr(tuple(r)) for r in rows_b]
    assert [r for r in rows_a if r[0] == "k0" and r[1] == 0][0][2] == 7
    # PostgreSQL: one unnest statement for the two batches past UNNEST_MIN_KEYS, row by row otherwise.
    assert unnests == ([1, 1, 0, 0] if dbconn.backend == "postgresql" else [0, 0, 0, 0])


def _upserts(dbconn: DBConn, fn: Any) -> list[str]:
    """The ``unnest`` statements ``fn`` executes."""
    return [st for st, _ in recorded_statements(dbconn, fn)[1] if "unnest" in st]

def test_upsert_through_unnest_refuses_a_value_too_long(dbconn: DBConn) -> None:
    """A value longer than its ``VARCHAR(n)`` column fails the upsert, as row by row; it is never cut."""
    if dbconn.backend != "postgresql":
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    t = _typed_table(dbconn, "up_long")
    recs = _records(UNNEST_MIN_KEYS * 2, 0)
    recs[3]["k"] = "k-much-too-long"
    with pytest.raises(sa.exc.DataError), dbconn.begin_write() as conn:
        dbconn.upsert(conn, t, recs, ["k", "n"])


def test_two_writers_racing_on_the_same_keys_lose_nothing(dbconn: DBConn) -> None:
    """Two many-record upserts over overlapping keys, the second started while the first's transaction is
    open: it waits for the first to commit, then wins on the shared keys; every key of both is there."""
    import threading

    t = _typed_table(dbconn, "up_race")
    n = UNNEST_MIN_KEYS * 4
    first = [{**r, "big": 1} for r in _records(n, 0)]
    second = [{**r, "big": 2} for r in _records(2 * n, 0)[n // 2 :]]
    started, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer_b() -> None:
        try:
            started.set()
            with dbconn.begin_write() as conn:
                dbconn.upsert(conn, t, second, ["k", "n"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    with dbconn.begin_write() as conn:
        dbconn.upsert(conn, t, first, ["k", "n"])
        b = threading.Thread(target=writer_b)
        b.start()
        started.wait(10)
        assert not done.wait(0.5), "the second writer waits for the first's commit"
    b.join(30)
    assert not errors, errors
    with dbconn.connect() as conn:
        got = dict(conn.execute(sa.select(t.c.n, t.c.big)).fetchall())
    assert sorted(got) == list(range(2 * n)), "no key lost"
    assert all(got[i] == (1 if i < n // 2 else 2) for i in range(2 * n)), "the later commit wins on shared keys"

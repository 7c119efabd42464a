"""SQL helpers shared across layers: the ANALYZE-on-growth policy (PostgreSQL planner statistics)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from datapipe_dagster.store.sql import AnalyzeOnGrowth


def _analyzed(conn: sa.Connection, table: sa.Table) -> bool:
    row = conn.execute(
        sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE schemaname = :s AND relname = :t"),
        {"s": table.schema or "public", "t": table.name},
    ).first()
    return row is not None and row[0] is not None


def test_analyze_when_grown_enough_then_on_each_doubling(dbconn) -> None:
    t = sa.Table("grows", sa.MetaData(schema=dbconn.schema), sa.Column("id", sa.Integer, primary_key=True))
    dbconn.ensure_table(t)
    policy = AnalyzeOnGrowth()
    policy.MIN_ROWS = 4
    policy.grew(dbconn, 3, [t])
    assert policy.analyzed_at == 0, "not grown enough yet"
    policy.grew(dbconn, 1, [t])
    assert policy.analyzed_at == (4 if dbconn.backend == "postgresql" else 0)
    policy.grew(dbconn, 3, [t])  # 7: less than double the 4 analyzed
    assert policy.analyzed_at == (4 if dbconn.backend == "postgresql" else 0)
    policy.grew(dbconn, 1, [t])
    assert policy.analyzed_at == (8 if dbconn.backend == "postgresql" else 0)
    if dbconn.backend == "postgresql":
        with dbconn.connect() as conn:
            assert _analyzed(conn, t)


def test_many_keys_fetch_and_delete_through_one_statement(dbconn) -> None:
    """Past ``SMALL_KEYS`` keys, filters go through ``unnest`` of arrays (PostgreSQL) or a temp table."""
    import pandas as pd

    from datapipe_dagster.store.sql import SMALL_KEYS, delete_by_keys, fetch_by_keys

    t = sa.Table(
        "many", sa.MetaData(schema=dbconn.schema), sa.Column("a", sa.Integer, primary_key=True),
        sa.Column("b", sa.String(10), primary_key=True), sa.Column("v", sa.Integer),
    )
    dbconn.ensure_table(t)
    n = SMALL_KEYS + 10
    rows = pd.DataFrame({"a": range(n), "b": [f"k{i % 7}" for i in range(n)], "v": range(n)})
    with dbconn.begin_write() as conn:
        conn.execute(sa.insert(t), rows.to_dict("records"))
        got = fetch_by_keys(conn, sa.select(t), t, ["a", "b"], rows.iloc[1:], ["a", "b", "v"])
        assert sorted(got["a"]) == list(range(1, n))
        delete_by_keys(conn, t, ["a", "b"], rows.iloc[5:])
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 5


def test_few_keys_fetch_once_per_key_and_in_bounded_batches(dbconn) -> None:
    """Up to ``SMALL_KEYS`` keys: duplicates asked once, two-column keys in IN lists of ``MAX_TUPLES``."""
    import pandas as pd

    from datapipe_dagster.store.sql import MAX_TUPLES, SMALL_KEYS, fetch_by_keys

    t = sa.Table(
        "few", sa.MetaData(schema=dbconn.schema),
        sa.Column("a", sa.String, primary_key=True), sa.Column("b", sa.Integer, primary_key=True), sa.Column("v", sa.Integer),
    )
    dbconn.ensure_table(t)
    n = MAX_TUPLES * 2 + 7
    assert n <= SMALL_KEYS
    with dbconn.begin_write() as conn:
        conn.execute(t.insert(), [{"a": f"k{i % 3}", "b": i, "v": i * 10} for i in range(n)])
    statements: list[str] = []
    sa.event.listen(dbconn.engine, "before_cursor_execute", lambda *a: statements.append(a[2]) if a[2].startswith("SELECT") else None)
    base = sa.select(t.c.a, t.c.b, t.c.v)
    with dbconn.connect() as conn:
        one = fetch_by_keys(conn, base, t, ["a", "b"], pd.DataFrame({"a": ["k1", "k1", "k0"], "b": [1, 1, 5]}), ["a", "b", "v"])
        assert sorted(one["v"]) == [10], "(k1, 1) once, (k0, 5) does not exist"
        assert len(statements) == 1
        # On SQLite the leading column's IN rides along (a text and an integer column: the key index is
        # sought on the leading column, not scanned).
        assert ("few.a IN" in statements[0]) == (dbconn.backend == "sqlite"), statements[0]
        idx = pd.DataFrame({"a": [f"k{i % 3}" for i in range(n)] * 2, "b": list(range(n)) * 2})
        many = fetch_by_keys(conn, base, t, ["a", "b"], idx, ["a", "b", "v"])
        assert sorted(many["v"]) == [i * 10 for i in range(n)]
        if dbconn.backend == "sqlite":
            assert len(statements) == 1 + 3, "1,014 distinct two-column keys: three IN lists of at most 500"
        else:
            assert len(statements) == 1 + 1 and "unnest" in statements[1], "past UNNEST_MIN_KEYS: one unnest"
        none = fetch_by_keys(conn, base, t, ["a"], pd.DataFrame({"a": pd.Series([], dtype=object)}), ["a", "b", "v"])
        assert list(none.columns) == ["a", "b", "v"] and len(none) == 0


def test_key_positions_match_pandas_for_multi_column_keys() -> None:
    """The dict path for several key columns finds what pandas' index finds, missing values included."""
    import numpy as np
    import pandas as pd

    from datapipe_dagster.frames import key_positions

    table = pd.DataFrame({"a": ["x", "y", "x", "z"], "b": [1, 1, 2, 3]})
    probe = pd.DataFrame({"a": ["x", "q", "z", "y", "x"], "b": [2.0, 1.0, 3.0, 1.0, 9.0]})
    assert key_positions(table, probe, ["a", "b"]).tolist() == [2, -1, 3, 1, -1]
    with_nan = pd.DataFrame({"a": ["x", "y"], "b": [1.0, np.nan]})
    assert key_positions(with_nan, pd.DataFrame({"a": ["y", "x"], "b": [np.nan, 1.0]}), ["a", "b"]).tolist() == [1, 0]


def _plan(conn: sa.Connection, stmt: sa.Select) -> str:
    compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
    return " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").fetchall())


@pytest.mark.parametrize(
    "types, sought",
    [
        ((sa.String, sa.String), "(a=? AND b=?)"),
        ((sa.Integer, sa.DateTime), "(a=? AND b=?)"),
        ((sa.String, sa.Integer), "(a=?)"),
        ((sa.Integer, sa.String), "(a=?)"),
    ],
    ids=["text", "numeric", "text-integer", "integer-text"],
)
def test_two_column_key_lists_seek_the_key_index_on_sqlite(dbconn, types, sought) -> None:
    """SQLite plans ``(a, b) IN (VALUES …)`` as a scan of the whole table. With ``seek`` (which the fetch
    and delete helpers pass on SQLite) ``key_clause`` and ``key_clause_bound`` write the list so that SQLite
    seeks the key index: as a subquery when both columns have one affinity class, sought on both columns
    per key; else with the leading column's list beside it, sought on ``a``. Both forms select exactly the
    listed keys, also twice in a statement (a data table joined to its metadata)."""
    import datetime as dt

    from datapipe_dagster.store.key_lists import key_clause, key_clause_bound, key_params

    seek = dbconn.backend == "sqlite"
    a_type, b_type = types

    def value(t, i):
        if t is sa.String:
            return f"s{i}"
        return dt.datetime(2026, 1, 1 + i) if t is sa.DateTime else i

    t = sa.Table(
        f"seek_{a_type.__name__}_{b_type.__name__}".lower(), sa.MetaData(schema=dbconn.schema),
        sa.Column("a", a_type, primary_key=True), sa.Column("b", b_type, primary_key=True), sa.Column("v", sa.String),
    )
    u = t.alias("u")
    dbconn.ensure_table(t)
    with dbconn.begin_write() as conn:
        conn.execute(t.insert(), [{"a": value(a_type, a), "b": value(b_type, b), "v": f"{a}{b}"} for a in range(3) for b in range(5)])
    keys = [(value(a_type, 0), value(b_type, 1)), (value(a_type, 1), value(b_type, 2)), (value(a_type, 0), value(b_type, 3))]
    literal = sa.select(t.c.v).where(key_clause(t, ["a", "b"], keys, seek))
    bound = sa.select(t.c.v).where(key_clause_bound(t, ["a", "b"], seek))
    joined = (
        sa.select(t.c.v).select_from(t.join(u, sa.and_(t.c.a == u.c.a, t.c.b == u.c.b)))
        .where(key_clause(t, ["a", "b"], keys, seek), key_clause(u, ["a", "b"], keys[:2], seek))
    )
    both = sa.select(t.c.v).select_from(t.join(u, sa.and_(t.c.a == u.c.a, t.c.b == u.c.b))).where(
        key_clause_bound(t, ["a", "b"], seek), key_clause_bound(u, ["a", "b"], seek)
    )
    with dbconn.connect() as conn:
        assert sorted(conn.execute(literal).scalars()) == ["01", "03", "12"]
        assert sorted(conn.execute(bound, key_params((t,), ["a", "b"], keys, seek)).scalars()) == ["01", "03", "12"]
        assert sorted(conn.execute(bound, key_params((t,), ["a", "b"], keys[1:], seek)).scalars()) == ["03", "12"]
        assert sorted(conn.execute(joined).scalars()) == ["01", "12"]
        assert sorted(conn.execute(both, key_params((t, u), ["a", "b"], keys, seek)).scalars()) == ["01", "03", "12"]
        if not seek:
            return  # PostgreSQL plans the row-value list as index lookups either way
        plan = _plan(conn, literal)
    assert f"SEARCH {t.name} USING" in plan and sought in plan and f"SCAN {t.name}" not in plan, plan


def test_many_keys_longer_than_the_column_match_no_prefix(dbconn) -> None:
    """A key longer than its column's declared length matches nothing: PostgreSQL's explicit cast to a
    bounded ``VARCHAR(n)[]`` would cut it to its prefix and fetch (or delete) that other key's row."""
    import pandas as pd

    from datapipe_dagster.store.sql import SMALL_KEYS, delete_by_keys, fetch_by_keys

    t = sa.Table(
        "short_keys", sa.MetaData(schema=dbconn.schema), sa.Column("k", sa.String(5), primary_key=True),
        sa.Column("v", sa.Integer),
    )
    dbconn.ensure_table(t)
    stored = pd.DataFrame({"k": [f"k{i:04d}" for i in range(SMALL_KEYS + 10)], "v": range(SMALL_KEYS + 10)})
    with dbconn.begin_write() as conn:
        conn.execute(sa.insert(t), stored.to_dict("records"))
    # Every asked key is a stored key plus a suffix: cut to 5 characters, each would match a stored row.
    asked = pd.DataFrame({"k": [k + "-long" for k in stored["k"]]})
    with dbconn.begin_write() as conn:
        got = fetch_by_keys(conn, sa.select(t), t, ["k"], asked, ["k", "v"])
        assert got.empty, f"keys longer than VARCHAR(5) matched stored rows: {got['k'].tolist()[:3]}"
        delete_by_keys(conn, t, ["k"], asked)
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == len(stored)


@pytest.mark.parametrize("columns", [["a"], ["a", "b"]])
@pytest.mark.parametrize("seek", [False, True])
def test_key_clause_bound_is_key_clause(columns: list[str], seek: bool) -> None:
    """The statement built once with bind parameters reads what the one built with the values reads."""
    from datapipe_dagster.store.key_lists import key_clause, key_clause_bound, key_params

    m = sa.MetaData()
    t = sa.Table(
        "kb", m, sa.Column("a", sa.String, primary_key=True), sa.Column("b", sa.Integer, primary_key=True)
    )
    engine = sa.create_engine("sqlite://")
    m.create_all(engine)
    rows = [{"a": a, "b": b} for a in ("x", "y", "z") for b in (1, 2)]
    values = ["x", "z"] if len(columns) == 1 else [("x", 2), ("z", 1), ("q", 1)]
    base = sa.select(t.c.a, t.c.b).order_by(t.c.a, t.c.b)
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
        literal = conn.execute(base.where(key_clause(t, columns, values, seek))).fetchall()
        bound = conn.execute(
            base.where(key_clause_bound(t, columns, seek)), key_params((t,), columns, values, seek)
        ).fetchall()
    assert bound == literal and len(literal) == (4 if len(columns) == 1 else 2)
    import re

    def sql(stmt: sa.Select) -> str:
        return re.sub(r"__\[POSTCOMPILE_\w+\]", "?", str(stmt.compile(engine)))

    assert sql(base.where(key_clause_bound(t, columns, seek))) == sql(
        base.where(key_clause(t, columns, values, seek))
    )

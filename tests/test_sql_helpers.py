"""SQL helpers shared across layers: the ANALYZE-on-growth policy (PostgreSQL planner statistics)."""

from __future__ import annotations

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

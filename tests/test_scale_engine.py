"""Engine pieces that keep costs proportional at scale (issue 11): a linear ChangeList, and a
partition's keys read as an index range of the stored key hash, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import ChangeList, DataStore, run_steps
from datapipe_dagster import types as dp_types
from datapipe_dagster.compute.partitioning import (
    HASH_SPACE,
    bucket_range,
    bucket_ranges,
    filter_buckets,
    key_buckets,
    key_hash,
)
from tests.engine_helpers import event, frame, seed_setup

N_PARTS = 8


def test_changelist_union_without_duplicates_and_extend() -> None:
    cl = ChangeList()
    cl.append("t", pd.DataFrame({"k": [1, 2]}))
    cl.append("t", pd.DataFrame({"k": [2, 3]}))
    cl.append("empty", pd.DataFrame({"k": []}))
    other = ChangeList.create("t", pd.DataFrame({"k": [3, 4]}))
    other.append("u", pd.DataFrame({"a": ["x"]}))
    assert other.get("t")["k"].tolist() == [3, 4]  # reading consolidates; later appends still count
    other.append("t", pd.DataFrame({"k": [5]}))
    cl.extend(other)
    assert sorted(cl.get("t")["k"]) == [1, 2, 3, 4, 5]
    assert cl.get("u")["a"].tolist() == ["x"]
    assert list(cl.get("empty").columns) == ["k"] and len(cl.get("empty")) == 0
    assert cl.get("missing") is None
    assert not cl.empty() and ChangeList.create("e", pd.DataFrame({"k": []})).empty()
    assert {name: len(df) for name, df in cl} == {"t": 5, "empty": 0, "u": 1}


def _count_concat(monkeypatch) -> list[int]:  # noqa: ANN001
    """Count the rows ``types.ChangeList`` hands to ``pd.concat`` (a one-element list, read after the calls)."""
    rows = [0]
    real_concat = pd.concat

    def counting_concat(frames, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        frames = list(frames)
        rows[0] += sum(len(f) for f in frames)
        return real_concat(frames, *a, **kw)

    monkeypatch.setattr(dp_types.pd, "concat", counting_concat)
    return rows


def test_changelist_append_does_not_reprocess_what_was_appended_before(monkeypatch) -> None:
    """500 appends of 10 keys concatenate each key a bounded number of times (was: every append
    re-concatenated and de-duplicated the whole accumulated set, 500 × 2,500 rows on average)."""
    rows_concatenated = _count_concat(monkeypatch)
    cl = ChangeList()
    for i in range(500):
        cl.append("t", pd.DataFrame({"k": range(i * 10, i * 10 + 10)}))
    assert len(cl.get("t")) == 5000
    assert rows_concatenated[0] <= 2 * 5000


def test_buckets_are_contiguous_hash_ranges() -> None:
    keys = pd.DataFrame({"u": [f"user{i}" for i in range(2000)], "n": range(2000)})
    h = key_hash(keys, ["u", "n"])
    assert h.min() >= 0 and h.max() < HASH_SPACE
    for n in (1, 3, 16, 100):
        b = key_buckets(keys, ["u", "n"], n)
        for bucket in set(b.tolist()):
            lo, hi = bucket_range(bucket, n)
            assert ((h[b == bucket] >= lo) & (h[b == bucket] < hi)).all()
        assert bucket_range(0, n)[0] == 0 and bucket_range(n - 1, n)[1] == HASH_SPACE
        assert all(bucket_range(i, n)[1] == bucket_range(i + 1, n)[0] for i in range(n - 1))
    assert bucket_ranges([3, 1, 2, 6], 8) == [(bucket_range(1, 8)[0], bucket_range(3, 8)[1]), bucket_range(6, 8)]


def _setup(dbconn, users: int):  # noqa: ANN001, ANN202
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(*[event(str(u), "1") for u in range(users)]))
    run_steps(ds, steps)
    return ds, catalog, steps, events


def _sorted(df: pd.DataFrame) -> list[str]:
    return sorted(df["user_id"].tolist())


def test_partition_keys_are_the_partitions_share_of_all_keys_new_ones_included(dbconn) -> None:
    ds, catalog, steps, events = _setup(dbconn, 120)
    events.store_chunk(frame(*[event(str(u), "2") for u in range(100, 140)]))  # 20 changed, 20 new users
    step = steps[0]
    everything = step.get_all_keys()
    assert len(everything) == 140
    seen: list[str] = []
    for b in range(N_PARTS):
        got = step.get_partition_keys(N_PARTS, [b])
        assert _sorted(got) == _sorted(filter_buckets(everything, ["user_id"], N_PARTS, [b]))
        seen += got["user_id"].tolist()
    assert sorted(seen) == _sorted(everything)  # every key in exactly one partition, new keys included
    both = step.get_partition_keys(N_PARTS, [2, 3, 5])
    assert _sorted(both) == _sorted(filter_buckets(everything, ["user_id"], N_PARTS, [2, 3, 5]))
    assert str(both["user_id"].dtype) == str(everything["user_id"].dtype)


def _plan(conn: sa.Connection, stmt: sa.Select) -> str:
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table is cheaper to scan; ask the planner
    return " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_a_partitions_keys_are_an_index_range_scan(dbconn) -> None:
    ds, _, steps, _ = _setup(dbconn, 50)
    tmeta = steps[0].meta
    h = tmeta.table.c.key_hash
    lo, hi = bucket_range(3, N_PARTS)
    stmt = sa.select(tmeta.table.c.user_id).where(sa.or_(sa.and_(h >= lo, h < hi)))
    with dbconn.engine.begin() as conn:
        plan = _plan(conn, stmt)
    ix = next(ix.name for ix in tmeta.table.indexes if "key_hash" in ix.columns)
    assert ix in plan, plan  # the range is served by the key_hash index, not a scan of the state table


def test_a_state_table_without_key_hash_is_migrated_and_backfilled(dbconn) -> None:
    ds, catalog, steps, events = _setup(dbconn, 60)
    t = steps[0].meta.table
    ix = next(ix for ix in t.indexes if "key_hash" in ix.columns)
    with dbconn.engine.begin() as conn:
        ix.drop(conn)
        prep = conn.dialect.identifier_preparer
        conn.execute(sa.text(f"ALTER TABLE {prep.format_table(t)} DROP COLUMN key_hash"))
    # A new process (fresh DataStore and steps) on the old database: the column comes back, filled.
    ds2, catalog2, steps2 = seed_setup(dbconn)
    step = steps2[0]
    everything = step.get_all_keys()
    with dbconn.engine.connect() as conn:
        stored = pd.DataFrame(conn.execute(sa.select(t.c.user_id, sa.column("key_hash")).select_from(t)).fetchall())
    assert len(stored) == 60 and stored["key_hash"].notna().all()
    assert np.array_equal(
        stored["key_hash"].to_numpy(dtype=np.int64), key_hash(stored[["user_id"]], ["user_id"])
    )
    for b in range(N_PARTS):
        assert _sorted(step.get_partition_keys(N_PARTS, [b])) == _sorted(
            filter_buckets(everything, ["user_id"], N_PARTS, [b])
        )
    assert isinstance(ds2, DataStore)


@pytest.mark.parametrize("n", [1, 7])
def test_all_buckets_together_are_all_keys(dbconn, n: int) -> None:
    _, _, steps, _ = _setup(dbconn, 10)
    assert _sorted(steps[0].get_partition_keys(n, range(n))) == sorted(str(i) for i in range(10))


def test_changelist_head_reads_only_the_parts_it_needs(monkeypatch) -> None:
    """A preview takes a run's first changed keys: ``head`` de-duplicates across the first parts only and
    leaves the rest unmerged (a full run's key set was merged whole to show five rows)."""
    cl = ChangeList()
    cl.append("t", pd.DataFrame({"k": [1, 1, 2]}))
    cl.append("t", pd.DataFrame({"k": [2, 3, 4]}))
    for i in range(200):
        cl.append("t", pd.DataFrame({"k": range(1000 + i * 10, 1010 + i * 10)}))
    rows_concatenated = _count_concat(monkeypatch)
    assert cl.head("t", 4)["k"].tolist() == [1, 2, 3, 4]
    assert rows_concatenated[0] <= 12
    assert cl.head("missing", 4) is None
    assert cl.head("t", 5)["k"].tolist() == [1, 2, 3, 4, 1000]
    monkeypatch.undo()
    assert len(cl.get("t")) == 2004, "head leaves the list whole"
    assert cl.head("t", 3)["k"].tolist() == [1, 2, 3]
